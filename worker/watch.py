"""The supervision loop around one runner process (see :mod:`worker.supervisor`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time

from sqlalchemy.exc import SQLAlchemyError

from service import crud
from service.tables import Job, JobStatus
from worker import shutdown
from worker.common import OutageLog

log = logging.getLogger("worker.supervisor")


class Watch:
    """The supervision loop around one runner process."""

    def __init__(self, process, job_id, worker_id, sessions, settings, poll_s, kill_grace_s):
        self.process, self.job_id, self.worker_id = process, job_id, worker_id
        self.sessions, self.settings = sessions, settings
        self.poll_s, self.kill_grace_s = poll_s, kill_grace_s
        self.stop_reason: str | None = None  # cancel | time_limit | lost | shutdown
        self._term_at: float | None = None
        self._epoch_logged = 0
        self._outage = OutageLog(job_id, "the runner goes on, retrying")

    def run(self) -> int:
        started = last_beat = time.monotonic()
        try:
            while True:
                try:
                    return self.process.wait(timeout=self.poll_s)
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                beat = now - last_beat >= self.settings.heartbeat_seconds
                if beat:
                    last_beat = now
                job = self._poll(beat)
                self._log_progress(job)
                if self.stop_reason is None:
                    self.stop_reason = self._stop_reason(job, now - started)
                    if self.stop_reason is not None:
                        self._terminate(now)
                elif now - self._term_at >= self.kill_grace_s:
                    log.warning("job %s: runner still running %.0f s after SIGTERM; killing it",
                                self.job_id, self.kill_grace_s)  # fmt: skip
                    self._kill_group()
        finally:
            self._kill_group()  # stray DataLoader workers, or a runner we were interrupted in

    def _poll(self, beat: bool) -> Job | None:
        try:
            with self.sessions() as session:
                if beat:
                    crud.heartbeat(session, job_id=self.job_id)
                job = crud.get_job(session, self.job_id)
        except SQLAlchemyError as error:  # one line per outage, not a traceback per poll
            self._outage.failed(error)
            return None
        self._outage.answered()
        return job

    def _log_progress(self, job: Job | None) -> None:
        if job is None or job.progress_epoch <= self._epoch_logged:
            return
        self._epoch_logged = job.progress_epoch
        top1 = "" if job.last_top1 is None else f", test top-1 {job.last_top1:.2f}%"
        log.info("job %s: epoch %s/%s%s", self.job_id, job.progress_epoch, job.progress_total,
                 top1)  # fmt: skip

    def _stop_reason(self, job: Job | None, elapsed: float) -> str | None:
        if elapsed > self.settings.job_time_limit_s:
            return "time_limit"
        if shutdown.draining.is_set():
            return "shutdown"
        if job is None or job.is_terminal:
            return None  # unreadable now, or the runner already finished it and is exiting
        if job.worker_id != self.worker_id or job.status == JobStatus.queued:
            return "lost"
        if job.cancel_requested_at is not None:
            return "cancel"
        return None

    def _terminate(self, now: float) -> None:
        log.info("job %s: stopping the runner (%s)", self.job_id, self.stop_reason)
        self._term_at = now
        # The runner only (not its DataLoader workers): it stops at the next batch and exits.
        _signal(lambda: os.kill(self.process.pid, signal.SIGTERM))

    def _kill_group(self) -> None:
        _signal(lambda: os.killpg(self.process.pid, signal.SIGKILL))


def _signal(send) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send()
