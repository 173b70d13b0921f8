"""The Celery client of the API and the queue settings the worker shares with it.

The API enqueues a job by task *name* with the job id as the only argument, so it never
imports worker code (or torch). ``worker/celery_app.py`` builds its app from the same
:func:`celery_config`, so both sides agree on the broker, the queue and the serializer.

Queue settings (DESIGN.md §5, service-notes §3.1): early acknowledgement, one message per
worker process (prefetch multiplier 1 plus ``worker_disable_prefetch``, so a second job never
waits behind a running one while another GPU idles), JSON only, results ignored because the
database is the source of truth. A lost job is re-queued by the reaper, not by the broker.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from service import routing
from service.settings import Settings

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

    def purge(self) -> int:
        """Drop every message waiting in the queue (benchmarks, tests)."""
        with self.app.connection_for_write() as connection:
            return connection.default_channel.queue_purge(self.settings.queue_name) or 0
