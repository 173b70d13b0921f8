"""API keys and the teacher checkpoints they own: the crud of the service's principals.

Same conventions as :mod:`service.crud`: a ``Session`` and keyword arguments, one short
transaction per call, ORM rows or plain values back.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Row, bindparam, func, select, update
from sqlalchemy.orm import Session

from service.paging import Page, newest_first_page
from service.tables import ACTIVE, ApiKey, Checkpoint, Job, JobStatus, new_id, utcnow

KEY_PREFIX = "wkd_"


# ----------------------------------------------------------------------------- API keys
def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


MAX_KEY_NAME = 200  # the column's width


def check_key_name(name: str) -> str:
    """``name`` stripped: 1 … 200 printable characters (``wkd keys list`` shows it in a
    table), else a ``ValueError``."""
    name = name.strip()
    if not name or len(name) > MAX_KEY_NAME or not name.isprintable():
        raise ValueError(f"a key's name is 1 … {MAX_KEY_NAME} printable characters, "
                         "no line breaks or tabs")  # fmt: skip
    return name


def create_api_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """A new key row and its plaintext ``wkd_…`` (shown once; only the hash is stored)."""
    name = check_key_name(name)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), name=name, key_hash=hash_key(plaintext), prefix=plaintext[:12])
    session.add(row)
    session.commit()
    return row, plaintext


def verify_api_key(session: Session, plaintext: str) -> ApiKey | None:
    """The unrevoked key whose hash matches, else ``None`` (lookup by the unique hash)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def _key_and_job_query(*job_columns):
    keys, jobs = ApiKey.__table__, Job.__table__
    owned = (jobs.c.owner_id == keys.c.id) & (jobs.c.id == bindparam("job_id"))
    return (
        select(keys.c.id.label("key_id"), *(job_columns or (jobs,)))
        .select_from(keys.outerjoin(jobs, owned))
        .where(keys.c.key_hash == bindparam("key_hash"), keys.c.revoked_at.is_(None))
    )


# built once: these run on every poll
_KEY_AND_JOB = _key_and_job_query()
KEY_AND_JOB_STAMP = _key_and_job_query(Job.__table__.c.id, Job.__table__.c.updated_at)

# KEY_AND_JOB_STAMP for many (key hash, job id) lookups in one PostgreSQL statement (the
# batched poll check of api/stamps.py): a row per lookup whose key is live, numbered by its
# 1-based position in the two arrays; (ordinal, key id, job id or NULL, updated_at or NULL).
KEY_AND_JOB_STAMPS_SQL = f"""
SELECT q.ordinal, k.id, j.id, j.updated_at
FROM unnest(%(key_hashes)s::text[], %(job_ids)s::text[]) WITH ORDINALITY
     AS q(key_hash, job_id, ordinal)
JOIN {ApiKey.__tablename__} AS k ON k.key_hash = q.key_hash AND k.revoked_at IS NULL
LEFT JOIN {Job.__tablename__} AS j ON j.owner_id = k.id AND j.id = q.job_id
"""


def key_and_job(session: Session, plaintext: str, job_id: str) -> tuple[str, Row | None] | None:
    """The unrevoked key's id and, if that key owns it, the job's row (a Core ``Row`` with the
    ``jobs`` columns as attributes): one round trip, no ORM objects, for the most polled
    request (``GET /jobs/{id}``). ``None`` when the key is unknown or revoked."""
    params = {"job_id": job_id, "key_hash": hash_key(plaintext)}
    row = session.connection().execute(_KEY_AND_JOB, params).first()
    if row is None:
        return None
    return row.key_id, (row if row.id is not None else None)


def key_and_job_stamp(
    connection: Connection, plaintext: str, job_id: str
) -> tuple[str, datetime | None] | None:
    """Like :func:`key_and_job` but only the job's ``updated_at`` (``None``: no such job of
    this key's), on a plain connection: all that a poll whose document is cached needs, three
    columns instead of the job's twenty-seven and no ORM session."""
    params = {"job_id": job_id, "key_hash": hash_key(plaintext)}
    row = connection.execute(KEY_AND_JOB_STAMP, params).first()
    if row is None:
        return None
    return row.key_id, (row.updated_at if row.id is not None else None)


def list_api_keys(session: Session) -> list[ApiKey]:
    """Every key, oldest first (revoked ones included: ``revoked_at`` says so)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def find_api_key(session: Session, ident: str) -> ApiKey:
    """The key whose id is ``ident`` or whose shown prefix starts with it (unambiguously).

    Raises ``ValueError`` naming the problem (none, or several, match).
    """
    row = session.get(ApiKey, ident)
    if row is not None:
        return row
    matches = list(session.scalars(select(ApiKey).where(ApiKey.prefix.startswith(ident))))
    if len(ident) < 6 or not matches:
        raise ValueError(f"no API key with id or prefix {ident!r} (see `wkd keys list`)")
    if len(matches) > 1:
        raise ValueError(f"{len(matches)} keys start with {ident!r}; give the key id")
    return matches[0]


def revoke_api_key(session: Session, *, key_id: str) -> bool:
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    return result.rowcount == 1


# ------------------------------------------------------------------------ per-key usage
@dataclass(frozen=True)
class Usage:
    """What a key holds now, for the per-key limits of settings."""

    queued: int
    running: int  # preparing, running or cancelling


def job_usage(session: Session, *, owner_id: str) -> Usage:
    """The key's queued and running job counts (one query)."""
    counted = [JobStatus.queued, *ACTIVE]
    rows = session.execute(
        select(Job.status, func.count())
        .where(Job.owner_id == owner_id, Job.status.in_(counted))
        .group_by(Job.status)
    ).all()
    counts = {status: n for status, n in rows}
    return Usage(counts.get(JobStatus.queued, 0), sum(counts.get(s, 0) for s in ACTIVE))


def stored_bytes(session: Session, *, owner_id: str) -> int:
    """Bytes of the key's uploaded checkpoints."""
    total = func.coalesce(func.sum(Checkpoint.size), 0)
    return int(session.scalar(select(total).where(Checkpoint.owner_id == owner_id)))


def idempotency_key_used(session: Session, *, owner_id: str, key: str) -> bool:
    """Whether a job of this key carries ``Idempotency-Key: key`` (a replay is never limited)."""
    query = select(Job.id).where(Job.owner_id == owner_id, Job.idempotency_key == key)
    return session.scalar(query) is not None


# -------------------------------------------------------------------------- checkpoints
def create_checkpoint(
    session: Session,
    *,
    checkpoint_id: str,
    owner_id: str,
    arch: str,
    num_classes: int,
    filename: str,
    size: int,
    sha256: str,
    path: str,
    kind: str = "teacher",
) -> Checkpoint:
    row = Checkpoint(
        id=checkpoint_id, owner_id=owner_id, arch=arch, num_classes=num_classes,
        filename=filename, size=size, sha256=sha256, path=path, kind=kind,
    )  # fmt: skip
    session.add(row)
    session.commit()
    return row


def get_checkpoint_for_owner(session: Session, *, checkpoint_id: str, owner_id: str):
    return session.scalar(
        select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.owner_id == owner_id)
    )


def list_checkpoints(
    session: Session, *, owner_id: str, page_size: int, page_token: str | None = None
) -> Page:
    """One page of the key's uploads, newest first (``ValueError``: a malformed token)."""
    query = select(Checkpoint).where(Checkpoint.owner_id == owner_id)
    return newest_first_page(session, query, Checkpoint, page_size=page_size, page_token=page_token)
