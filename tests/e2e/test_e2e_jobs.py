"""A user's whole flow over HTTP, against real API and worker processes on both stacks."""

from __future__ import annotations

import hashlib
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

SMALL = {"name": "mnist5k", "train_subset_per_class": 10}


def wkd_l_spec(checkpoint_id: str, *, epochs: int, num_workers: int = 0) -> dict:
    return {"method": "wkd_l", "teacher": {"checkpoint_id": checkpoint_id},
            "student": {"arch": "resnet8"}, "dataset": SMALL,
            "training": {"epochs": epochs, "batch_size": 50, "lr": 0.05, "lr_milestones": [],
                         "num_workers": num_workers}}  # fmt: skip


def upload_teacher(client, path) -> dict:
    with open(path, "rb") as handle:
        response = client.post("/checkpoints", data={"arch": "resnet8", "num_classes": "10"},
                               files={"file": ("teacher.safetensors", handle)})  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()


def poll(client, job_id: str, until, *, timeout: float, stack) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} stuck at {job['status']}\n{stack.log_tail()}")


def test_wkd_l_job_from_upload_to_evaluated_student(stack, teacher_file, tmp_path):
    import torch
    from safetensors.torch import load_file

    from wkd_core.data import create_dataset
    from wkd_core.distillers import create_distiller
    from wkd_core.models import create_model
    from wkd_core.train import evaluate

    client = stack.client()
    uploaded = upload_teacher(client, teacher_file)
    assert uploaded["sha256"] == hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    # DataLoader workers in the runner: it is a fresh process, not a daemonic pool child.
    workers = 1 if stack.name == "postgres+redis" else 0
    response = client.post("/jobs", json=wkd_l_spec(uploaded["id"], epochs=2, num_workers=workers))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/jobs/{job_id}"

    job = poll(client, job_id, lambda j: j["is_terminal"], timeout=300, stack=stack)

    assert job["status"] == "succeeded", (job["failure_reason"], job["message"], stack.log_tail())
    assert [row["epoch"] for row in job["curve"]] == [1, 2]
    assert (job["progress"]["epoch"], job["progress"]["total"]) == (2, 2)
    assert set(job["curve"][0]["loss_terms"]) == {"loss_ce", "loss_target", "loss_wd"}
    assert client.get(f"/jobs/{job_id}/metrics").json()["data"] == job["curve"]
    names = {a["name"]: a for a in job["artifacts"]}
    assert {"student.safetensors", "interrelations.pt", "metrics.csv", "manifest.json"} <= set(
        names
    )

    weights = tmp_path / "student.safetensors"
    download = client.get(names["student.safetensors"]["url"])
    assert download.status_code == 200
    weights.write_bytes(download.content)
    assert hashlib.sha256(download.content).hexdigest() == names["student.safetensors"]["sha256"]
    student = create_model("resnet8", num_classes=10)
    student.load_state_dict(load_file(weights), strict=True)
    # The job's last reported accuracy, recomputed here with the same evaluation code.
    test_set = create_dataset("mnist5k", split="test")
    loader = torch.utils.data.DataLoader(test_set, batch_size=200)
    ours = evaluate(
        create_distiller("vanilla", student=student), loader, device=torch.device("cpu")
    )
    assert ours["top1"] == pytest.approx(job["last_top1"], abs=0.01)
    assert ours["top1"] == pytest.approx(job["curve"][-1]["test_top1"], abs=0.01)


def test_cancel_while_queued_and_while_running(stack, teacher_file):
    client = stack.client()
    uploaded = upload_teacher(client, teacher_file)
    running = client.post("/jobs", json=wkd_l_spec(uploaded["id"], epochs=100)).json()
    queued = client.post("/jobs", json=wkd_l_spec(uploaded["id"], epochs=100)).json()
    poll(client, running["id"], lambda j: j["status"] == "running", timeout=120, stack=stack)

    # One worker, busy: the second job waits in the queue and is cancelled at once.
    assert client.get(f"/jobs/{queued['id']}").json()["status"] == "queued"
    cancelled = client.post(f"/jobs/{queued['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None

    asked = time.monotonic()
    assert client.post(f"/jobs/{running['id']}/cancel").json()["status"] == "cancelling"
    job = poll(client, running["id"], lambda j: j["is_terminal"], timeout=90, stack=stack)
    assert job["status"] == "cancelled" and job["failure_reason"] is None
    assert job["progress"]["epoch"] < 100
    assert time.monotonic() - asked < 60

    # The worker then skips the cancelled message and is free for the next job.
    done = client.post("/jobs", json=wkd_l_spec(uploaded["id"], epochs=1)).json()
    job = poll(client, done["id"], lambda j: j["is_terminal"], timeout=300, stack=stack)
    assert job["status"] == "succeeded", stack.log_tail()
    assert client.get(f"/jobs/{queued['id']}").json()["started_at"] is None
