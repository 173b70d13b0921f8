"""POST/GET /jobs, idempotency, paging, ownership, cancel, 422s that name the field."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save

from api.schemas import JobPublic
from service import accounts, crud
from service.spec import validate_job_spec
from service.tables import JobStatus

VANILLA = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
           "training": {"epochs": 2, "batch_size": 32}}  # fmt: skip


def submit(client, headers, body=VANILLA, **extra_headers):
    return client.post("/jobs", json=body, headers=headers | extra_headers)


def test_submit_returns_202_location_and_enqueues_after_commit(client, alice, enqueued, db):
    response = submit(client, alice)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and not job["is_terminal"]
    assert job["progress"] == {"epoch": 0, "total": 2, "batch": 0, "batches": 0}
    assert job["curve"] == []
    assert job["spec"]["params"] == {"ce_weight": 1.0}  # resolved: defaults filled
    assert enqueued == [job["id"]]
    row = crud.get_job(db, job["id"])
    assert row.enqueued_at is not None and row.spec == job["spec"]


def test_missing_or_bad_key_is_401(client, alice):
    assert client.get("/jobs").status_code == 401
    bad = client.get("/jobs", headers={"Authorization": "Bearer wkd_nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"


def test_idempotent_resubmission(client, alice, enqueued, db):
    first = submit(client, alice, **{"Idempotency-Key": "abc"})
    again = submit(client, alice, **{"Idempotency-Key": "abc"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert enqueued == [first.json()["id"]]  # sent once
    changed = submit(
        client, alice, VANILLA | {"training": {"epochs": 3}}, **{"Idempotency-Key": "abc"}
    )
    assert changed.status_code == 422 and "different body" in changed.json()["detail"]
    # a first request whose row is committed but not yet enqueued is still in flight
    body = VANILLA | {"training": {"epochs": 4}}
    owner = accounts.verify_api_key(db, alice["Authorization"].split()[1])
    spec = validate_job_spec(body, for_api=True).to_stored()
    crud.create_job(
        db,
        owner_id=owner.id,
        spec=spec,
        max_attempts=3,
        idempotency_key="inflight",
        fingerprint=crud.request_fingerprint(spec),  # the API fingerprints the resolved spec
    )
    assert submit(client, alice, body, **{"Idempotency-Key": "inflight"}).status_code == 409


def test_paging_newest_first_and_status_filter(client, alice, bob):
    ids = [submit(client, alice).json()["id"] for _ in range(7)]
    submit(client, bob)
    client.post(f"/jobs/{ids[0]}/cancel", headers=alice)
    seen, token = [], ""
    while True:
        page = client.get("/jobs", params={"page_size": 100, "page_token": token}, headers=alice)
        assert page.status_code == 200 and len(page.json()["data"]) <= 5  # capped at max
        seen += [j["id"] for j in page.json()["data"]]
        token = page.json()["next_page_token"]
        if not token:
            break
    assert seen == ids[::-1]
    cancelled = client.get("/jobs", params={"status": "cancelled"}, headers=alice).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    assert client.get("/jobs", params={"page_token": "zz"}, headers=alice).status_code == 400
    assert client.get("/jobs", params={"status": "nope"}, headers=alice).status_code == 422


def test_one_key_cannot_see_or_cancel_another_keys_job(client, alice, bob):
    job_id = submit(client, alice).json()["id"]
    for method, path in [
        ("get", ""),
        ("get", "/metrics"),
        ("get", "/artifacts"),
        ("post", "/cancel"),
        ("get", "/artifacts/student.safetensors"),
    ]:
        response = client.request(method, f"/jobs/{job_id}{path}", headers=bob)
        assert response.status_code == 404, path
    assert client.get(f"/jobs/{job_id}", headers=alice).json()["status"] == "queued"
    assert client.get("/jobs", headers=bob).json()["data"] == []


def test_cancel_queued_is_immediate_and_idempotent(client, alice):
    job_id = submit(client, alice).json()["id"]
    first = client.post(f"/jobs/{job_id}/cancel", headers=alice)
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    assert first.json()["is_terminal"] and first.json()["finished_at"]
    again = client.post(f"/jobs/{job_id}/cancel", headers=alice)
    assert again.json()["status"] == "cancelled"
    assert again.json()["finished_at"] == first.json()["finished_at"]


def test_cancel_running_becomes_cancelling(client, alice, db):
    job_id = submit(client, alice).json()["id"]
    crud.claim_job(db, job_id=job_id, worker_id="w")
    crud.set_running(db, job_id=job_id)
    assert client.post(f"/jobs/{job_id}/cancel", headers=alice).json()["status"] == "cancelling"


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"student": {"arch": "resnet9000"}}, ["body", "student", "arch"]),
        ({"dataset": {"name": "cifar1000"}}, ["body", "dataset", "name"]),
        ({"training": {"epochs": -1}}, ["body", "training", "epochs"]),
        ({"favourite_colour": "blue"}, ["body", "favourite_colour"]),
        ({"params": {"kappa": 1.0}}, ["body", "params", "kappa"]),
        ({"dataset": {"name": "mnist5k", "root": "/etc"}}, ["body", "dataset", "root"]),
        ({"method": "kd"}, ["body", "teacher"]),
    ],
)
def test_invalid_spec_is_422_naming_the_field(client, alice, enqueued, patch, loc):
    response = submit(client, alice, VANILLA | patch)
    assert response.status_code == 422
    assert loc in [e["loc"] for e in response.json()["detail"]], response.json()
    assert enqueued == []


def test_teacher_checkpoint_class_count_must_match_dataset(client, alice, bob):
    upload = client.post(
        "/checkpoints",
        headers=alice,
        data={"arch": "resnet8", "num_classes": "100"},
        files={"file": ("t.safetensors", save({"fc.weight": np.zeros((100, 4), np.float32)}))},
    )
    ck = upload.json()["id"]
    body = VANILLA | {"method": "kd", "teacher": {"checkpoint_id": ck}}
    response = submit(client, alice, body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "teacher", "checkpoint_id"] and "100 classes" in error["msg"]
    # another key's checkpoint does not exist for bob
    assert submit(client, bob, body).json()["detail"][0]["msg"] == "no checkpoint with this id"


def test_teacher_from_an_earlier_succeeded_job(client, alice, db):
    teacher_job = submit(client, alice).json()["id"]
    body = VANILLA | {"method": "kd", "teacher": {"job_id": teacher_job}}
    early = submit(client, alice, body)
    assert early.status_code == 422 and "queued" in early.json()["detail"][0]["msg"]
    crud.claim_job(db, job_id=teacher_job, worker_id="w")
    crud.finish_job(db, job_id=teacher_job, status=JobStatus.succeeded)
    response = submit(client, alice, body)
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["teacher"] == {
        "arch": "resnet8",
        "checkpoint_id": None,
        "job_id": teacher_job,
        "path": None,
    }
    wrong = submit(client, alice, body | {"teacher": {"job_id": teacher_job, "arch": "vgg8"}})
    assert wrong.json()["detail"][0]["loc"] == ["body", "teacher", "arch"]


def test_job_shows_curve_best_last_and_artifacts(client, alice, db, settings):
    job_id = submit(client, alice).json()["id"]
    crud.claim_job(db, job_id=job_id, worker_id="w")
    crud.set_running(db, job_id=job_id)
    for epoch, top1 in [(1, 30.0), (2, 25.0)]:
        crud.record_epoch(db, job_id=job_id, metrics={
            "epoch": epoch, "lr": 0.05, "train_loss": 2.0 / epoch, "train_top1": 20.0 * epoch,
            "test_top1": top1, "test_top5": 80.0, "test_loss": 1.5, "seconds": 1.0,
            "loss_terms": {"loss_ce": 2.0 / epoch}})  # fmt: skip
    folder = settings.artifact_dir / job_id
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch,test_top1\n1,30\n2,25\n")
    crud.add_artifact(
        db,
        job_id=job_id,
        name="metrics.csv",
        kind="metrics",
        size=27,
        sha256="0" * 64,
        path=f"{job_id}/metrics.csv",
    )
    crud.finish_job(db, job_id=job_id, status=JobStatus.succeeded)
    job = client.get(f"/jobs/{job_id}", headers=alice).json()
    assert JobPublic.model_validate(job).model_dump(mode="json") == job  # the documented shape
    assert job["status"] == "succeeded" and job["is_terminal"]
    assert (job["best_top1"], job["best_epoch"], job["last_top1"]) == (30.0, 1, 25.0)
    assert [r["epoch"] for r in job["curve"]] == [1, 2]
    assert job["curve"][1]["loss_terms"] == {"loss_ce": 1.0} and job["progress"]["epoch"] == 2
    metrics = client.get(f"/jobs/{job_id}/metrics", headers=alice).json()["data"]
    assert metrics == job["curve"]
    [artifact] = client.get(f"/jobs/{job_id}/artifacts", headers=alice).json()["data"]
    assert artifact["url"] == f"/jobs/{job_id}/artifacts/metrics.csv"
    download = client.get(artifact["url"], headers=alice)
    assert download.status_code == 200 and download.text.startswith("epoch,test_top1")
    assert 'attachment; filename="metrics.csv"' in download.headers["content-disposition"]
    assert client.get(f"/jobs/{job_id}/artifacts/..%2F..%2Fetc", headers=alice).status_code == 404


def test_reaper_pass_requeues_a_lost_job_and_enqueues_it_again(client, alice, enqueued, db):
    from datetime import timedelta

    from api.main import reap_once
    from service.tables import Job, utcnow

    job_id = submit(client, alice).json()["id"]
    crud.claim_job(db, job_id=job_id, worker_id="w")
    stale = utcnow() - timedelta(seconds=client.app.state.settings.stale_after_s + 5)
    db.query(Job).filter(Job.id == job_id).update({"heartbeat_at": stale})
    db.commit()
    assert reap_once(client.app) == [job_id]
    assert enqueued == [job_id, job_id]
    job = client.get(f"/jobs/{job_id}", headers=alice).json()
    assert (job["status"], job["attempt"]) == ("queued", 2)
