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
    """The API's producer app. On Redis its sockets time out after ``broker_timeout_s``:
    redis-py waits for ever by default, so a frozen Redis (or one behind a network that
    drops packets) would hang ``POST /jobs`` in kombu's publish."""
    settings = Settings.model_validate_json(settings_json)
    app = make_celery(settings)
    if settings.broker_url.startswith(("redis://", "rediss://")):
        timeout = settings.broker_timeout_s
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
    return app


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
    max_running_per_key: int = 0,
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

    Jobs held back by their key's running limit (``max_running_per_key``, see
    ``claims.claim_next_job``) are neither counted nor sent: no worker may claim them yet.
    Once the key is below its limit they count again, and one whose last message is older
    than ``requeue_after_s`` is sent on the next pass (the worker that ended the key's job
    sends one at once, ``worker.tasks``).
    """
    from service import claims, crud

    limit = {"max_running_per_key": max_running_per_key}
    with sessions() as session:
        crud.reap_stale_jobs(session, stale_after_s=stale_after_s)
        candidates = claims.resend_candidates(session, requeue_after_s=requeue_after_s, **limit)
        gpus_of = claims.queued_gpus(session, **limit) if candidates else {}
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


class ReaperPasses:
    """Runs reaper passes one after another and logs how they fail, for the API's loop and
    the worker's reaper thread.

    A pass fails on every interval while the database or the broker is away. Such an outage
    is logged as one warning line when it begins (the dependency and the error's first
    line) and one when the passes work again (how many failed), not as a traceback per
    pass. Any other error is unexpected and keeps its traceback, every time.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self.outage: str | None = None  # "database" or "broker" while passes fail for it
        self.failed = 0  # passes failed during the current outage

    def run(self, reap: Callable[[], list[str]]) -> list[str]:
        """One pass; the ids it sent, or none when it failed (logged)."""
        try:
            ids = reap()
        except Exception as error:
            self._failed(error)
            return []
        if self.outage is not None:
            self.log.warning("reaper: the %s is back; passes work again after %d failed",
                             self.outage, self.failed)  # fmt: skip
            self.outage, self.failed = None, 0
        return ids

    def _failed(self, error: Exception) -> None:
        which = unavailable_dependency(error)
        if which is None:
            self.log.error("reaper pass failed", exc_info=error)
            return
        if which != self.outage:
            self.log.warning("reaper: the %s is unavailable (%s); passes are retried every "
                             "interval until it is back", which, first_line(error))  # fmt: skip
            self.outage, self.failed = which, 0
        self.failed += 1


def unavailable_dependency(error: BaseException) -> str | None:
    """``"database"`` or ``"broker"`` when ``error`` says that one cannot be reached."""
    from kombu.exceptions import OperationalError as BrokerError

    from service.db import is_unreachable

    if is_unreachable(error):
        return "database"
    if isinstance(error, (BrokerError, ConnectionError, *_redis_errors())):
        return "broker"
    return None


def _redis_errors() -> tuple[type[BaseException], ...]:
    """redis-py's connection errors (kombu wraps most, not one raised mid-command)."""
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # no Redis client: the filesystem broker
        return ()
    return (RedisConnectionError, RedisTimeoutError)


def first_line(error: BaseException) -> str:
    """The error's class and first line (the driver's error for a database error)."""
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0][:200]}" if lines else type(original).__name__
