"""Failure reasons a supervised job ends with, the reaper's re-queue and resume, and the
warm spare runner.

These run on SQLite only: the database paths are the ones ``test_worker_supervisor.py``
already runs on both backends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from worker_helpers import (
    add_teacher,
    get_job,
    insert_job,
    make_settings,
    metric_rows,
    runner_pids,
    tiny_spec,
    wait_for,
)

from service import accounts, crud
from service.tables import FailureReason, JobStatus
from worker.common import session_factory, settings_env
from worker.reaper import reap_once
from worker.supervisor import supervise_job


@pytest.fixture
def settings(sqlite_url, tmp_path):
    return make_settings(sqlite_url, tmp_path)


def run_to_failure(settings, sessions, job_id) -> tuple:
    outcome = supervise_job(job_id, settings=settings, kill_grace_s=5)
    job = get_job(sessions, job_id)
    assert job.status == JobStatus.failed and outcome.status == "failed"
    assert outcome.failure_reason == job.failure_reason
    return job.failure_reason, job.message


def test_teacher_that_does_not_fit_its_architecture(settings, sessions, owner):
    # resnet8 weights uploaded as a resnet14: the strict load in the runner refuses them.
    teacher = add_teacher(sessions, settings, owner, arch="resnet14", weights_arch="resnet8")
    body = tiny_spec(method="kd", teacher={"arch": "resnet14", "checkpoint_id": teacher})
    reason, message = run_to_failure(settings, sessions, insert_job(sessions, owner, body))
    assert reason == FailureReason.teacher_mismatch
    assert "teacher" in message


def test_missing_inputs_are_invalid_input(settings, sessions, owner):
    teacher = add_teacher(sessions, settings, owner, arch="resnet8", weights_arch="resnet8")
    (settings.checkpoint_dir / f"{teacher}.safetensors").unlink()  # the upload vanished
    body = tiny_spec(method="kd", teacher={"arch": "resnet8", "checkpoint_id": teacher})
    reason, message = run_to_failure(settings, sessions, insert_job(sessions, owner, body))
    assert reason == FailureReason.invalid_input and "missing" in message

    # CIFAR-10 was never placed under the server's dataset root (nothing downloads).
    body = tiny_spec(dataset={"name": "cifar10", "train_subset_per_class": None})
    reason, message = run_to_failure(settings, sessions, insert_job(sessions, owner, body))
    assert reason == FailureReason.invalid_input and "cifar" in message.lower()


def test_nan_loss_is_diverged(settings, sessions, owner):
    # Stored directly (the API caps lr at 100): SGD at lr 1e12 blows the weights up at once.
    spec = insert_spec(tiny_spec(training={"lr": 0.05}))
    spec["training"]["lr"] = 1e12
    reason, message = run_to_failure(
        settings, sessions, insert_job(sessions, owner, spec, resolve=False)
    )
    assert reason == FailureReason.diverged and "diverged" in message


def test_time_limit(sqlite_url, tmp_path):
    settings = make_settings(sqlite_url, tmp_path, job_time_limit_s=1)
    sessions = session_factory(settings)
    with sessions() as session:
        owner_id = accounts.create_api_key(session, name="t")[0].id
    job_id = insert_job(sessions, owner_id, tiny_spec(training={"epochs": 200}))
    reason, message = run_to_failure(settings, sessions, job_id)
    assert reason == FailureReason.time_limit and "1 s" in message
    assert runner_pids(job_id) == []


def test_reaper_requeues_a_lost_job_which_resumes_from_its_checkpoint(settings, sessions, owner):
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 2}))
    # Play a worker that dies after epoch 1: claim, start the runner, kill everything.
    with sessions() as session:
        assert crud.claim_job(session, job_id=job_id, worker_id="doomed")
    folder = settings.artifact_dir / job_id
    folder.mkdir(parents=True, exist_ok=True)
    runner = subprocess.Popen(
        [sys.executable, "-m", "worker.runner", job_id, "--result", str(folder / "r.json")],
        env=settings_env(settings), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        first = wait_for(lambda: metric_rows(sessions, job_id), timeout=90, what="epoch 1")[0]
        wait_for(lambda: (folder / "checkpoint.pt").exists(), timeout=10, what="checkpoint")
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    wait_for(lambda: _stale(settings, sessions, job_id), timeout=10, what="a stale heartbeat")

    enqueued: list[str] = []
    assert reap_once(sessions, stale_after_s=settings.stale_after_s, enqueue=enqueued.append) == [
        job_id
    ]
    assert enqueued == [job_id]
    job = get_job(sessions, job_id)
    assert (job.status, job.attempt, job.worker_id) == (JobStatus.queued, 2, None)

    assert supervise_job(job_id, settings=settings).status == "succeeded"
    rows = metric_rows(sessions, job_id)
    assert [r.epoch for r in rows] == [1, 2]
    # Epoch 1 was not trained again: its row is the one the first attempt wrote.
    assert (rows[0].seconds, rows[0].test_top1, rows[0].created_at) == (
        first.seconds, first.test_top1, first.created_at,
    )  # fmt: skip


def test_reaper_fails_a_job_out_of_attempts(settings, sessions, owner):
    job_id = insert_job(sessions, owner, tiny_spec())  # max_attempts=2
    with sessions() as session:
        for attempt in (1, 2):
            assert crud.claim_job(session, job_id=job_id, worker_id=f"w{attempt}")
            wait_for(lambda: _stale(settings, sessions, job_id), timeout=10, what="staleness")
            reap_once(sessions, stale_after_s=settings.stale_after_s, enqueue=lambda _id: None)
    job = get_job(sessions, job_id)
    assert job.status == JobStatus.failed and job.failure_reason == FailureReason.worker_lost
    assert job.attempt == 2


def insert_spec(body: dict) -> dict:
    from service.spec import validate_job_spec

    return validate_job_spec(body).to_stored()


def _stale(settings, sessions, job_id) -> bool:
    from service.tables import utcnow

    beat = get_job(sessions, job_id).heartbeat_at
    return (utcnow() - beat).total_seconds() > settings.stale_after_s


def test_reaper_thread_requeues_through_the_broker(settings, sessions, owner):
    # The worker's own reaper thread and Celery app, on the real (filesystem) broker.
    import json

    from worker.celery_app import make_app
    from worker.reaper import start_reaper, stop_reaper

    job_id = insert_job(sessions, owner, tiny_spec())
    with sessions() as session:
        assert crud.claim_job(session, job_id=job_id, worker_id="gone")
    settings.ensure_dirs()
    queue_folder = settings.data_dir / "broker" / "queue"
    thread = start_reaper(settings.model_copy(update={"reaper_interval_s": 0.2}),
                          make_app(settings))  # fmt: skip
    try:
        wait_for(lambda: list(queue_folder.iterdir()), timeout=20, what="the re-sent message")
        time.sleep(1)  # more passes: the message now waits in the broker, none is added
    finally:
        stop_reaper()
        thread.join(timeout=5)
    [message] = list(queue_folder.iterdir())
    envelope = json.loads(message.read_text())
    assert envelope["headers"]["task"] == "worker.tasks.run_job"
    assert envelope["headers"]["argsrepr"] == repr([job_id])
    job = get_job(sessions, job_id)
    assert (job.status, job.attempt) == (JobStatus.queued, 2) and job.enqueued_at is not None


def test_warm_spare_runs_the_next_job(settings, sessions, owner):
    from worker.standby import standby

    first = insert_job(sessions, owner, tiny_spec(training={"epochs": 1}))
    second = insert_job(sessions, owner, tiny_spec(training={"epochs": 1}))
    try:
        assert supervise_job(first, settings=settings, warm=True).status == "succeeded"
        spare = standby._process  # started after the first job, waiting on its stdin
        assert spare is not None and spare.poll() is None
        outcome = supervise_job(second, settings=settings, warm=True)
        assert outcome.status == "succeeded", (
            settings.artifact_dir / second / "runner.log"
        ).read_text()
        assert spare.poll() == 0  # the spare ran the second job and exited
        assert "Traceback" not in (settings.artifact_dir / second / "runner.log").read_text()
        assert [r.epoch for r in metric_rows(sessions, second)] == [1]
        assert standby._process is not None and standby._process.pid != spare.pid
    finally:
        standby.stop()


def test_a_job_held_back_by_its_keys_limit_is_woken_when_the_keys_job_ends(
    settings, sessions, owner, monkeypatch
):
    from worker import tasks
    from worker.supervisor import Outcome, supervise_next_job

    limited = settings.model_copy(update={"max_running_jobs_per_key": 1})
    running, held = (insert_job(sessions, owner, tiny_spec()) for _ in range(2))
    with sessions() as session:
        assert crud.claim_job(session, job_id=running, worker_id="w1")
    # held's message reaches an idle worker: its key runs 1 of 1, so nothing is claimed.
    assert supervise_next_job(limited, hint=held, sessions=sessions).status == "skipped"
    before = get_job(sessions, held)
    assert before.status == JobStatus.queued and before.worker_id is None
    sent: list = []
    monkeypatch.setattr(tasks, "get_settings", lambda: limited)
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda **kw: sent.append(kw))
    tasks.wake_held_job(Outcome("succeeded", job_id=running))  # not ended yet: still 1 of 1
    assert sent == []
    with sessions() as session:
        assert crud.finish_job(session, job_id=running, status=JobStatus.succeeded)
    # The task of the ended job sends held a new message (guarded by its enqueued_at).
    tasks.wake_held_job(Outcome("succeeded", job_id=running))
    assert sent == [{"args": [held], "queue": limited.queue_name}]
    assert get_job(sessions, held).enqueued_at > before.enqueued_at
