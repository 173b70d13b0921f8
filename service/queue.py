"""The Celery client of the API and the queue settings the worker shares with it.

The API enqueues a job by task *name* with the job id as the only argument, so it never
imports worker code (or torch). ``worker/celery_app.py`` builds its app from the same
:func:`celery_config`, so both sides agree on the broker, the queue and the serializer.

Queue settings (DESIGN.md §5, service-notes §3.1): early acknowledgement, one message per
worker process (prefetch multiplier 1 plus ``worker_disable_prefetch``, so a second job never
waits behind a running one while another GPU idles), JSON only, results ignored because the
database is the source of truth. A lost job is re-queued by the reaper, not by the broker.

A message is a wake-up, not a job: the worker that receives one claims the oldest queued job
(``service.claims.claim_next_job``). :func:`reap_and_resend` is the reaper pass that the API
and every worker run: it re-queues jobs whose worker stopped beating and sends new messages
for queued jobs whose message was lost, only as many as the broker lacks, so that a lost
message costs at most ``requeue_after_s`` plus one reaper interval and messages never pile
up behind a long job (docs/reliability.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from service import routing
from service.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "worker.tasks.run_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration (``app.conf.update(**celery_config(settings))``)."""
    from kombu import Queue

    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": settings.broker_transport_options(),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        "worker_concurrency": 1,
        "task_default_queue": settings.queue_name,
        # One queue per GPU count (service/routing.py); a worker narrows this to its own.
        "task_queues": tuple(Queue(q, routing_key=q) for q in routing.known_queues(settings)),
        "task_create_missing_queues": False,
        "task_routes": {RUN_JOB_TASK: {"queue": settings.queue_name}},
    }


def make_celery(settings: Settings, main: str = "wkd"):
    """A Celery app configured from ``settings`` (no tasks registered: a client)."""
    from celery import Celery

    settings.ensure_dirs()
    app = Celery(main)
    app.conf.update(**celery_config(settings))
    return app


@lru_cache(maxsize=8)
def _client(settings_json: str):
    return make_celery(Settings.model_validate_json(settings_json))


class Enqueuer:
    """Callable that hands a job id to the broker: ``Enqueuer(settings)("job_…")``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = _client(settings.model_dump_json())

    def __call__(self, job_id: str) -> None:
        """Send to the queue of the job's GPU count (service/routing.py)."""
        queue = routing.job_queue(self.settings, job_id)
        self.app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)

    def waiting(self, gpus: int = 1) -> int:
        """How many messages wait in the queue of ``gpus``-GPU jobs (not those a worker
        already holds)."""
        return waiting_messages(self.app, routing.queue_for(self.settings, gpus))

    def purge(self) -> int:
        """Drop every message waiting in the queue (benchmarks, tests)."""
        with self.app.connection_for_write() as connection:
            return connection.default_channel.queue_purge(self.settings.queue_name) or 0


def waiting_messages(app, queue_name: str) -> int:
    """Messages waiting in ``queue_name`` on ``app``'s broker (Redis or the filesystem)."""
    from kombu.exceptions import ChannelError

    with app.connection_for_write() as connection:
        try:
            declared = connection.default_channel.queue_declare(queue=queue_name, passive=True)
        except ChannelError:  # Redis drops an empty list: no key, no messages
            return 0
    return declared.message_count


def reap_and_resend(
    sessions: Callable,
    *,
    stale_after_s: float,
    requeue_after_s: float,
    enqueue: Callable[[str], None],
    waiting: Callable[[int], int] | None = None,
) -> list[str]:
    """One reaper pass; returns the ids it sent to the broker, oldest job first.

    1. Jobs whose worker stopped beating are re-queued, failed or cancelled
       (``crud.reap_stale_jobs``).
    2. Queued jobs that may lack a message (``claims.resend_candidates``) get one, but only
       as many as their queue lacks: the jobs queued for a GPU count minus ``waiting(gpus)``,
       the messages waiting in that queue (service/routing.py). A message that waits in the
       broker wakes a worker that claims the oldest job of its queue, whichever id it names.
       ``waiting`` is ``None`` for a client that cannot count (then every candidate is sent;
       extra messages find no queued job and are skipped by the worker).
    3. Each send is guarded by a compare-and-set on ``enqueued_at``, so two reapers running
       at once send once; a failed send is undone and retried on the next pass.
    """
    from service import claims, crud

    with sessions() as session:
        crud.reap_stale_jobs(session, stale_after_s=stale_after_s)
        candidates = claims.resend_candidates(session, requeue_after_s=requeue_after_s)
        gpus_of = claims.queued_gpus(session) if candidates else {}
    if not candidates:
        return []
    lacking: dict[int, int] = {}
    for gpus in gpus_of.values():
        lacking[gpus] = lacking.get(gpus, 0) + 1
    if waiting is not None:
        lacking = {gpus: count - waiting(gpus) for gpus, count in lacking.items()}
    chosen = []
    for job_id, previous in candidates:
        gpus = gpus_of.get(job_id, 1)
        if lacking.get(gpus, 0) > 0:
            lacking[gpus] -= 1
            chosen.append((job_id, previous))
    sent: list[str] = []
    for job_id, previous in chosen:
        with sessions() as session:
            if not claims.mark_sending(session, job_id=job_id, previous=previous):
                continue  # another reaper sent it, or it was claimed or cancelled meanwhile
            try:
                enqueue(job_id)
            except Exception:
                claims.unmark_sending(session, job_id=job_id, previous=previous)
                raise
        log.warning("job %s had no message in the broker; sent one", job_id)
        sent.append(job_id)
    return sent
