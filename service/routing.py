"""Which queue a job goes to, by the number of GPUs it asks for (``training.gpus``).

Queues are named by GPU count: ``<queue_name>`` for one GPU and ``<queue_name>-gpus-N`` for
N > 1. A worker with ``worker_gpus`` = G devices consumes every queue of N ≤ G (it can run
any job that fits on it), so a job waits only for a worker big enough. The API knows the
largest job a worker can take from ``max_job_gpus`` (set it to the largest ``worker_gpus`` of
the deployment) and refuses bigger ones with 422 at submission. See docs/deploy.md.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from service.settings import Settings

_engines: dict[tuple[int, str], Any] = {}
_lock = threading.Lock()


def queue_for(settings: Settings, gpus: int) -> str:
    """The queue of a job that needs ``gpus`` devices."""
    if gpus < 1:
        raise ValueError(f"a job needs at least one GPU, not {gpus}")
    return settings.queue_name if gpus == 1 else f"{settings.queue_name}-gpus-{gpus}"


def worker_queues(settings: Settings) -> list[str]:
    """The queues a worker with ``settings.worker_gpus`` devices consumes."""
    return [queue_for(settings, n) for n in range(1, settings.worker_gpus + 1)]


def known_queues(settings: Settings) -> list[str]:
    """Every queue a process with these settings may send to or consume from."""
    largest = max(settings.max_job_gpus, settings.worker_gpus)
    return [queue_for(settings, n) for n in range(1, largest + 1)]


def spec_gpus(spec: dict[str, Any]) -> int:
    """``training.gpus`` of a stored spec (1 when absent: specs stored before it existed)."""
    return int((spec.get("training") or {}).get("gpus", 1) or 1)


def gpu_errors(spec: Any, settings: Settings) -> list[tuple[tuple[str, ...], str, int]]:
    """``[(loc, message, value)]`` when the job asks for more GPUs than any worker has, or
    for a global batch that its GPUs cannot share evenly."""
    gpus, batch = spec.training.gpus, spec.training.batch_size
    if gpus > settings.max_job_gpus:
        message = (f"no worker of this service has {gpus} GPUs; the most a job may ask for "
                   f"is {settings.max_job_gpus}")  # fmt: skip
        return [(("training", "gpus"), message, gpus)]
    if batch % gpus:
        message = f"the global batch must be a multiple of training.gpus ({gpus})"
        return [(("training", "batch_size"), message, batch)]
    return []


def job_queue(settings: Settings, job_id: str) -> str:
    """The queue of a stored job (no database read while every job is one GPU)."""
    if known_queues(settings) == [settings.queue_name]:
        return settings.queue_name
    return queue_for(settings, job_gpus(settings, job_id))


def job_gpus(settings: Settings, job_id: str) -> int:
    """``training.gpus`` of a stored job, read from the database (1 if the job is gone)."""
    from sqlalchemy import select

    from service.db import service_engine
    from service.tables import Job

    key = (os.getpid(), settings.database_url)
    with _lock:
        if key not in _engines:
            _engines[key] = service_engine(settings)
        engine = _engines[key]
    with engine.connect() as connection:
        spec = connection.execute(select(Job.spec).where(Job.id == job_id)).scalar()
    return spec_gpus(spec or {})
