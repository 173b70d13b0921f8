"""Every database access of the service. Functions take a ``Session`` and keyword arguments,
commit their own short transaction, and return ORM rows or plain values.

State changes of a job are compare-and-set ``UPDATE``s guarded by the expected status, so two
workers, a worker and the reaper, or a worker and a cancel can race without corrupting a row:
whoever loses updates zero rows and learns it from the return value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.paging import Page, newest_first_page
from service.tables import (
    ACTIVE,
    TERMINAL,
    Artifact,
    FailureReason,
    Job,
    JobMetric,
    JobStatus,
    new_id,
    utcnow,
)


# --------------------------------------------------------------------------------- jobs
def request_fingerprint(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request body (key order and spacing ignored)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyConflictError(Exception):
    """An ``Idempotency-Key`` reused: ``reason`` is ``"mismatch"`` or ``"in_flight"``."""

    def __init__(self, reason: str, job: Job) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job = job


IN_FLIGHT_GRACE = timedelta(seconds=30)


def create_job(
    session: Session,
    *,
    owner_id: str,
    spec: dict[str, Any],
    max_attempts: int,
    idempotency_key: str | None = None,
    fingerprint: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job; returns ``(job, created)``.

    With an ``idempotency_key`` already used by this owner, returns the earlier job with
    ``created=False`` when the fingerprints match, and raises :class:`IdempotencyConflictError`
    when they differ (``mismatch``) or the first request has not finished (``in_flight``:
    its row is committed but not yet handed to the broker).
    """
    if idempotency_key is not None:
        earlier = _job_by_idempotency_key(session, owner_id, idempotency_key)
        if earlier is not None:
            return _replay(earlier, fingerprint), False
    job = Job(
        id=new_id("job"), owner_id=owner_id, status=JobStatus.queued, spec=spec,
        idempotency_key=idempotency_key, request_fingerprint=fingerprint,
        progress_total=int(spec["training"]["epochs"]) * _trained_generations(spec),
        max_attempts=max_attempts,
    )  # fmt: skip
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert
        session.rollback()
        earlier = _job_by_idempotency_key(session, owner_id, idempotency_key)
        if earlier is None:
            raise
        return _replay(earlier, fingerprint), False
    return job, True


def _job_by_idempotency_key(session: Session, owner_id: str, key: str | None) -> Job | None:
    query = select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key)
    return session.scalar(query)


def _replay(earlier: Job, fingerprint: str | None) -> Job:
    if earlier.request_fingerprint != fingerprint:
        raise IdempotencyConflictError("mismatch", earlier)
    if earlier.enqueued_at is None and utcnow() - earlier.created_at < IN_FLIGHT_GRACE:
        raise IdempotencyConflictError("in_flight", earlier)
    return earlier


