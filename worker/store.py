"""The object store as the worker uses it: every call retried through an outage of the store.

A job publishes its checkpoint after every epoch and its artifacts at the end, and fetches
teachers and checkpoints before it starts. With the ``s3`` backend a store that restarts or
stops answering for a while would fail the job on the first call that meets it
(:class:`service.objectstore.StoreUnavailableError`, raised once boto3's own attempts are
spent). Here each call is retried like a database write, with back-off, for
``settings.store_retry_s``; a missing object or a refused request is not retried. The calls
are idempotent (an upload replaces the object, a fetch writes a fresh local copy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from service import objectstore
from service.objectstore import Area, ObjectStore, StoreUnavailableError
from service.settings import Settings
from worker.common import retry_outage

T = TypeVar("T")


def worker_store(settings: Settings) -> ObjectStore:
    """``settings``' store; a remote one with its calls retried through an outage."""
    store = objectstore.open_store(settings)
    return store if store.is_local else RetryingStore(store, budget_s=settings.store_retry_s)


class RetryingStore:
    """An :class:`~service.objectstore.ObjectStore` whose calls are retried while the store
    is unavailable, for up to ``budget_s`` seconds each."""

    def __init__(self, store: ObjectStore, *, budget_s: float) -> None:
        self.store, self.budget_s = store, budget_s
        self.is_local = store.is_local

    def put_file(self, area: Area, key: str, path: Path) -> None:
        self._retried(f"store {area}/{key}", lambda: self.store.put_file(area, key, path))

    def fetch(self, area: Area, key: str, destination: Path) -> Path:
        return self._retried(f"fetch {area}/{key}",
                             lambda: self.store.fetch(area, key, destination))  # fmt: skip

    def exists(self, area: Area, key: str) -> bool:
        return self._retried(f"look up {area}/{key}", lambda: self.store.exists(area, key))

    def delete(self, area: Area, key: str) -> None:
        self._retried(f"delete {area}/{key}", lambda: self.store.delete(area, key))

    def local_path(self, area: Area, key: str) -> Path | None:
        return self.store.local_path(area, key)

    def iter_bytes(self, area: Area, key: str) -> Iterator[bytes]:
        return self._retried(f"read {area}/{key}", lambda: self.store.iter_bytes(area, key))

    def size(self, area: Area, key: str) -> int:
        return self._retried(f"size of {area}/{key}", lambda: self.store.size(area, key))

    def _retried(self, what: str, call: Callable[[], T]) -> T:
        return retry_outage(call, outage=_store_outage, what=what, budget_s=self.budget_s)


def _store_outage(error: BaseException) -> str | None:
    # the error's text is already the reason: "object store unavailable (ReadTimeoutError)"
    return str(error) if isinstance(error, StoreUnavailableError) else None
