"""Rendered ``GET /jobs/{id}`` documents, cached by (job id, ``updated_at``), and ETags.

Every change to what the document shows moves the job's ``updated_at`` (status changes,
each epoch's metrics row, cancels, and artifacts: ``crud.add_artifact`` touches the job), so a
cached rendering is valid exactly while the row's ``updated_at`` is the one it was made from:
no invalidation is needed, and stale entries simply age out of the LRU. Per process; memory
is bounded by ``settings.job_cache_entries`` (a 240-epoch document is about 70 KB).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Rendered:
    """A job document as sent: the JSON bytes and their strong ETag."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> Rendered:
        return cls(body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')


class DocumentCache:
    """A thread-safe LRU of :class:`Rendered` by (job id, updated_at); capacity 0 disables it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, datetime], Rendered] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, updated_at: datetime) -> Rendered | None:
        with self._lock:
            found = self._items.get((job_id, updated_at))
            if found is not None:
                self._items.move_to_end((job_id, updated_at))
            return found

    def put(self, job_id: str, updated_at: datetime, rendered: Rendered) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[(job_id, updated_at)] = rendered
            self._items.move_to_end((job_id, updated_at))
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 ``If-None-Match``: ``*`` or a list of (weak or strong) tags, compared weakly."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return etag in tags
