"""Faults the worker survives, with the real supervisor and runner processes (SQLite, and a
private PostgreSQL for the database outage): a runner killed by a signal, memory exhaustion
with evidence, a worker shutdown (SIGTERM), a runner whose worker died, a database that goes
away mid-job, a write cancelled by the statement timeout, an artifact folder that becomes
unwritable, and the paths no test ran before (a lost claim, the kill after the SIGTERM
grace, the cold start when the spare died …).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from worker_helpers import (
    get_job,
    insert_job,
    make_settings,
    metric_rows,
    runner_pids,
    tiny_spec,
    wait_for,
)

from service import accounts, crud, storage
from service.tables import FailureReason, JobStatus
from worker import shutdown
from worker.common import session_factory, settings_env
from worker.supervisor import LOG_FILE, supervise_job


@pytest.fixture
def settings(sqlite_url, tmp_path):
    return make_settings(sqlite_url, tmp_path)


def in_thread(settings, job_id: str, **kwargs) -> tuple[threading.Thread, list]:
    """``supervise_job`` in a thread (as the Celery pool process runs it); its outcome."""
    outcome: list = []
    thread = threading.Thread(
        target=lambda: outcome.append(supervise_job(job_id, settings=settings, **kwargs))
    )
    thread.start()
    return thread, outcome


def after_first_checkpoint(settings, sessions, job_id: str) -> None:
    folder = settings.artifact_dir / job_id
    wait_for(lambda: metric_rows(sessions, job_id), timeout=120, what="epoch 1")
    wait_for(lambda: (folder / "checkpoint.pt").exists(), timeout=10, what="the checkpoint")


def student_weights(settings, job_id: str) -> dict:
    from safetensors.torch import load_file

    return load_file(settings.artifact_dir / job_id / "student.safetensors")


# --------------------------------------------------------------- a runner killed by a signal
def test_sigkill_without_evidence_is_retried_and_resumes_to_the_same_weights(
    settings, sessions, owner
):
    import torch

    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 3, "seed": 7}))
    thread, outcome = in_thread(settings, job_id)
    after_first_checkpoint(settings, sessions, job_id)
    first = metric_rows(sessions, job_id)[0]
    for pid in runner_pids(job_id):  # killed from outside: no OOM counter moved
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=60)
    job = get_job(sessions, job_id)
    assert outcome[0].status == "queued" and outcome[0].needs_message
    assert (job.status, job.attempt, job.failure_reason) == (JobStatus.queued, 2, None)

    assert supervise_job(job_id, settings=settings).status == "succeeded"
    rows = metric_rows(sessions, job_id)
    assert [r.epoch for r in rows] == [1, 2, 3]  # each epoch once
    assert (rows[0].created_at, rows[0].test_top1) == (first.created_at, first.test_top1)
    # The same spec never interrupted, same seed, on CPU: the same weights bit for bit. The
    # reference runs in a fresh process like the runner: this test process may have changed
    # torch's thread count (other tests do), and with it the order of float sums.
    from safetensors.torch import load_file

    reference = settings.data_dir / "reference"
    code = ("import json, sys; from pathlib import Path; from wkd_core.pipeline import run_job; "
            "run_job(json.loads(sys.argv[1]), out_dir=Path(sys.argv[2]))")  # fmt: skip
    subprocess.run([sys.executable, "-c", code, json.dumps(job.spec), str(reference)],
                   check=True, capture_output=True)  # fmt: skip
    uninterrupted = load_file(reference / "student.safetensors")
    resumed = student_weights(settings, job_id)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_out_of_memory_only_with_evidence(settings, sessions, owner, monkeypatch):
    # The kernel's OOM killer cannot be provoked safely on a shared machine: the cgroup
    # counter it would raise is read through oom_kill_count, which goes up here by one.
    import worker.supervisor

    counts = iter([3, 4])
    monkeypatch.setattr(worker.supervisor, "oom_kill_count", lambda: next(counts))
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 200}))
    thread, outcome = in_thread(settings, job_id)
    wait_for(lambda: get_job(sessions, job_id).status == JobStatus.running, timeout=60,
             what="running")  # fmt: skip
    for pid in runner_pids(job_id):
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=60)
    job = get_job(sessions, job_id)
    assert (job.status, job.failure_reason) == (JobStatus.failed, FailureReason.out_of_memory)
    assert outcome[0].status == "failed" and "SIGKILL" in job.message


def test_verdicts_of_a_dead_runner(settings):
    from types import SimpleNamespace

    from worker.verdict import RETRY, oom_kill_count, verdict_of

    job = SimpleNamespace(cancel_requested_at=None)
    for returncode in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGTERM, 128 + 9):
        status, reason, message = verdict_of(job, returncode, None, None, settings)
        assert (status, reason) == (RETRY, FailureReason.worker_lost), returncode
        assert "killed by SIG" in message
    status, reason, _ = verdict_of(job, -9, None, None, settings, oom_evidence=True)
    assert (status, reason) == (JobStatus.failed, FailureReason.out_of_memory)
    caught = {"status": "failed", "failure_reason": "out_of_memory", "message": "CUDA OOM"}
    assert verdict_of(job, 0, None, caught, settings)[1] == FailureReason.out_of_memory
    assert verdict_of(job, 1, None, None, settings)[1] == FailureReason.internal
    events = settings.data_dir / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert oom_kill_count(events) == 2


# ------------------------------------------------------------------- the worker's shutdown
def test_sigterm_to_the_worker_hands_the_job_back_without_an_attempt(settings, sessions, owner):
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 200}))
    thread, outcome = in_thread(settings, job_id)
    try:
        wait_for(lambda: metric_rows(sessions, job_id), timeout=120, what="epoch 1")
        asked = time.monotonic()
        shutdown.draining.set()  # what the pool process's SIGTERM handler does
        thread.join(timeout=60)
        stopped_in = time.monotonic() - asked
    finally:
        shutdown.draining.clear()
        thread.join(timeout=60)
    job = get_job(sessions, job_id)
    assert outcome[0].status == "handed_back" and outcome[0].needs_message
    assert (job.status, job.attempt, job.worker_id, job.enqueued_at) == (
        JobStatus.queued, 1, None, None,
    )  # fmt: skip
    assert stopped_in < 30, stopped_in  # the next batch, not the end of 200 epochs
    assert runner_pids(job_id) == []


def test_a_runner_whose_worker_died_hands_its_job_back(settings, sessions, owner):
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 200}))
    with sessions() as session:
        assert crud.claim_job(session, job_id=job_id, worker_id="doomed-worker")
    folder = storage.job_dir(settings.artifact_dir, job_id)
    # A shell plays the supervisor: it starts the runner and is then SIGKILLed.
    runner = f"{sys.executable} -m worker.runner {job_id} --result {folder / 'r.json'}"
    parent = subprocess.Popen(["sh", "-c", f"{runner} & wait"], env=settings_env(settings),
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: metric_rows(sessions, job_id), timeout=120, what="epoch 1")
        parent.kill()
        parent.wait()
        wait_for(lambda: get_job(sessions, job_id).status == JobStatus.queued, timeout=60,
                 what="the hand-back")  # fmt: skip
        wait_for(lambda: not runner_pids(job_id), timeout=30, what="the runner to exit")
    finally:
        for pid in runner_pids(job_id):
            os.kill(pid, signal.SIGKILL)
    job = get_job(sessions, job_id)
    assert (job.attempt, job.worker_id) == (1, None)


def four_epochs_past_the_first(settings):
    """A 4-epoch job of a new key, run in a thread until its first epoch is recorded;
    ``(sessions, job id, thread, outcome)``."""
    sessions = session_factory(settings)
    with sessions() as session:
        owner = accounts.create_api_key(session, name="o")[0].id
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 4}))
    thread, outcome = in_thread(settings, job_id)
    wait_for(lambda: metric_rows(sessions, job_id), timeout=120, what="epoch 1")
    return sessions, job_id, thread, outcome


# ---------------------------------------------------------------- the database goes away
OUTAGE_S = 30.0  # how long PostgreSQL stays stopped (issue 7: "stopped for 30 s")


@pytest.mark.slow
def test_a_database_outage_mid_job_loses_nothing(tmp_path):
    from service.testing import private_postgres

    with private_postgres() as server:
        settings = make_settings(server.url, tmp_path / "data", db_retry_s=120)
        sessions, job_id, thread, outcome = four_epochs_past_the_first(settings)
        checkpoint = settings.artifact_dir / job_id / "checkpoint.pt"
        written = checkpoint.stat().st_mtime_ns
        server.stop()
        down = time.monotonic()
        # The next epoch ends (its checkpoint is written just before its metrics) while the
        # database is down, which stays down a few seconds more and 30 s in all (the
        # outage of issue 7).
        wait_for(lambda: checkpoint.stat().st_mtime_ns != written, timeout=300,
                 what="an epoch end during the outage")  # fmt: skip
        time.sleep(max(3.0, OUTAGE_S - (time.monotonic() - down)))
        outage = time.monotonic() - down
        server.start()
        thread.join(timeout=300)
        job = get_job(sessions, job_id)
        epochs = [r.epoch for r in metric_rows(sessions, job_id)]
        sessions.kw["bind"].dispose()
    log = (settings.artifact_dir / job_id / LOG_FILE).read_text()
    assert outcome[0].status == "succeeded", log
    assert (job.status, job.attempt) == (JobStatus.succeeded, 1)
    assert epochs == [1, 2, 3, 4]  # each epoch exactly once, none lost to the outage
    assert "metrics: database unavailable" in log  # a write really was retried
    assert outage >= OUTAGE_S


# ------------------------------------------------------- a lock held elsewhere mid-job
@pytest.mark.postgres
def test_a_write_cancelled_by_the_statement_timeout_is_retried(tmp_path):
    """Another session holds a lock on ``job_metrics`` across an epoch end: the server
    cancels the runner's insert after ``db_statement_timeout_s`` (``QueryCanceled``, an
    ``OperationalError``), which the runner retries as in an outage until the lock goes."""
    from sqlalchemy import text

    from service.db import make_engine, upgrade
    from service.testing import temporary_postgres_database

    with temporary_postgres_database() as url:
        upgrade(url)
        settings = make_settings(url, tmp_path / "data", db_retry_s=120, db_statement_timeout_s=1)
        sessions, job_id, thread, outcome = four_epochs_past_the_first(settings)
        checkpoint = settings.artifact_dir / job_id / "checkpoint.pt"
        written = checkpoint.stat().st_mtime_ns
        holder = make_engine(url)  # no statement limit of its own
        try:
            with holder.connect() as connection, connection.begin():
                connection.execute(text("LOCK TABLE job_metrics IN ACCESS EXCLUSIVE MODE"))
                # The next epoch's checkpoint is written just before its metrics insert,
                # which now waits on the lock; hold it through a few 1 s cancellations.
                wait_for(lambda: checkpoint.stat().st_mtime_ns != written, timeout=300,
                         what="an epoch end under the lock")  # fmt: skip
                time.sleep(4)
            thread.join(timeout=300)
            job = get_job(sessions, job_id)
            epochs = [r.epoch for r in metric_rows(sessions, job_id)]
        finally:
            holder.dispose()
            sessions.kw["bind"].dispose()
    log = (settings.artifact_dir / job_id / LOG_FILE).read_text()
    assert outcome[0].status == "succeeded", log
    assert (job.status, job.attempt) == (JobStatus.succeeded, 1)
    assert epochs == [1, 2, 3, 4]  # the cancelled insert was retried, not lost or doubled
    assert "metrics: database unavailable (QueryCanceled)" in log


# -------------------------------------------------------------- unwritable artifact folder
def test_an_unwritable_artifact_folder_fails_the_job_with_a_reason(settings, sessions, owner):
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 200}))
    thread, outcome = in_thread(settings, job_id)
    folder = settings.artifact_dir / job_id
    wait_for(lambda: metric_rows(sessions, job_id), timeout=120, what="epoch 1")
    # The folder is replaced by a file: every write below it fails (ENOTDIR), also for
    # root, for whom a chmod would change nothing; a full disk fails the same code path.
    folder.rename(folder.with_name(job_id + ".moved"))
    folder.write_text("not a folder")
    thread.join(timeout=120)
    job = get_job(sessions, job_id)
    assert (job.status, job.failure_reason) == (JobStatus.failed, FailureReason.internal)
    assert outcome[0].status == "failed"
    assert "could not write the job's files" in job.message
    assert str(settings.data_dir) not in job.message and "/" not in job.message
    assert runner_pids(job_id) == []


# -------------------------------------------------------------------------------- cancel
def test_cancel_while_preparing(settings, sessions, owner):
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 200}))
    thread, outcome = in_thread(settings, job_id)
    wait_for(lambda: get_job(sessions, job_id).status == JobStatus.preparing, timeout=30,
             what="the claim")  # fmt: skip
    with sessions() as session:
        crud.request_cancel(session, job_id=job_id)
    thread.join(timeout=90)
    job = get_job(sessions, job_id)
    assert outcome[0].status == "cancelled" and job.status == JobStatus.cancelled
    assert metric_rows(sessions, job_id) == [] and runner_pids(job_id) == []
