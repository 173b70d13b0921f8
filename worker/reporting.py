"""The runner's training callback: the job's curve, heartbeat and stop checks in the database.

``fit`` calls it like any other :class:`wkd_core.train.Callback`. Per epoch it writes one
``job_metrics`` row (``crud.record_epoch``, which also moves progress, best and last accuracy
and the heartbeat). Between epochs, at most every ``poll_s`` seconds of batches, it refreshes
the heartbeat and reads the cancel flag. At most every ``progress_s`` seconds (and at the last
batch of each epoch) it writes the in-epoch progress, batches done of the total, into the job
row (``crud.record_batch_progress``; ``GET /jobs/{id}/events`` streams it). It stops training
cleanly (:class:`StopTraining`, the last epoch checkpoint stays the resume point) when

- the job's cancel flag is set (``POST /jobs/{id}/cancel``): ``stop_cause == "cancel"``;
- the process got SIGTERM (its supervisor enforcing a cancel or a time limit):
  ``stop_cause == "signal"``;
- its supervisor died (the worker was killed): ``stop_cause == "orphaned"``; the runner then
  hands the job back to the queue itself (``worker.runner``), without using an attempt.

Polls that fail while the database is unreachable are skipped, with one warning per outage
(:class:`worker.common.OutageLog`).

A non-finite loss raises :class:`DivergedError` instead, which ``fit`` does not catch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from service import crud, objectstore, storage
from wkd_core.train import Callback, EpochMetrics, StopTraining, TrainState
from worker.common import OutageLog, SessionFactory, retry_db

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class Terminated(BaseException):  # like KeyboardInterrupt: not an error of the job
    """SIGTERM outside ``fit`` (while the job is being prepared)."""


class DatabaseReporter(Callback):
    """Writes the curve to the database and turns cancel / SIGTERM / orphaning into a stop.

    Args:
        job_id: the job this process runs.
        sessions: session factory of the service database.
        heartbeat_s: refresh ``jobs.heartbeat_at`` at least this often while batches run.
        poll_s: read the cancel flag at most this often between epoch ends.
        parent_pid: the supervisor's pid; a different ``os.getppid()`` means it died.
        db_retry_s: retry the epoch's metrics write this long through a database outage
            (the epoch's row must not be lost; the heartbeat and cancel checks just skip).
        progress_s: write the in-epoch progress at most this often.
    """

    def __init__(
        self,
        job_id: str,
        sessions: SessionFactory,
        *,
        heartbeat_s: float,
        poll_s: float = 2.0,
        parent_pid: int | None = None,
        db_retry_s: float = 0.0,
        progress_s: float = 1.0,
    ) -> None:
        self.job_id = job_id
        self.db_retry_s = db_retry_s
        self.sessions = sessions
        self.heartbeat_s = heartbeat_s
        self.poll_s = min(poll_s, heartbeat_s)
        self.parent_pid = os.getppid() if parent_pid is None else parent_pid
        self.stop_cause: str | None = None
        self.in_fit = False
        self._last_poll = self._last_beat = time.monotonic()
        self.progress_s = progress_s
        self._last_progress = float("-inf")
        self._outage = OutageLog(job_id, "training goes on; progress and heartbeats resume")

    # ------------------------------------------------------------------ fit hooks
    def on_fit_start(self, state: TrainState) -> None:
        self.in_fit = True
        self._report_progress(0, 0)  # a resumed attempt starts its epoch from zero
        self._check(force=True)

    def on_batch_end(
        self,
        state: TrainState,
        batch_index: int,
        num_batches: int,
        loss_terms: dict[str, float] | None,
    ) -> None:
        if loss_terms is not None:
            _require_finite(loss_terms, f"epoch {state.epoch}, batch {batch_index + 1}")
        now = time.monotonic()
        if now - self._last_progress >= self.progress_s or batch_index + 1 == num_batches:
            self._report_progress(batch_index + 1, num_batches)
        self._check()

    def on_epoch_end(self, state: TrainState, metrics: EpochMetrics) -> None:
        row = metrics.to_dict()
        checked = {"train_loss": row["train_loss"], "test_loss": row["test_loss"]}
        _require_finite({**checked, **row["loss_terms"]}, f"epoch {metrics.epoch}")
        retry_db(self.sessions, lambda session: crud.record_epoch(
            session, job_id=self.job_id, metrics=row),
            what=f"job {self.job_id}: epoch {metrics.epoch} metrics", budget_s=self.db_retry_s,
        )  # fmt: skip
        self._last_beat = time.monotonic()  # record_epoch refreshed the heartbeat
        self._check(force=True)

    def on_fit_end(self, state: TrainState, result: Any) -> None:
        self.in_fit = False

    def _report_progress(self, batch: int, batches: int) -> None:
        """Write batches done / total of the current epoch (a failed write is skipped)."""
        self._last_progress = time.monotonic()
        try:
            with self.sessions() as session:
                crud.record_batch_progress(
                    session, job_id=self.job_id, batch=batch, batches=batches
                )
        except SQLAlchemyError as error:  # skipped: the next write carries newer progress
            self._outage.failed(error)
            return
        self._outage.answered()

    # ------------------------------------------------------------------- stopping
    def on_sigterm(self, signum: int, _frame: Any) -> None:
        """SIGTERM handler: stop at the next batch, or at once while preparing."""
        self.stop_cause = self.stop_cause or "signal"
        if not self.in_fit:
            raise Terminated(f"signal {signum}")

    def cancel_requested(self) -> bool:
        with self.sessions() as session:
            return crud.is_cancel_requested(session, job_id=self.job_id)

    def _check(self, *, force: bool = False) -> None:
        if self.stop_cause is None and os.getppid() != self.parent_pid:
            log.warning("supervisor %s is gone; stopping job %s", self.parent_pid, self.job_id)
            self.stop_cause = "orphaned"
        if self.stop_cause is not None:
            raise StopTraining(self.stop_cause)
        now = time.monotonic()
        if not force and now - self._last_poll < self.poll_s:
            return
        self._last_poll = now
        try:
            with self.sessions() as session:
                if now - self._last_beat >= self.heartbeat_s:
                    crud.heartbeat(session, job_id=self.job_id)
                    self._last_beat = now
                cancelled = crud.is_cancel_requested(session, job_id=self.job_id)
        except SQLAlchemyError as error:  # a database hiccup must not kill hours of training
            self._outage.failed(error)
            return
        self._outage.answered()
        if cancelled:
            self.stop_cause = "cancel"
            raise StopTraining("cancel")


class PublishCheckpoint(Callback):
    """After every epoch, copy the job's ``checkpoint.pt`` to a remote object store, so that a
    worker on any host can resume the job there (nothing to do with the local store)."""

    def __init__(self, store: objectstore.ObjectStore, job_id: str, path) -> None:
        self.store, self.path = store, path
        self.key = storage.artifact_relpath(job_id, path.name)

    def on_epoch_end(self, state: TrainState, metrics: EpochMetrics) -> None:
        if not self.store.is_local and self.path.is_file():
            self.store.put_file("artifacts", self.key, self.path)


def _require_finite(values: dict[str, float], where: str) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise DivergedError(f"training diverged at {where}: {terms}")
