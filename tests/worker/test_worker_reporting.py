"""The runner's database callback, in-process, and the worker's Celery settings."""

from __future__ import annotations

import logging
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError
from worker_helpers import get_job, insert_job, metric_rows, tiny_spec

from service import crud
from service.queue import RUN_JOB_TASK
from wkd_core.train import EpochMetrics, StopTraining
from worker.reporting import DatabaseReporter, DivergedError, Terminated


def claimed_job(sessions, owner) -> str:
    job_id = insert_job(sessions, owner, tiny_spec(training={"epochs": 5}))
    with sessions() as session:
        assert crud.claim_job(session, job_id=job_id, worker_id="w")
    return job_id


def epoch(n: int, top1: float, loss: float = 1.0) -> EpochMetrics:
    return EpochMetrics(
        epoch=n, lr=0.05, train_loss=loss, train_top1=50.0, test_top1=top1, test_top5=90.0,
        test_loss=1.5, loss_terms={"loss_ce": loss}, seconds=2.0,
    )  # fmt: skip


def test_one_row_per_epoch_and_progress(sessions, owner):
    job_id = claimed_job(sessions, owner)
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=60)
    state = SimpleNamespace(epoch=1)
    reporter.on_fit_start(state)
    for n, top1 in ((1, 40.0), (2, 70.0), (3, 60.0)):
        reporter.on_epoch_end(state, epoch(n, top1))
    reporter.on_epoch_end(state, epoch(3, 65.0))  # a resumed epoch overwrites its row
    rows = metric_rows(sessions, job_id)
    assert [(r.epoch, r.test_top1) for r in rows] == [(1, 40.0), (2, 70.0), (3, 65.0)]
    assert rows[0].loss_terms == {"loss_ce": 1.0} and rows[0].test_top5 == 90.0
    job = get_job(sessions, job_id)
    assert (job.progress_epoch, job.best_top1, job.best_epoch, job.last_top1) == (3, 70.0, 2, 65.0)


def test_cancel_flag_stops_training(sessions, owner):
    job_id = claimed_job(sessions, owner)
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=60, poll_s=0)
    state = SimpleNamespace(epoch=1)
    reporter.on_fit_start(state)
    reporter.on_batch_end(state, 0, 10, None)  # nothing asked yet
    with sessions() as session:
        crud.request_cancel(session, job_id=job_id)
    with pytest.raises(StopTraining):
        reporter.on_batch_end(state, 1, 10, None)
    assert reporter.stop_cause == "cancel"


def test_heartbeat_is_refreshed_between_epochs(sessions, owner):
    job_id = claimed_job(sessions, owner)
    before = get_job(sessions, job_id).heartbeat_at
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=1e-6, poll_s=0)
    reporter.on_batch_end(SimpleNamespace(epoch=1), 0, 10, None)
    assert get_job(sessions, job_id).heartbeat_at > before


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_is_divergence(sessions, owner, bad):
    job_id = claimed_job(sessions, owner)
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=60)
    state = SimpleNamespace(epoch=3)
    with pytest.raises(DivergedError, match="epoch 3, batch 8"):
        reporter.on_batch_end(state, 7, 10, {"loss_ce": 0.5, "loss_kd": bad})
    with pytest.raises(DivergedError, match="epoch 3"):
        reporter.on_epoch_end(state, epoch(3, 50.0, loss=bad))
    assert metric_rows(sessions, job_id) == []


def test_sigterm_stops_in_fit_and_aborts_preparation(sessions, owner):
    job_id = claimed_job(sessions, owner)
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=60)
    with pytest.raises(Terminated):  # preparing: no batch boundary to wait for
        reporter.on_sigterm(signal.SIGTERM, None)
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=60)
    state = SimpleNamespace(epoch=1)
    reporter.on_fit_start(state)
    reporter.on_sigterm(signal.SIGTERM, None)  # training: stop at the next batch
    with pytest.raises(StopTraining):
        reporter.on_batch_end(state, 0, 10, None)
    assert reporter.stop_cause == "signal"


def test_orphaned_runner_stops(sessions, owner):
    job_id = claimed_job(sessions, owner)
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=60, parent_pid=os.getppid() + 1)
    with pytest.raises(StopTraining):
        reporter.on_batch_end(SimpleNamespace(epoch=1), 0, 10, None)
    assert reporter.stop_cause == "orphaned"


