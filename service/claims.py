"""The worker's side of the job table: claiming the next job, handing a job back, retrying
a dead attempt, and deciding which queued jobs need a new broker message.

The database is the source of truth for the queue (docs/reliability.md). A broker message is
only a wake-up: the worker that receives one claims the *oldest* eligible queued job
(:func:`claim_next_job`; a job is held back while its key runs its limit of jobs), and the
reaper re-sends messages for eligible queued jobs only while fewer messages wait in the
broker than such jobs are queued (:func:`resend_candidates`, :func:`mark_sending`). Every
change is a compare-and-set, as in :mod:`service.crud`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from sqlalchemy import func, select, true, update
from sqlalchemy.orm import Session, aliased

from service.crud import IN_FLIGHT_GRACE, claim_job, get_job
from service.routing import spec_gpus
from service.tables import ACTIVE, FailureReason, Job, JobStatus, utcnow

# First key of the PostgreSQL advisory lock a claim takes per API key (the second is a hash
# of the key's id): serialises the claims of one key so its running limit holds.
CLAIM_LOCK_CLASS = 0x574B44  # "WKD"


def claim_next_job(
    session: Session,
    *,
    worker_id: str,
    gpus: int | None = None,
    max_running_per_key: int = 0,
    scan: int = 20,
) -> str | None:
    """Claim the oldest eligible queued job (first submitted, first started); its id, or
    ``None``.

    ``gpus`` limits the choice to jobs of that GPU count, the jobs of the queue the message
    came from (service/routing.py): a one-GPU worker never takes a four-GPU job, and the
    order is first-in first-out within each queue.

    ``max_running_per_key`` (settings' ``max_running_jobs_per_key``; 0: no limit) holds back
    the queued jobs of a key that already has that many jobs preparing, running or
    cancelling: the claim takes the oldest job of the other keys instead, and the held jobs
    keep their place in the order until the key is below its limit again (see
    :func:`held_job_to_wake`). The limit is checked again inside the claim's ``UPDATE``
    (:func:`_below_running_limit`), so two workers claiming at once never pass it.

    The worker calls this for every message it receives, whatever job the message names: a
    message is a wake-up, the database says which job is next. So a job whose own message
    was lost still runs when any other message arrives, and a re-sent message never makes
    a job overtake an older one. Two workers racing for the same row: the loser's
    compare-and-set updates nothing and it tries the next one.
    """
    for job_id, owner_id in _queued_in_order(session, gpus, max_running_per_key, scan):
        guard = None
        if max_running_per_key:
            guard = _below_running_limit(session, owner_id, max_running_per_key)
        if claim_job(session, job_id=job_id, worker_id=worker_id, guard=guard):
            return job_id
    return None


def _queued_in_order(
    session: Session, gpus: int | None, max_running_per_key: int, scan: int
) -> Iterator[tuple[str, str]]:
    """(id, owner) of the eligible queued jobs of ``gpus`` GPUs, oldest first, read ``scan``
    rows at a time. The GPU count lives in the spec, so it is filtered here; paging on
    (created_at, id) means a backlog of another queue's jobs cannot hide a matching one."""
    after = None
    while True:
        query = select(Job.id, Job.spec, Job.owner_id, Job.created_at).where(
            Job.status == JobStatus.queued, eligible(max_running_per_key)
        )
        if after is not None:
            query = query.where(
                (Job.created_at > after[0]) | ((Job.created_at == after[0]) & (Job.id > after[1]))
            )
        rows = session.execute(query.order_by(Job.created_at, Job.id).limit(scan)).all()
        for job_id, spec, owner_id, _ in rows:
            if gpus is None or spec_gpus(spec or {}) == gpus:
                yield job_id, owner_id
        if len(rows) < scan:
            return
        after = (rows[-1].created_at, rows[-1].id)


def eligible(max_running_per_key: int):
    """SQL condition on ``jobs``: the job's key has fewer than ``max_running_per_key`` jobs
    preparing, running or cancelling (always true when the limit is 0)."""
    if not max_running_per_key:
        return true()
    active = aliased(Job)  # an alias: the subquery must not correlate with the outer jobs
    at_limit = (
        select(active.owner_id)
        .where(active.status.in_(list(ACTIVE)))
        .group_by(active.owner_id)
        .having(func.count() >= max_running_per_key)
    )
    return Job.owner_id.not_in(at_limit)


def _below_running_limit(session: Session, owner_id: str, limit: int):
    """The claim's extra condition: ``owner_id`` has fewer than ``limit`` active jobs.

    The count sits inside the claim's ``UPDATE``. SQLite runs one writer at a time, so the
    count it sees is the latest. PostgreSQL (READ COMMITTED) would let two claims for one key
    each count without the other's uncommitted claim, so the claim first takes a lock per
    key for the rest of its transaction: the second claim counts after the first committed.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = func.hashtext(owner_id)
        session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_CLASS, key)))
    active = aliased(Job)
    count = (
        select(func.count())
        .select_from(active)
        .where(active.owner_id == owner_id, active.status.in_(list(ACTIVE)))
        .scalar_subquery()
    )
    return count < limit


def held_job_to_wake(
    session: Session, *, ended_job_id: str, max_running_per_key: int
) -> tuple[str, datetime | None] | None:
    """After a job ended: the oldest queued job of its key, ``(id, enqueued_at)``, when the
    key is now below its running limit (``None`` otherwise, or without a limit).

    Such a job may have been held back by :func:`claim_next_job` while its message was
    taken by an idle worker; the worker that ended the key's job sends it a new message
    (guarded by :func:`mark_sending`), so it starts without waiting for the reaper.
    """
    if not max_running_per_key:
        return None
    owner_id = session.scalar(select(Job.owner_id).where(Job.id == ended_job_id))
    if owner_id is None:
        return None
    of_owner = Job.owner_id == owner_id
    active = session.scalar(select(func.count()).where(of_owner, Job.status.in_(list(ACTIVE))))
    if active >= max_running_per_key:
        return None
    oldest = session.execute(
        select(Job.id, Job.enqueued_at)
        .where(of_owner, Job.status == JobStatus.queued)
        .order_by(Job.created_at, Job.id)
        .limit(1)
    ).first()
    return None if oldest is None else (oldest.id, oldest.enqueued_at)


def job_gpus(session: Session, job_id: str | None) -> int | None:
    """``training.gpus`` of a job (``None`` when there is no such job)."""
    spec = session.scalar(select(Job.spec).where(Job.id == job_id)) if job_id else None
    return None if spec is None else spec_gpus(spec)


def job_held_by(session: Session, *, worker_id: str) -> str | None:
    """The active job that ``worker_id`` claimed, if any (see :func:`holds_claim`)."""
    query = select(Job.id).where(Job.worker_id == worker_id, Job.status.in_(list(ACTIVE)))
    return session.scalar(query.limit(1))


def holds_claim(session: Session, *, job_id: str, worker_id: str) -> bool:
    """True when ``worker_id`` holds the job's active claim (a claim whose commit went through
    although its answer was lost to a database outage)."""
    job = get_job(session, job_id)
    return job is not None and job.worker_id == worker_id and job.status in ACTIVE


def hand_back_job(session: Session, *, job_id: str, worker_id: str | None = None) -> bool:
    """An active job back to ``queued`` without counting an attempt (a worker shutting down,
    or a runner whose worker died under it); ``False`` when the job is no longer active,
    or, with ``worker_id``, no longer held by that claim. A job being cancelled becomes
    cancelled instead. The reaper, or the caller, sends it to the broker again.
    """
    guard = Job.status.in_([JobStatus.preparing, JobStatus.running])
    if worker_id is not None:
        guard = guard & (Job.worker_id == worker_id)
    values = {"status": JobStatus.queued, "worker_id": None, "enqueued_at": None}
    if _transition_where(session, job_id, guard, **values):
        return True
    cancelling = Job.status == JobStatus.cancelling
    if worker_id is not None:
        cancelling = cancelling & (Job.worker_id == worker_id)
    return _transition_where(session, job_id, cancelling, status=JobStatus.cancelled,
                             finished_at=utcnow(), message="cancelled by request")  # fmt: skip


def retry_job(
    session: Session, *, job_id: str, worker_id: str, failure_reason: FailureReason, message: str
) -> JobStatus | None:
    """The attempt held by ``worker_id`` died: queue the job again with ``attempt + 1`` while
    attempts remain (it resumes from its last epoch checkpoint), else fail it with
    ``failure_reason``. Returns the new status, or ``None`` when the claim was gone."""
    job = get_job(session, job_id)
    if job is None or job.worker_id != worker_id or job.status not in ACTIVE:
        return None
    guard = (Job.worker_id == worker_id) & Job.status.in_(list(ACTIVE))
    if job.status == JobStatus.cancelling:
        values = {"status": JobStatus.cancelled, "finished_at": utcnow()}
    elif job.attempt < job.max_attempts:
        values = {"status": JobStatus.queued, "attempt": job.attempt + 1, "worker_id": None,
                  "enqueued_at": None}  # fmt: skip
    else:
        values = {"status": JobStatus.failed, "finished_at": utcnow(),
                  "failure_reason": FailureReason(failure_reason).value,
                  "message": f"{message} (attempt {job.attempt} of {job.max_attempts})",
                  }  # fmt: skip
    return values["status"] if _transition_where(session, job_id, guard, **values) else None


def _transition_where(session: Session, job_id: str, guard, **values) -> bool:
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, guard)
        .values(heartbeat_at=now, updated_at=now, **values)
    )
    session.commit()
    return result.rowcount == 1


def resend_candidates(
    session: Session,
    *,
    requeue_after_s: float,
    max_running_per_key: int = 0,
    now: datetime | None = None,
) -> list[tuple[str, datetime | None]]:
    """Eligible queued jobs that may need a new message, oldest first: ``(id, enqueued_at)``.

    A job qualifies when its last message is older than ``requeue_after_s``, or when it has
    none: put back by the reaper, a hand-back or a retry (it had started before), or created
    by an API that could not reach the broker (after the in-flight grace of the API's own
    send). Jobs held back by their key's running limit (:func:`eligible`) do not: no
    worker could claim them, and a message would only wake one for nothing. The caller
    sends only as many as the broker lacks (:func:`queued_gpus` minus the messages waiting)
    and guards each send with :func:`mark_sending`.
    """
    now = now or utcnow()
    grace = timedelta(seconds=min(IN_FLIGHT_GRACE.total_seconds(), requeue_after_s))
    never_sent = Job.enqueued_at.is_(None) & (
        Job.started_at.is_not(None) | (Job.created_at < now - grace)
    )
    long_ago = Job.enqueued_at < now - timedelta(seconds=requeue_after_s)
    query = (
        select(Job.id, Job.enqueued_at)
        .where(Job.status == JobStatus.queued, never_sent | long_ago)
        .where(eligible(max_running_per_key))
        .order_by(Job.created_at, Job.id)
    )
    return [(row.id, row.enqueued_at) for row in session.execute(query)]


def count_queued(session: Session, *, max_running_per_key: int = 0) -> int:
    """Queued jobs a worker could claim now (those not held back by their key's limit)."""
    query = select(func.count()).where(Job.status == JobStatus.queued)
    return session.scalar(query.where(eligible(max_running_per_key))) or 0


def queued_gpus(session: Session, *, max_running_per_key: int = 0) -> dict[str, int]:
    """``{job id: training.gpus}`` of every queued job a worker could claim now (which queue
    each belongs to); jobs held back by their key's running limit are left out."""
    query = select(Job.id, Job.spec).where(Job.status == JobStatus.queued)
    query = query.where(eligible(max_running_per_key))
    return {job_id: spec_gpus(spec or {}) for job_id, spec in session.execute(query)}


def mark_sending(session: Session, *, job_id: str, previous: datetime | None) -> bool:
    """Compare-and-set ``enqueued_at`` from ``previous`` to now, on a queued job: of two
    reapers that read the same row, only one sends its message."""
    unchanged = Job.enqueued_at.is_(None) if previous is None else Job.enqueued_at == previous
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued, unchanged)
        .values(enqueued_at=utcnow())
    )
    session.commit()
    return result.rowcount == 1


def unmark_sending(session: Session, *, job_id: str, previous: datetime | None) -> None:
    """Undo :func:`mark_sending` after the send failed, so the next pass tries at once."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=previous))
    session.commit()
