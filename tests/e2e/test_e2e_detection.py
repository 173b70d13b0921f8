"""A detection job over HTTP against real uvicorn + Celery worker processes (PostgreSQL and
Redis): a teacher detector trained by one job distils a smaller one in a second job, whose AP
curve, artifacts and exported student are checked against a recomputation here."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

TRAINING = {"batch_size": 8, "lr": 0.02, "lr_milestones": [], "weight_decay": 1e-4,
            "nesterov": False, "num_workers": 0}  # fmt: skip


def poll(client, job_id: str, *, timeout: float, stack) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["is_terminal"]:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} stuck at {job['status']}\n{stack.log_tail()}")


def submit(client, body: dict) -> str:
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_detection_teacher_then_wkd_lf_student(postgres_redis, tmp_path):
    import torch
    from safetensors.torch import load_file

    from wkd_core.detection import (
        coco_evaluate,
        create_detection_dataset,
        create_detector,
        detection_loaders,
    )

    stack, client = postgres_redis, postgres_redis.client()
    base = {"task": "detection", "dataset": {"name": "shapes_mini"}}
    # a detection job is validated: a classifier cannot be the student
    bad = client.post("/jobs", json=base | {"method": "vanilla", "student": {"arch": "resnet8"}})
    assert bad.status_code == 422 and "student" in bad.text

    teacher_id = submit(client, base | {
        "method": "vanilla", "student": {"arch": "fasterrcnn_small_fpn"},
        "params": {"warmup_iters": 8}, "training": TRAINING | {"epochs": 2}})  # fmt: skip
    teacher = poll(client, teacher_id, timeout=600, stack=stack)
    assert teacher["status"] == "succeeded", (teacher["message"], stack.log_tail())
    assert "COCO AP" in teacher["message"]

    student_id = submit(client, base | {
        "method": "wkd_lf", "teacher": {"job_id": teacher_id},
        "student": {"arch": "fasterrcnn_tiny_fpn"},
        "params": {"warmup_iters": 8}, "training": TRAINING | {"epochs": 2}})  # fmt: skip
    job = poll(client, student_id, timeout=600, stack=stack)
    assert job["status"] == "succeeded", (job["failure_reason"], job["message"], stack.log_tail())
    assert [row["epoch"] for row in job["curve"]] == [1, 2]
    terms = set(job["curve"][0]["loss_terms"])
    assert {"loss_classifier", "loss_wkd_target", "loss_wkd_logit", "loss_wkd_feat"} <= terms
    assert {"coco_AP75", "coco_APs", "coco_APm", "coco_APl"} <= terms
    names = {a["name"]: a for a in job["artifacts"]}
    assert {"student.safetensors", "interrelations.pt", "manifest.json", "curves.png",
            "student.onnx"} <= set(names)  # fmt: skip

    # The reported AP of the last epoch, recomputed from the downloaded student.
    weights = tmp_path / "student.safetensors"
    weights.write_bytes(client.get(names["student.safetensors"]["url"]).content)
    student = create_detector("fasterrcnn_tiny_fpn", num_classes=4)
    student.load_state_dict(load_file(weights), strict=True)
    root = stack.data_dir / "datasets"
    test_set = create_detection_dataset("shapes_mini", split="test", root=root)
    _, loader = detection_loaders(test_set, test_set, batch_size=8)
    torch.set_num_threads(1)
    metrics = coco_evaluate(student, loader)
    assert job["curve"][-1]["test_top1"] == pytest.approx(100 * metrics["AP"], abs=1e-6)
    assert job["curve"][-1]["test_top5"] == pytest.approx(100 * metrics["AP50"], abs=1e-6)
