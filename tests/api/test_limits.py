"""Per-key limits (429 queued/running, 413 stored bytes) and key revocation (issue 7)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save

from api.main import create_app
from cli.keys import format_keys, list_keys, revoke_key
from cli.main import main as wkd
from service import accounts, crud
from service.tables import JobStatus

VANILLA = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
           "training": {"epochs": 2}}  # fmt: skip
BLOB = save({"fc.weight": np.zeros((10, 64), np.float32)})  # 2,560 bytes of data


@pytest.fixture
def limited(settings, enqueued):
    limited = settings.model_copy(update={
        "max_queued_jobs_per_key": 2, "max_running_jobs_per_key": 1,
        "max_stored_bytes_per_key": 2 * len(BLOB) + 10})  # fmt: skip
    with TestClient(create_app(limited, enqueue=enqueued)) as client:
        yield client


def test_queued_and_running_limits_are_429_with_a_message(limited, alice, bob, db):
    ids = [limited.post("/jobs", json=VANILLA, headers=alice).json()["id"] for _ in range(2)]
    third = limited.post("/jobs", json=VANILLA, headers=alice)
    assert third.status_code == 429 and "2 queued jobs (limit 2)" in third.json()["detail"]
    assert limited.post("/jobs", json=VANILLA, headers=bob).status_code == 202  # per key
    crud.claim_job(db, job_id=ids[0], worker_id="w")  # one running, one queued
    running = limited.post("/jobs", json=VANILLA, headers=alice)
    assert running.status_code == 429 and "1 running jobs (limit 1)" in running.json()["detail"]
    limited.post(f"/jobs/{ids[1]}/cancel", headers=alice)
    crud.request_cancel(db, job_id=ids[0])
    crud.finish_job(db, job_id=ids[0], status=JobStatus.cancelled)
    assert limited.post("/jobs", json=VANILLA, headers=alice).status_code == 202


STUDY = {"teacher": {"checkpoint_id": None}, "student": {"arch": "resnet8"},
         "dataset": {"name": "mnist5k"}, "methods": ["vanilla"],
         "training": {"epochs": 2}}  # fmt: skip


def study(**changes) -> dict:
    return {**STUDY, **changes, "training": {**STUDY["training"], **changes.get("training", {})}}


def test_a_study_counts_all_its_jobs_against_the_limits(limited, alice, db):
    """A study's jobs are all created or none: it is refused when they would pass the queued
    limit, and when the key is at its running limit, and nothing of it is kept."""
    first = limited.post("/jobs", json=VANILLA, headers=alice).json()["id"]  # 1 of 2 queued
    two = limited.post("/studies", json=study(seeds=[0, 1]), headers=alice)
    assert two.status_code == 429, two.text
    assert (
        "1 queued jobs (limit 2); the 2 jobs of this request would pass it" in two.json()["detail"]
    )
    assert limited.get("/studies", headers=alice).json()["data"] == []
    assert len(limited.get("/jobs", headers=alice).json()["data"]) == 1
    assert limited.post("/studies", json=study(seeds=[0]), headers=alice).status_code == 202
    crud.claim_job(db, job_id=first, worker_id="w")  # running: at the running limit of 1
    running = limited.post("/studies", json=study(seeds=[5]), headers=alice)
    assert running.status_code == 429 and "1 running jobs (limit 1)" in running.json()["detail"]


def test_a_study_gets_the_deployments_job_checks(client, alice, settings):
    """What POST /jobs refuses for this deployment (loader processes, GPUs per job, a batch
    the GPUs cannot share), POST /studies refuses too, naming the job."""
    cases = [
        ({"num_workers": settings.max_num_workers + 1}, "num_workers", "data-loader workers"),
        ({"gpus": settings.max_job_gpus + 1}, "gpus", "GPUs"),
    ]
    for training, field, words in cases:
        response = client.post("/studies", json=study(training=training), headers=alice)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "jobs", "vanilla/seed0", "training", field]
        assert words in error["msg"]
        single = client.post("/jobs", json={**VANILLA, "training": {"epochs": 2, **training}},
                             headers=alice)  # fmt: skip
        assert single.status_code == 422 and words in single.text
    assert client.get("/jobs", headers=alice).json()["data"] == []


def test_an_uneven_global_batch_is_refused_for_studies_too(settings, enqueued, alice):
    multi = settings.model_copy(update={"max_job_gpus": 2})
    with TestClient(create_app(multi, enqueue=enqueued)) as client:
        response = client.post(
            "/studies", json=study(training={"gpus": 2, "batch_size": 63}), headers=alice
        )
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][-2:] == ["training", "batch_size"]
        good = study(training={"gpus": 2, "batch_size": 64})
        assert client.post("/studies", json=good, headers=alice).status_code == 202


def test_a_replay_is_never_limited(limited, alice):
    key = {"Idempotency-Key": "once"}
    first = limited.post("/jobs", json=VANILLA, headers=alice | key)
    limited.post("/jobs", json=VANILLA, headers=alice)  # now at the queued limit
    again = limited.post("/jobs", json=VANILLA, headers=alice | key)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]


def test_stored_bytes_limit_is_413(limited, alice, settings):
    def upload():
        return limited.post("/checkpoints", headers=alice,
                            data={"arch": "resnet8", "num_classes": "10"},
                            files={"file": ("t.safetensors", BLOB)})  # fmt: skip

    assert upload().status_code == 201 and upload().status_code == 201
    third = upload()
    assert third.status_code == 413 and "stores" in third.json()["detail"]
    assert len(list(settings.checkpoint_dir.iterdir())) == 2  # the refused file is gone


def test_revoked_key_is_refused_at_once_and_listed(
    client, alice, db, settings, capsys, monkeypatch
):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    assert client.get(f"/jobs/{job_id}", headers=alice).status_code == 200  # cached document
    row = accounts.verify_api_key(db, alice["Authorization"].split()[1])
    # the CLI on this test's database: WKD_DATABASE_URL is what `wkd keys` reads
    monkeypatch.setenv("WKD_DATABASE_URL", settings.database_url)
    assert wkd(["keys", "revoke", row.prefix]) == 0
    assert f"revoked {row.id}" in capsys.readouterr().out
    assert revoke_key(row.id) == (row.id, False)  # idempotent
    assert wkd(["keys", "list"]) == 0
    table = capsys.readouterr().out
    assert row.id in table and "revoked" in table and "wkd_" in table
    assert alice["Authorization"].split()[1] not in table  # never the key itself
    assert [k["id"] for k in list_keys()] == [row.id] and format_keys([])
    assert wkd(["keys", "revoke", "wkd_nosuchkey"]) == 2
    for path in (f"/jobs/{job_id}", "/jobs", "/checkpoints"):
        assert client.get(path, headers=alice).status_code == 401
