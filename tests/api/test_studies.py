"""POST/GET /studies: the fan-out into jobs, the presets they use, mean ± std and Δ vs KD."""

from __future__ import annotations

import statistics

import pytest

from service import crud
from service.tables import JobStatus
from tests.api.test_checkpoints import WEIGHTS, state_dict, torch_bytes, upload

CIFAR_TEACHER = {"arch": "resnet32x4", "num_classes": "100"}


def post_study(client, headers, **fields):
    return client.post("/studies", json=fields, headers=headers)


def test_default_study_fans_out_six_methods_times_three_seeds(client, alice, bob, enqueued):
    teacher = upload(
        client, alice, torch_bytes(state_dict(100)), "t.pth", form=CIFAR_TEACHER
    ).json()["id"]
    response = post_study(
        client, alice, teacher={"checkpoint_id": teacher}, student={"arch": "resnet8x4"},
        dataset={"name": "cifar100"}, training={"epochs": 24},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    study = response.json()
    assert response.headers["location"] == f"/studies/{study['id']}"
    assert study["status"] == "queued" and len(study["jobs"]) == 18
    assert sorted(enqueued) == sorted(job["id"] for job in study["jobs"])
    methods = [row["method"] for row in study["summary"]]
    assert methods == ["vanilla", "kd", "dkd", "wkd_l", "wkd_f", "wkd_lf"]
    assert {(j["method"], j["seed"]) for j in study["jobs"]} == {
        (m, s) for m in methods for s in (0, 1, 2)
    }
    # Each job is the released preset of its method for this pair, scaled to 24 epochs.
    wkd_l = client.get(f"/jobs/{study['jobs'][9]['id']}", headers=alice).json()["spec"]
    assert wkd_l["preset"] == "cifar100/wkd_l/resnet32x4_resnet8x4"
    assert wkd_l["params"]["wkd_logit_weight"] == 600.0
    assert wkd_l["training"]["lr_milestones"] == [15, 18, 21]
    assert wkd_l["teacher"]["checkpoint_id"] == teacher and wkd_l["training"]["seed"] == 0
    vanilla = client.get(f"/jobs/{study['jobs'][0]['id']}", headers=alice).json()["spec"]
    assert vanilla["teacher"] is None and vanilla["preset"] is None
    assert client.get(f"/studies/{study['id']}", headers=bob).status_code == 404


def test_summary_is_mean_and_sample_std_with_difference_to_kd(client, alice, db):
    teacher = upload(client, alice, WEIGHTS, "t.pth").json()["id"]
    study = post_study(
        client, alice, teacher={"checkpoint_id": teacher}, student={"arch": "resnet8"},
        dataset={"name": "mnist5k"}, methods=["kd", "wkd_l"], seeds=[0, 1, 2],
        training={"epochs": 2},
    ).json()  # fmt: skip
    results = {"kd": [(70.0, 69.0), (72.0, 70.0), (74.0, 71.0)],
               "wkd_l": [(75.0, 74.0), (77.0, 74.5), None]}  # fmt: skip
    for method in results:
        ids = [j["id"] for j in study["jobs"] if j["method"] == method]
        for job_id, result in zip(ids, results[method], strict=True):
            crud.claim_job(db, job_id=job_id, worker_id="w")
            if result is None:
                crud.finish_job(
                    db, job_id=job_id, status=JobStatus.failed, failure_reason="internal"
                )
                continue
            job = crud.get_job(db, job_id)
            job.best_top1, job.last_top1 = result
            db.commit()
            crud.finish_job(db, job_id=job_id, status=JobStatus.succeeded)
    body = client.get(f"/studies/{study['id']}", headers=alice).json()
    assert body["status"] == "finished_with_failures"
    kd, wkd_l = body["summary"]
    assert kd["best_top1"] == {"mean": 72.0, "std": pytest.approx(2.0), "n": 3}
    assert wkd_l["last_top1"]["mean"] == 74.25 and wkd_l["last_top1"]["n"] == 2
    assert wkd_l["last_top1"]["std"] == pytest.approx(statistics.stdev([74.0, 74.5]))
    assert wkd_l["delta_vs_kd"]["best_top1"] == pytest.approx(76.0 - 72.0)
    assert wkd_l["delta_vs_kd"]["last_top1"] == pytest.approx(74.25 - 70.0)
    assert kd["delta_vs_kd"]["best_top1"] == 0.0


def test_an_invalid_study_creates_no_job_and_names_the_job(client, alice, enqueued):
    teacher = upload(client, alice, WEIGHTS, "t.pth").json()["id"]
    response = post_study(
        client, alice, teacher={"checkpoint_id": teacher}, student={"arch": "resnet8"},
        dataset={"name": "mnist5k"}, methods=["kd", "dkd"], params={"dkd": {"beta": "high"}},
    )  # fmt: skip
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "jobs", "dkd/seed0", "params", "beta"]
    assert enqueued == [] and client.get("/jobs", headers=alice).json()["data"] == []
    unknown = post_study(client, alice, teacher={"checkpoint_id": teacher},
                         student={"arch": "resnet8"}, dataset={"name": "mnist5k"},
                         methods=["kd", "no_such_method"])  # fmt: skip
    assert unknown.status_code == 422 and "no_such_method" in unknown.json()["detail"][0]["msg"]


