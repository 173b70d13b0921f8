"""The Celery task: ``worker.tasks.run_job(job_id)``, enqueued by the API by name.

The message carries the job id only; everything else is read from the database, the
source of truth. The body is :func:`worker.supervisor.supervise_job`: claim the row with a
compare-and-set (a second delivery of the same id, or a job cancelled while queued, updates
zero rows and returns at once), then supervise a fresh runner subprocess to the end (the warm
spare of :mod:`worker.standby` when one is waiting). The task
never raises for a job's own failure: that is recorded on the job row, and a raised exception
would only be logged by Celery (early acknowledgement: there is no broker redelivery).
"""

from __future__ import annotations

from celery import shared_task

from service.queue import RUN_JOB_TASK
from service.settings import get_settings
from worker.supervisor import supervise_job


@shared_task(name=RUN_JOB_TASK, ignore_result=True, acks_late=False)
def run_job(job_id: str) -> str:
    """Run one job; returns its final status (``skipped`` when it was not claimable)."""
    return supervise_job(job_id, settings=get_settings(), warm=True).status