def mark_enqueued(session: Session, *, job_id: str) -> None:
    """Record that the job id reached the broker (ends the idempotency in-flight window)."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    session.commit()


def get_job(session: Session, job_id: str) -> Job | None:
    """Any job by id: for the worker. The API uses :func:`get_job_for_owner`."""
    session.expire_all()  # re-read: another process may have changed the row
    return session.get(Job, job_id)


def get_job_for_owner(session: Session, *, job_id: str, owner_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == owner_id))


def list_jobs(
    session: Session,
    *,
    owner_id: str,
    page_size: int,
    page_token: str | None = None,
    status: JobStatus | None = None,
) -> Page:
    """Newest first, keyset-paged on (created_at, id); the token also pins the filter.

    Raises ``ValueError`` for a malformed token or one issued for another filter.
    """
    query = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        query = query.where(Job.status == status)
    return newest_first_page(session, query, Job, page_size=page_size, page_token=page_token,
                             filter_value=status and status.value)  # fmt: skip


def request_cancel(session: Session, *, job_id: str) -> None:
    """queued → cancelled at once; preparing/running → cancelling; terminal: no change."""
    now = utcnow()
    queued = Job.status == JobStatus.queued
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.queued, *ACTIVE]))
        .values(
            status=case((queued, JobStatus.cancelled.value), else_=JobStatus.cancelling.value),
            cancel_requested_at=func.coalesce(Job.cancel_requested_at, now),
            finished_at=case((queued, now), else_=Job.finished_at),
            updated_at=now,
        )
    )
    session.commit()


def is_cancel_requested(session: Session, *, job_id: str) -> bool:
    query = select(Job.cancel_requested_at).where(Job.id == job_id)
    return session.scalar(query) is not None


def claim_job(session: Session, *, job_id: str, worker_id: str, guard=None) -> bool:
    """Compare-and-set queued → preparing; ``False`` when another worker or a cancel won.

    ``guard`` is one more SQL condition evaluated by the same ``UPDATE`` (the per-key
    running limit of ``claims.claim_next_job``)."""
    now = utcnow()
    condition = (Job.id == job_id) & (Job.status == JobStatus.queued)
    result = session.execute(
        update(Job)
        .where(condition if guard is None else condition & guard)
        .values(
            status=JobStatus.preparing,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
    )
    session.commit()
    return result.rowcount == 1


def set_running(session: Session, *, job_id: str) -> bool:
    """preparing → running; ``False`` if the job is no longer preparing (e.g. cancelling)."""
    return _transition(session, job_id, (JobStatus.preparing,), status=JobStatus.running)


def heartbeat(session: Session, *, job_id: str) -> bool:
    """Refresh ``heartbeat_at`` of an active job; ``False`` when it is no longer active."""
    return _transition(session, job_id, ACTIVE)


def record_epoch(session: Session, *, job_id: str, metrics: dict[str, Any]) -> None:
    """Upsert the epoch's metrics row, then update progress, accuracies and the heartbeat.

    ``metrics`` has the keys of ``wkd_core``'s ``EpochMetrics``: epoch, lr, train_loss,
    train_top1, test_top1, test_top5, test_loss, loss_terms, seconds.
    """
    row = {c: metrics[c] for c in _METRIC_COLUMNS} | {"job_id": job_id, "created_at": utcnow()}
    insert = (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert
    statement = insert(JobMetric).values(**row)
    statement = statement.on_conflict_do_update(
        index_elements=["job_id", "epoch"],
        set_={c: statement.excluded[c] for c in (*_METRIC_COLUMNS, "created_at")},
    )
    session.execute(statement)
    epoch = int(metrics["epoch"])
    best = session.execute(
        select(JobMetric.test_top1, JobMetric.epoch)
        .where(JobMetric.job_id == job_id, JobMetric.epoch <= epoch)
        .order_by(JobMetric.test_top1.desc(), JobMetric.epoch.asc())
        .limit(1)
    ).one()
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            progress_epoch=epoch,
            progress_batch=0,
            last_top1=metrics["test_top1"],
            best_top1=best[0],
            best_epoch=best[1],
            heartbeat_at=now,
            updated_at=now,
        )
    )
    session.commit()


def record_batch_progress(session: Session, *, job_id: str, batch: int, batches: int) -> bool:
    """Set the in-epoch progress (``batch`` of ``batches`` done) of an active job.

    Touches neither the heartbeat nor the status; ``False`` when the job is not active.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(list(ACTIVE)))
        .values(progress_batch=batch, progress_batches=batches, updated_at=utcnow())
    )
    session.commit()
    return result.rowcount == 1


_METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_top1", "test_top1", "test_top5", "test_loss",
    "loss_terms", "seconds",
)  # fmt: skip


def list_metrics(
    session: Session, *, job_id: str, after_epoch: int = 0, up_to_epoch: int | None = None
) -> list[dict[str, Any]]:
    """The job's curve as plain dicts, by epoch (no ORM objects: this is the hot read);
    only epochs in (``after_epoch``, ``up_to_epoch``] when those are given."""
    columns = [getattr(JobMetric, c) for c in _METRIC_COLUMNS]
    query = select(*columns).where(JobMetric.job_id == job_id, JobMetric.epoch > after_epoch)
    if up_to_epoch is not None:
        query = query.where(JobMetric.epoch <= up_to_epoch)
    query = query.order_by(JobMetric.epoch)
    return [dict(row) for row in session.execute(query).mappings()]


