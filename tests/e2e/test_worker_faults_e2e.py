"""Worker deaths, restarts and a broker restart through real processes: ``celery worker``
(prefork, one pool process, its runner subprocesses), a private ``redis-server`` without
persistence (restarted here, so never the shared one) and a scratch database on the
PostgreSQL at 127.0.0.1.

One scenario, in the order a bad deployment day brings it: a job runs while two wait; the
worker gets SIGTERM (it must exit within its grace period and hand the job back without
using an attempt); its successor is SIGKILLed (main process) right after it took the job
again; Redis restarts and forgets every message; a third worker starts, its pool process is
SIGKILLed, then the job's runner. Every job must succeed exactly once, in the order
submitted, with each epoch once on its curve; only the runner's death costs an attempt.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

import pytest
import redis
from stacks import clean_env, start, wait_until

from service import accounts, crud
from service.db import make_engine, make_sessionmaker, upgrade
from service.queue import Enqueuer
from service.settings import Settings
from service.spec import validate_job_spec
from service.tables import JobMetric, JobStatus
from service.testing import private_redis, temporary_postgres_database
from worker.shutdown import child_pids

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.slow]

GRACE_S = 30  # runner_stop_grace_s; the worker must be gone well within it plus start-up


# Long enough that the first job is still training after each of the kills below (an epoch
# of 100 digits takes well under a second on an idle machine).
FIRST_EPOCHS = 40


def spec(epochs: int) -> dict:
    body = {"method": "vanilla", "student": {"arch": "resnet8"},
            "dataset": {"name": "mnist5k", "train_subset_per_class": 10},
            "training": {"epochs": epochs, "batch_size": 50, "lr": 0.05, "lr_milestones": [],
                         "num_workers": 0}}  # fmt: skip
    return validate_job_spec(body).to_stored()


class Worker:
    """One ``celery worker`` process (main + one prefork pool process)."""

    def __init__(self, env: dict, log) -> None:
        command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                   "--pool", "prefork", "--concurrency", "1", "--queues", env["WKD_QUEUE_NAME"],
                   "--hostname", f"{secrets.token_hex(3)}@%h"]  # fmt: skip
        self.log = log
        self.process = start(command, env, log)
        # Celery's default --loglevel (WARNING): the worker's own lines must still show.
        wait_until(lambda: b"worker ready: queue" in log.read_bytes(), timeout=300,
                   what="the worker", processes=[self.process])  # fmt: skip


def runner_of(worker: Worker) -> list[int]:
    """The runner processes of ``worker``: children of its pool process that run
    ``worker.runner`` (a warm spare's command line names no job, so look by parent)."""
    runners = []
    for pool in child_pids(worker.process.pid):
        for pid in child_pids(pool):
            try:
                if b"worker.runner" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    runners.append(pid)
            except OSError:
                continue
    return runners


def running_again(job, job_id: str, *, previous: str | None) -> str:
    """Wait until ``job_id`` runs under a claim other than ``previous``; that claim."""
    def claimed():
        row = job(job_id)
        fresh = row.status == JobStatus.running and row.worker_id not in (None, previous)
        return fresh and row.worker_id

    return wait_until(claimed, timeout=300, what=f"{job_id} to run under a new claim")


def test_sigterm_sigkill_and_a_redis_restart_lose_no_job_and_run_none_twice(tmp_path):
    with private_redis(tmp_path / "redis") as redis_server, \
            temporary_postgres_database() as database_url:  # fmt: skip
        upgrade(database_url)
        env = clean_env(
            WKD_DATA_DIR=str(tmp_path / "data"), WKD_DATABASE_URL=database_url,
            WKD_BROKER_URL=redis_server.url, WKD_QUEUE_NAME=f"faults-{secrets.token_hex(3)}",
            WKD_HEARTBEAT_SECONDS="1", WKD_STALE_HEARTBEATS="60", WKD_REAPER_INTERVAL_S="1",
            WKD_REQUEUE_AFTER_S="3", WKD_RUNNER_STOP_GRACE_S=str(GRACE_S),
        )  # fmt: skip
        settings = Settings(
            data_dir=tmp_path / "data", database_url=database_url,
            broker_url=redis_server.url, queue_name=env["WKD_QUEUE_NAME"],
        )  # fmt: skip
        engine = make_engine(database_url)
        sessions = make_sessionmaker(engine)
        enqueue = Enqueuer(settings)
        with sessions() as session:
            owner = accounts.create_api_key(session, name="faults")[0].id

        def submit(epochs: int) -> str:  # as POST /jobs does: commit, send, mark
            with sessions() as session:
                job, _ = crud.create_job(session, owner_id=owner, spec=spec(epochs),
                                         max_attempts=3)  # fmt: skip
                enqueue(job.id)
                crud.mark_enqueued(session, job_id=job.id)
            return job.id

        def job(job_id: str):
            with sessions() as session:
                return crud.get_job(session, job_id)

        def epochs(job_id: str) -> list[int]:
            with sessions() as session:
                rows = session.query(JobMetric.epoch).filter(JobMetric.job_id == job_id)
                return sorted(epoch for (epoch,) in rows)

        workers = []
        try:
            workers.append(Worker(env, tmp_path / "worker1.log"))
            first, second, third = submit(FIRST_EPOCHS), submit(1), submit(1)
            wait_until(lambda: epochs(first), timeout=300, what="epoch 1 of the first job",
                       processes=[workers[0].process])  # fmt: skip

            # 1. SIGTERM: the worker stops the job at its next batch and exits in time.
            asked = time.monotonic()
            workers[0].process.send_signal(signal.SIGTERM)
            workers[0].process.wait(timeout=GRACE_S + 60)
            sigterm_exit_s = time.monotonic() - asked
            handed = job(first)
            assert (handed.status, handed.attempt) == (JobStatus.queued, 1)
            assert workers[0].process.returncode == 0

            # 2. SIGKILL of the next worker's main process, just after it took the job again.
            workers.append(Worker(env, tmp_path / "worker2.log"))
            wait_until(lambda: job(first).status == JobStatus.running, timeout=300,
                       what="the first job to run again")  # fmt: skip
            os.kill(workers[1].process.pid, signal.SIGKILL)
            workers[1].process.wait()
            # Its pool process dies with it; the orphaned runner hands the job back itself.
            wait_until(lambda: job(first).status == JobStatus.queued, timeout=120,
                       what="the orphaned runner's hand-back")  # fmt: skip

            # 3. Redis restarts without persistence: every waiting message is gone.
            redis_server.restart()
            assert redis.Redis(host="127.0.0.1", port=redis_server.port).dbsize() == 0

            # 4. A new worker: its reaper re-sends what the broker lacks; FIFO claims.
            workers.append(Worker(env, tmp_path / "worker3.log"))
            claim = running_again(job, first, previous=None)
            # All three had a re-sent message; the oldest, the first job, was claimed first.
            assert job(second).started_at is None and job(third).started_at is None

            # 5. SIGKILL of its pool process: Celery starts another; the runner hands back.
            [pool] = child_pids(workers[2].process.pid)
            os.kill(pool, signal.SIGKILL)
            claim = running_again(job, first, previous=claim)

            # 6. SIGKILL of the runner itself: retried as attempt 2 from its checkpoint.
            runners = runner_of(workers[2])
            assert runners, "the running job's runner"
            for pid in runners:
                os.kill(pid, signal.SIGKILL)
            for job_id in (first, second, third):
                wait_until(lambda job_id=job_id: job(job_id).is_terminal, timeout=600,
                           what=f"{job_id} to finish", processes=[workers[2].process])  # fmt: skip
            rows = {job_id: job(job_id) for job_id in (first, second, third)}
            curves = {job_id: epochs(job_id) for job_id in rows}
        finally:
            for worker in workers:
                if worker.process.poll() is None:
                    worker.process.terminate()
                    worker.process.wait(timeout=GRACE_S + 60)
            engine.dispose()

    logs = "\n".join(w.log.read_text()[-3000:] for w in workers)
    assert all(r.status == JobStatus.succeeded for r in rows.values()), logs
    # Only the runner's own death used up an attempt; SIGTERM and the worker deaths did not.
    assert [r.attempt for r in rows.values()] == [2, 1, 1]
    assert curves == {first: list(range(1, FIRST_EPOCHS + 1)), second: [1], third: [1]}  # once
    # First submitted, first run (the first job was still held by the killed pool process
    # when the second started, so only the queued ones are ordered here).
    assert rows[second].started_at <= rows[third].started_at
    # Nothing ran twice: one runner start per claim (3 for the stopped job, 1 for the others).
    runs = {job_id: (tmp_path / "data" / "artifacts" / job_id / "runner.log").read_text()
            .count(" attempt ") for job_id in rows}  # fmt: skip
    assert runs == {first: 5, second: 1, third: 1}, runs  # W1, W2, W3 twice, attempt 2
    assert sigterm_exit_s < GRACE_S + 30, sigterm_exit_s
    print(f"\nSIGTERM to exit: {sigterm_exit_s:.1f} s")
