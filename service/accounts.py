"""API keys and the teacher checkpoints they own: the crud of the service's principals.

Same conventions as :mod:`service.crud`: a ``Session`` and keyword arguments, one short
transaction per call, ORM rows or plain values back.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.tables import ApiKey, Checkpoint, new_id, utcnow

KEY_PREFIX = "wkd_"


# ----------------------------------------------------------------------------- API keys
def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_api_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """A new key row and its plaintext ``wkd_…`` (shown once; only the hash is stored)."""
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


def revoke_api_key(session: Session, *, key_id: str) -> bool:
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    return result.rowcount == 1


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


def list_checkpoints(session: Session, *, owner_id: str, limit: int = 100) -> list[Checkpoint]:
    query = (
        select(Checkpoint)
        .where(Checkpoint.owner_id == owner_id)
        .order_by(Checkpoint.created_at.desc(), Checkpoint.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))
