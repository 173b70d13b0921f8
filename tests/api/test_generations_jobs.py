"""Born-Again jobs through the API: generation 0 needs no teacher, progress counts every
generation's epochs, and the worker resolves no teacher for it."""

from __future__ import annotations

from service import crud
from service.settings import Settings
from worker.supervisor import resolve_teacher


def test_born_again_job_is_accepted_without_a_teacher(client, alice, enqueued, db, settings):
    body = {"preset": "mnist5k/ban-wkd_l/resnet8", "training": {"epochs": 4}}
    response = client.post("/jobs", json=body, headers=alice)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["spec"]["generations"] == 2 and job["spec"]["teacher"]["arch"] == "resnet8"
    assert job["progress"] == {"epoch": 0, "total": 3 * 4, "batch": 0, "batches": 0}  # gens 0-2
    assert enqueued == [job["id"]]
    row = crud.get_job(db, job["id"])
    assert isinstance(settings, Settings) and resolve_teacher(db, row, settings) is None


def test_born_again_rejects_a_vanilla_method_and_another_teacher_arch(client, alice):
    body = {"preset": "mnist5k/ban-kd/resnet8", "method": "vanilla"}
    response = client.post("/jobs", json=body, headers=alice)
    assert response.status_code == 422 and "distillation method" in response.text
    body = {"preset": "mnist5k/ban-kd/resnet8", "teacher": {"arch": "resnet20"}}
    response = client.post("/jobs", json=body, headers=alice)
    assert response.status_code == 422 and "student's architecture" in response.text