def test_worker_queue_settings(settings):
    from worker.celery_app import make_app, worker_config

    config = worker_config(settings)  # filesystem broker: no disable_prefetch there
    assert config["task_acks_late"] is False and config["worker_prefetch_multiplier"] == 1
    assert config["worker_disable_prefetch"] is False
    assert config["broker_transport_options"]["polling_interval"] == 0.2
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_ignore_result"] is True
    assert config["worker_concurrency"] == settings.worker_concurrency()

    redis = settings.model_copy(update={"broker_url": "redis://127.0.0.1:6379/0"})
    assert worker_config(redis)["worker_disable_prefetch"] is True
    app = make_app(settings)
    app.loader.import_default_modules()
    assert RUN_JOB_TASK in app.tasks


def test_jobs_per_gpu_only_where_a_gpu_is_visible(settings, monkeypatch):
    from worker.celery_app import worker_config

    three = settings.model_copy(update={"jobs_per_gpu": 3})
    real_exists = Path.exists
    for gpu, visible, expected in [(True, None, 3), (True, "0", 3), (True, "", 1),
                                   (False, None, 1)]:  # fmt: skip
        monkeypatch.setattr(
            Path, "exists",
            lambda self, gpu=gpu: gpu if str(self) == "/dev/nvidiactl" else real_exists(self),
        )  # fmt: skip
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert worker_config(three)["worker_concurrency"] == expected


def test_the_worker_process_never_imports_torch(tmp_path):
    # Only the runner subprocess may: the pool process forks, and CUDA must not be live in it.
    import json
    import subprocess
    import sys

    probe = ("import json, sys, worker.celery_app, worker.tasks, worker.supervisor, "
             "worker.reaper, worker.standby; print(json.dumps(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('torch', 'wkd_core', 'torchvision'))))")  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "WKD_DATA_DIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


def test_in_epoch_progress_is_throttled_and_reset_by_each_epoch(sessions, owner):
    job_id = claimed_job(sessions, owner)
    reporter = DatabaseReporter(job_id, sessions, heartbeat_s=60, progress_s=3600)
    state = SimpleNamespace(epoch=1)

    def progress():
        job = get_job(sessions, job_id)
        return job.progress_epoch, job.progress_batch, job.progress_batches

    reporter.on_fit_start(state)
    assert progress() == (0, 0, 0)
    reporter.on_batch_end(state, 0, 4, None)  # within progress_s of the last write: skipped
    assert progress() == (0, 0, 0)
    reporter.on_batch_end(state, 3, 4, None)  # the epoch's last batch is always written
    assert progress() == (0, 4, 4)
    reporter.on_epoch_end(state, epoch(1, 50.0))
    assert progress() == (1, 0, 4)
    reporter.progress_s = 0
    reporter.on_batch_end(state, 0, 4, None)
    assert progress() == (1, 1, 4)


def test_a_database_outage_is_one_warning_and_one_recovery_line(sessions, owner, caplog):
    """Heartbeat, cancel and progress polls that fail during an outage are skipped with one
    warning for the whole outage (not a traceback per poll), and one line when it ends."""
    job_id = claimed_job(sessions, owner)
    down = [True]

    def flaky_sessions():
        if down[0]:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return sessions()

    reporter = DatabaseReporter(job_id, flaky_sessions, heartbeat_s=1e-6, poll_s=0, progress_s=0)
    state = SimpleNamespace(epoch=1)
    with caplog.at_level(logging.INFO, logger="worker"):
        reporter.on_fit_start(state)
        for batch in range(5):  # each batch: a progress write and a heartbeat / cancel check
            reporter.on_batch_end(state, batch, 10, None)
        down[0] = False
        reporter.on_batch_end(state, 5, 10, None)
        reporter.on_batch_end(state, 6, 10, None)
    lines = [r for r in caplog.records if job_id in r.getMessage()]
    assert [(r.levelname, r.exc_info is None) for r in lines] == [
        ("WARNING", True), ("INFO", True)]  # fmt: skip
    assert "database unreachable (OperationalError)" in lines[0].getMessage()
    assert "reachable again" in lines[1].getMessage()
    assert get_job(sessions, job_id).progress_batch == 7  # the writes resumed