def finish_job(
    session: Session,
    *,
    job_id: str,
    status: JobStatus,
    failure_reason: FailureReason | str | None = None,
    message: str | None = None,
) -> bool:
    """Move a non-terminal job to a terminal status; ``False`` if it was already terminal."""
    if status not in TERMINAL:
        raise ValueError(f"{status} is not a terminal status")
    if (status == JobStatus.failed) != (failure_reason is not None):
        raise ValueError("a failure_reason is given exactly when the job failed")
    reason = None if failure_reason is None else FailureReason(failure_reason).value
    now = utcnow()
    return _transition(
        session, job_id, (JobStatus.queued, *ACTIVE),
        status=status, failure_reason=reason, message=message, finished_at=now,
    )  # fmt: skip


def _transition(session: Session, job_id: str, from_: Sequence[JobStatus], **values) -> bool:
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(list(from_)))
        .values(heartbeat_at=now, updated_at=now, **values)
    )
    session.commit()
    return result.rowcount == 1


def reap_stale_jobs(
    session: Session, *, stale_after_s: float, now: datetime | None = None
) -> list[str]:
    """Handle jobs whose worker stopped beating; returns the ids to (re-)enqueue.

    An active job silent for ``stale_after_s`` is re-queued with ``attempt + 1`` while
    attempts remain (it resumes from its last epoch checkpoint), else failed with
    ``worker_lost``; a lost job that was being cancelled becomes cancelled. Queued jobs whose
    enqueue never happened (the API died between commit and send) are returned as well.
    Each update is guarded by the heartbeat it read, so concurrent reapers act once.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stale_after_s)
    stale = session.execute(
        select(Job.id, Job.status, Job.attempt, Job.max_attempts, Job.heartbeat_at).where(
            Job.status.in_(list(ACTIVE)), Job.heartbeat_at < cutoff
        )
    ).all()
    requeue: list[str] = []
    for job_id, status, attempt, max_attempts, beat in stale:
        guard = update(Job).where(Job.id == job_id, Job.status == status, Job.heartbeat_at == beat)
        if status == JobStatus.cancelling:
            values = {"status": JobStatus.cancelled, "finished_at": now}
        elif attempt < max_attempts:
            values = {"status": JobStatus.queued, "attempt": attempt + 1, "worker_id": None,
                      "enqueued_at": None}  # fmt: skip
        else:
            values = {"status": JobStatus.failed, "finished_at": now,
                      "failure_reason": FailureReason.worker_lost.value,
                      "message": f"no heartbeat for {stale_after_s:.0f} s after "
                                 f"{attempt} attempt(s)"}  # fmt: skip
        updated = session.execute(guard.values(updated_at=now, **values)).rowcount == 1
        if updated and values["status"] == JobStatus.queued:
            requeue.append(job_id)
    unsent = session.scalars(
        select(Job.id).where(
            Job.status == JobStatus.queued,
            Job.enqueued_at.is_(None),
            Job.created_at < now - IN_FLIGHT_GRACE,
        )
    ).all()
    session.commit()
    return requeue + [job_id for job_id in unsent if job_id not in requeue]


# ---------------------------------------------------------------------------- artifacts
def add_artifact(
    session: Session, *, job_id: str, name: str, kind: str, size: int, sha256: str, path: str
) -> Artifact:
    """Insert or replace the job's artifact ``name`` (a retried job overwrites, never dups)."""
    row = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if row is None:
        row = Artifact(job_id=job_id, name=name)
        session.add(row)
    row.kind, row.size, row.sha256, row.path, row.created_at = kind, size, sha256, path, utcnow()
    # the job document lists its artifacts: a new updated_at tells caches and ETags so
    session.execute(update(Job).where(Job.id == job_id).values(updated_at=row.created_at))
    session.commit()
    return row


def list_artifacts(session: Session, *, job_id: str) -> list[Artifact]:
    query = select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)
    return list(session.scalars(query))


def get_artifact(session: Session, *, job_id: str, name: str) -> Artifact | None:
    query = select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
    return session.scalar(query)


def _trained_generations(spec: dict[str, Any]) -> int:
    """Trainings a job runs: 1, or for ``generations: N`` (Born-Again) N plus generation 0
    unless a teacher is given (as ``wkd_core.generations.run_generations`` runs them)."""
    if not spec.get("generations"):
        return 1
    teacher = spec.get("teacher") or {}
    given = any(teacher.get(k) for k in ("checkpoint_id", "job_id", "path"))
    return int(spec["generations"]) + (0 if given else 1)
