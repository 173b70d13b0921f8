"""A job's live events (``GET /jobs/{id}/events``), computed from database snapshots.

The database stays the one source of truth: the stream is made by reading the job row and its
new metric rows every short interval (:func:`read_snapshot`, one short session each time) and
turning what changed into server-sent events (:class:`EventBuilder`):

- ``state``: the job's status changed (and once at the start of a stream): status,
  failure reason and message, attempt, progress, best and last accuracy;
- ``epoch``: one finished epoch, the curve row of ``GET /jobs/{id}/metrics`` plus ``total``;
- ``progress``: batches done in the epoch being trained (``epoch`` finished epochs of
  ``total``, ``batch`` of ``batches`` in the next one).

Every event id is a :class:`Cursor` ``attempt.epoch.stage.batch``, compared component-wise,
that only grows within a job: a client that reconnects with ``Last-Event-ID`` gets exactly what
it has not seen (the epochs after its last one, the current state when it differs, newer
progress). The stream ends after the ``state`` event of a terminal status.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from service import crud
from service.messages import public_message
from service.tables import TERMINAL, Job, JobStatus

_CURSOR_PART = re.compile(r"[0-9]{1,18}")  # one part of a Last-Event-ID

EPOCH_STAGE = 0  # epoch events sort before the state and progress of the next epoch
STAGES: dict[JobStatus, int] = {
    JobStatus.queued: 1,
    JobStatus.preparing: 2,
    JobStatus.running: 3,
    JobStatus.cancelling: 4,
    **dict.fromkeys(TERMINAL, 5),
}
TRAINING = frozenset({JobStatus.running, JobStatus.cancelling})


@dataclass(frozen=True, order=True)
class Cursor:
    """An event id: (attempt, finished epochs, stage of the status, batches done)."""

    attempt: int = 0
    epoch: int = 0
    stage: int = 0
    batch: int = 0

    def __str__(self) -> str:
        return f"{self.attempt}.{self.epoch}.{self.stage}.{self.batch}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        """The cursor of a ``Last-Event-ID``; ``None`` when absent or malformed (the stream
        then starts from the beginning). Malformed: anything but four ``.``-separated runs of
        1 to 18 ASCII digits (so every part fits a 64-bit column; ``str.isdigit`` alone
        would also take ``²``, which ``int`` refuses)."""
        if not text:
            return None
        parts = text.strip().split(".")
        if len(parts) != 4 or not all(_CURSOR_PART.fullmatch(p) for p in parts):
            return None
        return cls(*(int(p) for p in parts))


@dataclass
class Event:
    """One server-sent event."""

    id: Cursor
    event: str
    data: dict[str, Any]

    def encode(self) -> str:
        """The wire form: ``id``, ``event`` and one ``data`` line (compact JSON)."""
        payload = json.dumps(self.data, separators=(",", ":"), default=str)
        return f"id: {self.id}\nevent: {self.event}\ndata: {payload}\n\n"


@dataclass
class Snapshot:
    """What one poll read: the job's fields (``None``: gone) and its new curve rows."""

    job: dict[str, Any] | None
    rows: list[dict[str, Any]] = field(default_factory=list)


def job_state(job: Job, roots: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a ``state`` event, from the row; the message as ``GET /jobs/{id}``
    shows it (no traceback, ``roots`` and other server paths hidden)."""
    return {
        "id": job.id, "status": job.status.value, "is_terminal": job.is_terminal,
        "failure_reason": job.failure_reason, "message": public_message(job.message, roots),
        "attempt": job.attempt,
        "progress": {"epoch": job.progress_epoch, "total": job.progress_total,
                     "batch": job.progress_batch or 0, "batches": job.progress_batches or 0},
        "best_top1": job.best_top1, "best_epoch": job.best_epoch, "last_top1": job.last_top1,
        "started_at": job.started_at, "finished_at": job.finished_at,
    }  # fmt: skip


def read_snapshot(
    session: Session, *, job_id: str, after_epoch: int, roots: tuple[str, ...] = ()
) -> Snapshot:
    """The job now and its curve rows after ``after_epoch`` (up to the job's progress, so
    that the rows and the row read agree even while an epoch is being written); ``roots``:
    the service's folders, hidden in the message."""
    job = crud.get_job(session, job_id)
    if job is None:
        return Snapshot(None)
    state = job_state(job, roots)
    rows = crud.list_metrics(
        session, job_id=job_id, after_epoch=after_epoch, up_to_epoch=job.progress_epoch
    )
    session.rollback()  # end the read transaction now: nothing stays open between polls
    return Snapshot(state, rows)


class EventBuilder:
    """Turns successive snapshots into new events with strictly growing ids.

    Args:
        last: the cursor of the client's ``Last-Event-ID`` (``None``: a new stream).
    """

    def __init__(self, last: Cursor | None = None) -> None:
        self.last = last or Cursor()
        # The status the client last saw, if the cursor tells it (an epoch event does not).
        self._stage: int | None = last.stage if last and last.stage != EPOCH_STAGE else None
        self._attempt = last.attempt if last else None
        self.finished = False

    def advance(self, snapshot: Snapshot) -> list[Event]:
        """The events ``snapshot`` adds to what was sent; sets ``finished`` at the end."""
        job = snapshot.job
        if job is None:
            self.finished = True
            return []
        attempt, status = job["attempt"], JobStatus(job["status"])
        progress, stage = job["progress"], STAGES[status]
        events = [
            Event(Cursor(attempt, row["epoch"], EPOCH_STAGE, 0), "epoch",
                  {**row, "total": progress["total"]})
            for row in snapshot.rows
        ]  # fmt: skip
        if stage != self._stage or attempt != self._attempt:
            events.append(Event(Cursor(attempt, progress["epoch"], stage, 0), "state", job))
        if status in TRAINING and progress["batch"] > 0 and progress["batches"] > 0:
            cursor = Cursor(attempt, progress["epoch"], stage, progress["batch"])
            events.append(Event(cursor, "progress", progress))
        fresh = []
        for event in events:
            if event.id > self.last:
                fresh.append(event)
                self.last = event.id
        self._stage, self._attempt = stage, attempt
        self.finished = status in TERMINAL
        return fresh
