"""The Celery task: ``worker.tasks.run_job(job_id)``, enqueued by the API by name.

The message carries a job id only, and the id is a hint: the task claims the *oldest* queued
job (:func:`worker.supervisor.supervise_next_job`, a compare-and-set), so jobs start in the
order they were submitted, and a job whose own message was lost runs on the next message
that arrives (docs/reliability.md). A message that finds no queued job (a duplicate, a
re-send, a job cancelled while queued) returns at once. The task then supervises a fresh
runner subprocess to the end (the warm spare of :mod:`worker.standby` when one is waiting).

When the job goes back to the queue (the worker is shutting down, or the attempt was killed
and is retried), the task sends a new message for it before it returns; if that fails, the
reaper sends one. The task never raises for a job's own failure: that is recorded on the job
row, and a raised exception would only be logged by Celery (early acknowledgement: there is
no broker redelivery).
"""

from __future__ import annotations

import logging

from celery import shared_task

from service import claims, routing
from service.queue import RUN_JOB_TASK
from service.settings import get_settings
from service.tables import TERMINAL
from worker import shutdown
from worker.common import session_factory
from worker.supervisor import Outcome, supervise_next_job

log = logging.getLogger("worker.supervisor")


@shared_task(name=RUN_JOB_TASK, ignore_result=True, acks_late=False)
def run_job(job_id: str) -> str:
    """Run the oldest queued job; returns its final status (``skipped``: none was queued)."""
    # Here, not in worker_process_init: billiard resets SIGTERM to its own exit handler after
    # that signal has run, so only the task can put the hand-back handler in place.
    shutdown.install_pool_handler()
    settings = get_settings()
    outcome = supervise_next_job(settings, hint=job_id, warm=True)
    if outcome.needs_message:
        send_again(outcome)
    elif outcome.status in {s.value for s in TERMINAL}:
        wake_held_job(outcome)
    return outcome.status


def send_again(outcome: Outcome) -> None:
    """A new message for a job that is queued again (guarded: sent once)."""
    _send(outcome.job_id, previous=None, what="send it to the queue again")


def wake_held_job(outcome: Outcome) -> None:
    """The job ended: a message for the oldest queued job of its key when the key is now
    below its running limit. That job may have been held back by the limit while its own
    message was taken (and dropped) by an idle worker; without this it would wait for the
    reaper (``requeue_after_s``). A spare message, if its message still waits, is skipped."""
    settings = get_settings()
    try:
        with session_factory(settings)() as session:
            limit = settings.max_running_jobs_per_key
            held = claims.held_job_to_wake(
                session, ended_job_id=outcome.job_id, max_running_per_key=limit
            )
    except Exception:  # the reaper sends it after requeue_after_s
        log.exception("job %s ended: could not look for a held-back job", outcome.job_id)
        return
    if held is not None:
        _send(held[0], previous=held[1], what="wake it after its key's job ended")


def _send(job_id: str, *, previous, what: str) -> None:
    settings = get_settings()
    try:
        with session_factory(settings)() as session:
            if not claims.mark_sending(session, job_id=job_id, previous=previous):
                return  # claimed, cancelled or re-sent by a reaper meanwhile
        run_job.apply_async(args=[job_id], queue=routing.job_queue(settings, job_id))
    except Exception:  # the reaper re-sends it after requeue_after_s
        log.exception("job %s: could not %s", job_id, what)
