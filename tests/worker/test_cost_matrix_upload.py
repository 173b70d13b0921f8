"""A job that names an uploaded cost matrix: the worker checks its values, then trains with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from worker_helpers import add_teacher, get_job, insert_job, make_settings, tiny_spec

from service import accounts, storage
from service.tables import FailureReason, JobStatus
from worker.common import session_factory, settings_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(sqlite_url, tmp_path):
    return make_settings(sqlite_url, tmp_path)


def add_matrix(sessions, settings, owner: str, matrix: torch.Tensor, name: str) -> str:
    """A ``kind=cost_matrix`` upload holding ``matrix`` (``torch.save``, the authors' format)."""
    checkpoint_id = f"ck_matrix_{name}"
    path = settings.checkpoint_dir / f"{checkpoint_id}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(matrix, path)
    with sessions() as session:
        accounts.create_checkpoint(
            session, checkpoint_id=checkpoint_id, owner_id=owner, arch="", num_classes=10,
            filename="linear_cka.pth", size=path.stat().st_size,
            sha256=storage.file_sha256(path), path=path.name, kind="cost_matrix",
        )  # fmt: skip
    return checkpoint_id


def run_job_process(settings, job_id: str, teacher: Path, tmp_path: Path) -> dict:
    """``python -m worker.runner`` as the supervisor starts it; returns its verdict file."""
    result = tmp_path / f"{job_id}.json"
    done = subprocess.run(
        [sys.executable, "-m", "worker.runner", job_id, "--result", str(result),
         "--teacher", str(teacher)],
        cwd=ROOT, env=settings_env(settings), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text())


def symmetric(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    d = torch.rand(10, 10)
    d = (d + d.T) / 2
    return d.fill_diagonal_(0)


def wkd_l_job(sessions, settings, owner, matrix_id: str) -> tuple[str, Path]:
    teacher = add_teacher(sessions, settings, owner, arch="resnet8", weights_arch="resnet8")
    body = tiny_spec(
        method="wkd_l", teacher={"checkpoint_id": teacher, "arch": "resnet8"},
        interrelations={"source": "file", "checkpoint_id": matrix_id},
        training={"epochs": 1},
    )  # fmt: skip
    return insert_job(sessions, owner, body), settings.checkpoint_dir / f"{teacher}.safetensors"


def test_an_asymmetric_matrix_fails_the_job_as_invalid_input(settings, tmp_path):
    sessions = session_factory(settings)
    with sessions() as session:
        owner = accounts.create_api_key(session, name="o")[0].id
    bad = symmetric(0)
    bad[0, 1] += 0.5
    job_id, teacher = wkd_l_job(
        sessions, settings, owner, add_matrix(sessions, settings, owner, bad, "bad")
    )
    verdict = run_job_process(settings, job_id, teacher, tmp_path)
    job = get_job(sessions, job_id)
    assert (job.status, job.failure_reason) == (JobStatus.failed, FailureReason.invalid_input)
    assert job.message == (
        "cost matrix ck_matrix_bad (linear_cka.pth): distance matrix is not symmetric"
    )
    assert verdict["status"] == "failed" and str(settings.checkpoint_dir) not in job.message


def test_the_uploaded_matrix_is_the_one_the_job_trains_with(settings, tmp_path):
    sessions = session_factory(settings)
    with sessions() as session:
        owner = accounts.create_api_key(session, name="o")[0].id
    matrix = symmetric(1)
    job_id, teacher = wkd_l_job(
        sessions, settings, owner, add_matrix(sessions, settings, owner, matrix, "ok")
    )
    verdict = run_job_process(settings, job_id, teacher, tmp_path)
    assert verdict["status"] == "succeeded", verdict
    used = torch.load(settings.artifact_dir / job_id / "interrelations.pt", weights_only=True)
    assert torch.equal(used, matrix)
    manifest = (settings.artifact_dir / job_id / "manifest.json").read_text()
    assert "ck_matrix_ok" in manifest and str(settings.checkpoint_dir) not in manifest
