"""The task body (claim + supervise) with the real runner subprocess, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time

import pytest
from worker_helpers import (
    add_teacher,
    get_job,
    insert_job,
    metric_rows,
    runner_pids,
    tiny_spec,
    wait_for,
)

from service import crud, storage
from service.tables import JobStatus
from worker.supervisor import LOG_FILE, supervise_job


def test_claim_skips_cancelled_and_already_claimed_jobs(settings, sessions, owner):
    cancelled = insert_job(sessions, owner, tiny_spec())
    taken = insert_job(sessions, owner, tiny_spec())
    with sessions() as session:
        crud.request_cancel(session, job_id=cancelled)
        assert crud.claim_job(session, job_id=taken, worker_id="another-worker")

    assert supervise_job(cancelled, settings=settings).status == "skipped"
    assert supervise_job(taken, settings=settings).status == "skipped"  # duplicate delivery

    assert get_job(sessions, cancelled).status == JobStatus.cancelled
    assert get_job(sessions, taken).worker_id == "another-worker"
    for job_id in (cancelled, taken):  # no runner was started: no folder, no log
        assert not (settings.artifact_dir / job_id).exists()


def test_wkd_l_job_succeeds_with_curve_and_artifacts(settings, sessions, owner):
    from safetensors.torch import load_file

    from wkd_core.models import create_model

    teacher = add_teacher(sessions, settings, owner, arch="resnet14", weights_arch="resnet14")
    body = tiny_spec(method="wkd_l", teacher={"arch": "resnet14", "checkpoint_id": teacher})
    job_id = insert_job(sessions, owner, body)

    outcome = supervise_job(job_id, settings=settings)

    job = get_job(sessions, job_id)
    assert outcome.status == "succeeded", (outcome, _log(settings, job_id))
    assert job.status == JobStatus.succeeded and job.failure_reason is None
    assert (job.progress_epoch, job.progress_total, job.attempt) == (2, 2, 1)
    assert job.started_at <= job.finished_at
    # The database curve is the one the library wrote to metrics.jsonl, row for row.
    folder = settings.artifact_dir / job_id
    written = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rows = metric_rows(sessions, job_id)
    assert [r.epoch for r in rows] == [w["epoch"] for w in written] == [1, 2]
    for row, line in zip(rows, written, strict=True):
        assert row.test_top1 == pytest.approx(line["test_top1"])
        assert row.train_loss == pytest.approx(line["train_loss"])
        assert row.loss_terms == pytest.approx(line["loss_terms"])
        assert set(row.loss_terms) == {"loss_ce", "loss_target", "loss_wd"}
    assert job.best_top1 == max(r.test_top1 for r in rows)
    assert job.last_top1 == rows[-1].test_top1
    # Artifacts: registered with the checksum of the file on disk; the checkpoint is gone.
    with sessions() as session:
        artifacts = {a.name: a for a in crud.list_artifacts(session, job_id=job_id)}
    expected = {"student.safetensors", "interrelations.pt", "metrics.csv", "metrics.jsonl",
                "manifest.json", "curves.png", LOG_FILE, "student_best.safetensors",
                "student_last.safetensors", "student_best.onnx", "student_last.onnx",
                "onnx_verification.json", "model_card.md", "events.out.tfevents.wkd"}  # fmt: skip
    assert set(artifacts) == expected
    for row in artifacts.values():
        path = storage.safe_join(settings.artifact_dir, row.path)
        assert row.sha256 == storage.file_sha256(path) and row.size == path.stat().st_size
    assert not (folder / "checkpoint.pt").exists()
    student = create_model("resnet8", num_classes=10)
    student.load_state_dict(load_file(folder / "student.safetensors"), strict=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["spec"]["method"] == "wkd_l"
    assert manifest["teacher_sha256"] == storage.file_sha256(
        settings.checkpoint_dir / f"{teacher}.safetensors"
    )


def test_cancel_while_running_stops_the_runner(settings, sessions, owner):
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 200}))
    outcome = []
    thread = threading.Thread(
        target=lambda: outcome.append(supervise_job(job_id, settings=settings))
    )
    thread.start()
    try:
        wait_for(lambda: metric_rows(sessions, job_id), timeout=90, what="the first epoch")
        assert get_job(sessions, job_id).status == JobStatus.running
        with sessions() as session:
            crud.request_cancel(session, job_id=job_id)
        asked = time.monotonic()
        assert get_job(sessions, job_id).status == JobStatus.cancelling
        thread.join(timeout=60)
        stopped_in = time.monotonic() - asked
    finally:
        thread.join(timeout=120)
    job = get_job(sessions, job_id)
    assert outcome[0].status == "cancelled", (outcome, _log(settings, job_id))
    assert job.status == JobStatus.cancelled and job.failure_reason is None
    assert 1 <= len(metric_rows(sessions, job_id)) < 200
    assert stopped_in < 30  # the runner stops at its next batch, well before a kill
    assert runner_pids(job_id) == []


def _log(settings, job_id: str) -> str:
    path = settings.artifact_dir / job_id / LOG_FILE
    return path.read_text()[-3000:] if path.exists() else "(no runner log)"
