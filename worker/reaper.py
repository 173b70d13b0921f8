"""The reaper: re-queue jobs whose worker stopped beating, re-send lost messages
(service-notes §3.7, docs/reliability.md).

A thread in the worker's main process calls :func:`reap_once` every
``settings.reaper_interval_s`` seconds (0 turns it off); the API runs the same pass. It is
:func:`service.queue.reap_and_resend`: ``crud.reap_stale_jobs`` decides, per job silent for
``settings.stale_after_s``: back to ``queued`` with ``attempt + 1`` while attempts remain (the
next run resumes from ``checkpoint.pt`` in the job's artifact folder), ``cancelled`` if it was
being cancelled, else ``failed`` / ``worker_lost``. Then every queued job whose message may be
lost (its worker died holding it, Redis restarted without persistence, a claim failed while
the database was away) gets a new one once its last send is ``requeue_after_s`` old, as long
as fewer messages wait in the broker than jobs are queued. The updates are guarded
compare-and-sets, so reapers in several workers and in the API can run side by side.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from service import routing
from service.queue import RUN_JOB_TASK, ReaperPasses, reap_and_resend, waiting_messages
from service.settings import Settings
from worker.common import SessionFactory, session_factory

log = logging.getLogger(__name__)

_thread: ReaperThread | None = None


def reap_once(
    sessions: SessionFactory,
    *,
    stale_after_s: float,
    enqueue: Callable[[str], None],
    requeue_after_s: float = 60.0,
    waiting: Callable[[int], int] | None = None,
    max_running_per_key: int = 0,
) -> list[str]:
    """One pass: re-queue or fail stale jobs, re-send lost messages; returns the ids sent."""
    return reap_and_resend(
        sessions, stale_after_s=stale_after_s, requeue_after_s=requeue_after_s,
        enqueue=enqueue, waiting=waiting, max_running_per_key=max_running_per_key,
    )  # fmt: skip


class ReaperThread(threading.Thread):
    """Calls :func:`reap_once` periodically until :meth:`stop`."""

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        interval_s: float,
        stale_after_s: float,
        enqueue,
        requeue_after_s: float = 60.0,
        waiting=None,
        max_running_per_key: int = 0,
    ) -> None:
        super().__init__(name="wkd-reaper", daemon=True)
        self.sessions, self.enqueue, self.waiting = sessions, enqueue, waiting
        self.interval_s, self.stale_after_s = interval_s, stale_after_s
        self.requeue_after_s = requeue_after_s
        self.max_running_per_key = max_running_per_key
        self._stop_event = threading.Event()

    def run(self) -> None:
        # keeps reaping after a database or broker outage, logged once (ReaperPasses)
        passes = ReaperPasses(log)
        while not self._stop_event.wait(self.interval_s):
            passes.run(self.reap)

    def reap(self) -> list[str]:
        return reap_once(
            self.sessions, stale_after_s=self.stale_after_s, enqueue=self.enqueue,
            requeue_after_s=self.requeue_after_s, waiting=self.waiting,
            max_running_per_key=self.max_running_per_key,
        )  # fmt: skip

    def stop(self) -> None:
        self._stop_event.set()


def start_reaper(settings: Settings, app) -> ReaperThread | None:
    """Start the worker's reaper thread (idempotent); ``None`` when turned off."""
    global _thread
    if settings.reaper_interval_s <= 0 or (_thread is not None and _thread.is_alive()):
        return _thread

    def enqueue(job_id: str) -> None:
        app.send_task(RUN_JOB_TASK, args=[job_id], queue=routing.job_queue(settings, job_id))

    def waiting(gpus: int) -> int:
        return waiting_messages(app, routing.queue_for(settings, gpus))

    _thread = ReaperThread(
        session_factory(settings), interval_s=settings.reaper_interval_s,
        stale_after_s=settings.stale_after_s, enqueue=enqueue,
        requeue_after_s=settings.requeue_after_s, waiting=waiting,
        max_running_per_key=settings.max_running_jobs_per_key,
    )  # fmt: skip
    _thread.start()
    return _thread


def stop_reaper() -> None:
    if _thread is not None:
        _thread.stop()
