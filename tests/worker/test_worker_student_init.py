"""A job whose student starts from uploaded weights (``student.init``): the runner fetches
them and the student trains from them; weights that do not fit fail the job as invalid input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from worker_helpers import add_teacher, get_job, insert_job, make_settings, tiny_spec

from service import accounts
from service.tables import FailureReason, JobStatus
from worker.common import session_factory, settings_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(sqlite_url, tmp_path):
    return make_settings(sqlite_url, tmp_path)


def run_job_process(settings, job_id: str, tmp_path: Path) -> tuple[dict, str]:
    """``python -m worker.runner`` as the supervisor starts it (no teacher); its verdict and
    its stdout (what the supervisor writes to the user's runner.log)."""
    result = tmp_path / f"{job_id}.json"
    done = subprocess.run(
        [sys.executable, "-m", "worker.runner", job_id, "--result", str(result)],
        cwd=ROOT, env=settings_env(settings), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text()), done.stdout


def owner_of(sessions) -> str:
    with sessions() as session:
        return accounts.create_api_key(session, name="o")[0].id


def test_the_student_trains_from_the_uploaded_weights(settings, tmp_path):
    sessions = session_factory(settings)
    owner = owner_of(sessions)
    weights = add_teacher(sessions, settings, owner, arch="resnet8", weights_arch="resnet8")
    # a learning rate of ~0: after one epoch the weights are still the uploaded ones
    body = tiny_spec(student={"init": {"checkpoint_id": weights}},
                     training={"epochs": 1, "lr": 1e-12})  # fmt: skip
    job_id = insert_job(sessions, owner, body)
    verdict, log = run_job_process(settings, job_id, tmp_path)
    assert verdict["status"] == "succeeded", verdict
    folder = settings.artifact_dir / job_id
    start = load_file(settings.checkpoint_dir / f"{weights}.safetensors")
    trained = load_file(folder / "student.safetensors")
    for key in ("conv1.weight", "layer3.0.conv2.weight", "fc.weight"):
        assert torch.allclose(trained[key], start[key], atol=1e-6), key
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["student_init"]["layout"] == "whole"
    assert manifest["student_init"]["loaded"] == len(start)
    assert "student init (whole): " in log


def test_weights_that_do_not_fit_fail_the_job_as_invalid_input(settings, tmp_path):
    sessions = session_factory(settings)
    owner = owner_of(sessions)
    # resnet14 weights declared as resnet8 (the API checks the declared architecture only)
    wrong = add_teacher(sessions, settings, owner, arch="resnet8", weights_arch="resnet14")
    job_id = insert_job(sessions, owner, tiny_spec(student={"init": {"checkpoint_id": wrong}}))
    verdict, _ = run_job_process(settings, job_id, tmp_path)
    job = get_job(sessions, job_id)
    assert (job.status, job.failure_reason) == (JobStatus.failed, FailureReason.invalid_input)
    assert job.message.startswith("could not prepare the job: StudentInitError: ")
    assert "missing keys" in job.message or "unexpected keys" in job.message
    assert verdict["status"] == "failed" and str(settings.checkpoint_dir) not in job.message

    gone = insert_job(sessions, owner, tiny_spec(student={"init": {"checkpoint_id": "ck_gone"}}))
    run_job_process(settings, gone, tmp_path)
    job = get_job(sessions, gone)
    assert (job.status, job.failure_reason) == (JobStatus.failed, FailureReason.invalid_input)
    assert job.message == "checkpoint ck_gone no longer exists"


def test_a_detector_starts_from_another_detectors_backbone(settings, tmp_path):
    """Detection, ``backbone_only``: a 7-class detector's backbone starts a 4-class student;
    the file's heads are reported as unexpected and left out."""
    from safetensors.torch import save_file

    from service import storage
    from wkd_core.detection import create_detector

    sessions = session_factory(settings)
    owner = owner_of(sessions)
    torch.manual_seed(0)
    source = create_detector("fasterrcnn_tiny_fpn", num_classes=7).state_dict()
    path = settings.checkpoint_dir / "ck_det7.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    with sessions() as session:
        accounts.create_checkpoint(
            session, checkpoint_id="ck_det7", owner_id=owner, arch="fasterrcnn_tiny_fpn",
            num_classes=7, filename="det7.safetensors", size=path.stat().st_size,
            sha256=storage.file_sha256(path), path=path.name,
        )  # fmt: skip
    body = {
        "task": "detection", "method": "vanilla", "dataset": {"name": "shapes_mini"},
        "student": {"arch": "fasterrcnn_tiny_fpn",
                    "init": {"checkpoint_id": "ck_det7", "backbone_only": True}},
        "params": {"warmup_iters": 2},
        "training": {"epochs": 1, "batch_size": 16, "lr": 1e-12, "lr_milestones": [],
                     "num_workers": 0},
    }  # fmt: skip
    job_id = insert_job(sessions, owner, body)
    verdict, log = run_job_process(settings, job_id, tmp_path)
    assert verdict["status"] == "succeeded", verdict
    folder = settings.artifact_dir / job_id
    trained = load_file(folder / "student.safetensors")
    for key in ("backbone.body.layer1.0.0.weight", "backbone.fpn.layer_blocks.0.0.weight"):
        assert torch.allclose(trained[key], source[key], atol=1e-6), key
    assert trained["roi_heads.box_predictor.cls_score.weight"].shape[0] == 5  # its own head
    init = json.loads((folder / "manifest.json").read_text())["student_init"]
    assert init["layout"] == "detector-backbone" and init["num_missing"] == 0
    assert "roi_heads.box_predictor.cls_score.weight" in init["unexpected"]
    assert "student init (detector-backbone): " in log