def test_studies_list_newest_first_with_job_states_and_pages(client, alice, bob, db):
    teacher = upload(client, alice, WEIGHTS, "t.pth").json()["id"]
    common = {"teacher": {"checkpoint_id": teacher}, "student": {"arch": "resnet8"},
              "dataset": {"name": "mnist5k"}, "training": {"epochs": 3}}  # fmt: skip
    first = post_study(client, alice, methods=["kd"], seeds=[0], **common).json()
    second = post_study(client, alice, methods=["kd", "wkd_l"], seeds=[4, 5], **common).json()
    running = second["jobs"][1]["id"]
    crud.claim_job(db, job_id=running, worker_id="w")
    crud.record_batch_progress(db, job_id=running, batch=7, batches=20)
    crud.finish_job(db, job_id=first["jobs"][0]["id"], status=JobStatus.succeeded)

    listed = client.get("/studies", headers=alice).json()
    assert [s["id"] for s in listed["data"]] == [second["id"], first["id"]]
    assert listed["next_page_token"] == ""
    newest = listed["data"][0]
    assert newest["status"] == "running" and newest["jobs"] == 4
    assert newest["job_states"] == {"queued": 3, crud.get_job(db, running).status.value: 1}
    assert (newest["teacher_arch"], newest["student_arch"], newest["dataset"]) == (
        "resnet8", "resnet8", "mnist5k")  # fmt: skip
    assert newest["methods"] == ["kd", "wkd_l"] and newest["seeds"] == [4, 5]
    assert newest["epochs"] == 3
    assert listed["data"][1]["status"] == "succeeded"

    # Each member job carries its progress, so a page can draw it without N requests.
    document = client.get(f"/studies/{second['id']}", headers=alice).json()
    progress = {job["id"]: job["progress"] for job in document["jobs"]}
    assert progress[running] == {"epoch": 0, "total": 3, "batch": 7, "batches": 20}
    assert progress[second["jobs"][0]["id"]] == {"epoch": 0, "total": 3, "batch": 0, "batches": 0}

    page = client.get("/studies?page_size=1", headers=alice).json()
    assert [s["id"] for s in page["data"]] == [second["id"]] and page["next_page_token"]
    rest = client.get(f"/studies?page_size=1&page_token={page['next_page_token']}",
                      headers=alice).json()  # fmt: skip
    assert [s["id"] for s in rest["data"]] == [first["id"]] and rest["next_page_token"] == ""
    assert client.get("/studies?page_token=garbage", headers=alice).status_code == 400
    assert client.get("/studies", headers=bob).json() == {"data": [], "next_page_token": ""}
