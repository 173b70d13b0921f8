"""The reaper: re-queue jobs whose worker stopped beating (service-notes §3.7).

A thread in the worker's main process calls :func:`reap_once` every
``settings.reaper_interval_s`` seconds (0 turns it off). ``crud.reap_stale_jobs`` decides, per
job silent for ``settings.stale_after_s``: back to ``queued`` with ``attempt + 1`` while
attempts remain (the next run resumes from ``checkpoint.pt`` in the job's artifact folder),
``cancelled`` if it was being cancelled, else ``failed`` / ``worker_lost``. It also returns
queued jobs whose enqueue never reached the broker. This module sends each returned id to the
queue. The updates are guarded compare-and-sets, so reapers in several workers (or in the API)
can run side by side.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from service import crud, routing
from service.queue import RUN_JOB_TASK
from service.settings import Settings
from worker.common import SessionFactory, session_factory

log = logging.getLogger(__name__)

_thread: ReaperThread | None = None


def reap_once(
    sessions: SessionFactory, *, stale_after_s: float, enqueue: Callable[[str], None]
) -> list[str]:
    """One pass: re-queue or fail stale jobs and send the re-queued ids; returns them."""
    with sessions() as session:
        job_ids = crud.reap_stale_jobs(session, stale_after_s=stale_after_s)
        for job_id in job_ids:
            enqueue(job_id)
            crud.mark_enqueued(session, job_id=job_id)
            log.warning("reaper: job %s re-queued", job_id)
    return job_ids


class ReaperThread(threading.Thread):
    """Calls :func:`reap_once` periodically until :meth:`stop`."""

    def __init__(
        self, sessions: SessionFactory, *, interval_s: float, stale_after_s: float, enqueue
    ) -> None:
        super().__init__(name="wkd-reaper", daemon=True)
        self.sessions, self.enqueue = sessions, enqueue
        self.interval_s, self.stale_after_s = interval_s, stale_after_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                reap_once(self.sessions, stale_after_s=self.stale_after_s, enqueue=self.enqueue)
            except Exception:  # keep reaping after a database or broker hiccup
                log.exception("reaper pass failed")

    def stop(self) -> None:
        self._stop_event.set()


def start_reaper(settings: Settings, app) -> ReaperThread | None:
    """Start the worker's reaper thread (idempotent); ``None`` when turned off."""
    global _thread
    if settings.reaper_interval_s <= 0 or (_thread is not None and _thread.is_alive()):
        return _thread

    def enqueue(job_id: str) -> None:
        app.send_task(RUN_JOB_TASK, args=[job_id], queue=routing.job_queue(settings, job_id))

    _thread = ReaperThread(
        session_factory(settings), interval_s=settings.reaper_interval_s,
        stale_after_s=settings.stale_after_s, enqueue=enqueue,
    )  # fmt: skip
    _thread.start()
    return _thread


def stop_reaper() -> None:
    if _thread is not None:
        _thread.stop()
