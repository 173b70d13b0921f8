"""The worker's Celery app: the API's queue settings plus the worker-only ones.

Start one per GPU (or one on a laptop); docker-compose.yml has the command line::

    celery -A worker.celery_app worker --pool prefork --loglevel INFO

(no ``--concurrency``: ``WKD_JOBS_PER_GPU`` jobs at once where the worker sees a GPU, else 1).

Without ``--queues`` it consumes the queues of the jobs its ``WKD_WORKER_GPUS`` devices can
run (``wkd``, ``wkd-gpus-2`` …; service/routing.py).

The app is built from :func:`service.queue.celery_config`, so API and worker agree on broker,
queue and serializer. The worker side adds (DESIGN.md §5, service-notes §3.1):

- early acknowledgement (``task_acks_late=False``): a message is never redelivered behind a
  running job's back (the Redis visibility-timeout duplicate); a job whose worker dies is
  re-queued by the database reaper instead, with a bounded attempt count;
- ``worker_prefetch_multiplier=1`` and, on Redis, ``worker_disable_prefetch=True``, so an idle
  worker takes the next job instead of a busy one hoarding it (kombu's filesystem transport
  does not support the latter; the embedded default has a single worker anyway);
- one task at a time per worker process; the task itself is a thin, torch-free supervisor of
  a fresh ``python -m worker.runner`` subprocess, so this process never touches CUDA and
  forking it is safe;
- on the filesystem broker, a 0.2 s polling interval instead of kombu's 1 s.

Signals: each pool process starts a warm spare runner (:mod:`worker.standby`), and the task
makes it take SIGTERM as "stop the job and hand it back" (:mod:`worker.shutdown`); the main
process starts the reaper (:mod:`worker.reaper`) when the worker is ready, forwards SIGTERM
to its pool on a warm shutdown, and the ``worker`` loggers log at
``settings.worker_log_level`` whatever Celery's ``--loglevel`` is (one line per claim,
start, epoch and end of a job).
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import (
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from service import routing
from service.queue import celery_config
from service.settings import Settings, get_settings

FILESYSTEM_POLL_S = 0.2
log = logging.getLogger("worker.celery_app")


def worker_config(settings: Settings) -> dict:
    """The shared queue settings with the worker-side values pinned."""
    config = celery_config(settings)
    config.update(
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        # Only the Redis transport implements it; elsewhere Celery would log a warning.
        worker_disable_prefetch=settings.broker_url.startswith(("redis", "rediss")),
        worker_concurrency=settings.worker_concurrency(),  # K jobs share one GPU
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    if settings.broker_url.startswith("filesystem"):
        # The folder is polled (kombu's default: every second); a listing is cheap.
        config["broker_transport_options"] = {
            **config["broker_transport_options"], "polling_interval": FILESYSTEM_POLL_S,
        }  # fmt: skip
    return config


def make_app(settings: Settings) -> Celery:
    """A Celery app with the job task registered (``worker.tasks``)."""
    app = Celery("wkd_worker", include=["worker.tasks"])
    app.conf.update(**worker_config(settings))
    return app


app = make_app(get_settings())


@celeryd_after_setup.connect
def _consume_own_queues(sender=None, instance=None, **_kwargs) -> None:
    """Without ``--queues``, consume the queues of the jobs this worker's GPUs can run
    (``WKD_WORKER_GPUS``; service/routing.py). Every queue stays declared, so the worker's
    reaper can re-send any job to its own queue."""
    queues = instance.app.amqp.queues
    if set(queues.consume_from) == set(routing.known_queues(get_settings())):
        queues.select(routing.worker_queues(get_settings()))


@worker_init.connect
def _make_folders(sender=None, **_kwargs) -> None:
    get_settings().ensure_dirs()  # the filesystem broker's folders, artifacts, cache
    # Celery's default --loglevel is WARNING; the job lines are INFO and operators need them.
    logging.getLogger("worker").setLevel(get_settings().worker_log_level.upper())


@worker_process_init.connect
def _start_standby(**_kwargs) -> None:
    # In each prefork pool process: the first job's runner is warm too (worker.standby).
    from worker.standby import standby

    standby.start(get_settings())


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    from worker.reaper import start_reaper

    start_reaper(get_settings(), app)
    log.info("worker ready: queue %s, reaper every %s s", get_settings().queue_name,
             get_settings().reaper_interval_s)  # fmt: skip


@worker_shutting_down.connect
def _drain_pool(sender=None, how=None, **_kwargs) -> None:
    # Runs in the main process's signal handler: a few os.kill calls, nothing that blocks.
    if how == "Warm":
        from worker.shutdown import forward_to_pool

        forward_to_pool()


@worker_shutdown.connect
def _stop_reaper(sender=None, **_kwargs) -> None:
    from worker.reaper import stop_reaper

    stop_reaper()
