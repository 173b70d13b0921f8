"""The database schema (SQLAlchemy 2.0 ORM): api_keys, checkpoints, jobs, job_metrics, artifacts.

Tables are created by Alembic (``migrations/``), never by ``create_all`` in the service, so the
schema has one history. Ids are server-generated strings with a type prefix (``job_…``,
``ck_…``, ``key_…``) so that a misplaced id is recognisable in logs and bug reports.
"""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobStatus(enum.StrEnum):
    queued = "queued"
    preparing = "preparing"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
ACTIVE = frozenset({JobStatus.preparing, JobStatus.running, JobStatus.cancelling})


class FailureReason(enum.StrEnum):
    invalid_input = "invalid_input"
    teacher_mismatch = "teacher_mismatch"
    diverged = "diverged"
    out_of_memory = "out_of_memory"
    time_limit = "time_limit"
    worker_lost = "worker_lost"
    internal = "internal"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A random, URL-safe id such as ``job_Jb3k…`` (96 bits of randomness)."""
    return f"{prefix}_{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both databases (SQLite would return naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use service.tables.utcnow()")
        value = value.astimezone(UTC)
        # SQLite stores text: keep it naive-UTC so that string order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, for support
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Checkpoint(Base):
    """An uploaded teacher: weights stored under the server's checkpoint folder."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    arch: Mapped[str] = mapped_column(String(64))
    num_classes: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255))  # the client's name, display only
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # server-generated, relative to checkpoint_dir
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # "teacher" (weights) or "cost_matrix" (a C×C D = 1 − CKA tensor for WKD-L)
    kind: Mapped[str] = mapped_column(String(32), default="teacher", server_default="teacher")


job_status_type = Enum(
    JobStatus,
    name="job_status",
    native_enum=False,
    create_constraint=True,
    length=16,
    values_callable=lambda members: [m.value for m in members],
)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created_id", "owner_id", "created_at", "id"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    status: Mapped[JobStatus] = mapped_column(job_status_type, default=JobStatus.queued)
    spec: Mapped[dict[str, Any]]  # the resolved JobSpec, model_dump(mode="json")
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    progress_epoch: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer)
    # Inside the epoch after ``progress_epoch``: batches done of its total (0/0 before the
    # first report of an epoch); written by the runner at most about once a second.
    progress_batch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    progress_batches: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    best_top1: Mapped[float | None] = mapped_column(Float)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    last_top1: Mapped[float | None] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]  # NULL: committed but not yet handed to the broker
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


def job_progress(job: Job) -> dict[str, int]:
    """Epochs done of the total, and batches done of the epoch in progress (``job`` may also be
    a result row with the same columns)."""
    return {
        "epoch": job.progress_epoch,
        "total": job.progress_total,
        "batch": job.progress_batch or 0,
        "batches": job.progress_batches or 0,
    }


class JobMetric(Base):
    """One row per (job, epoch); a re-run of an epoch after a resume overwrites its row."""

    __tablename__ = "job_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    lr: Mapped[float] = mapped_column(Float)
    train_loss: Mapped[float] = mapped_column(Float)
    train_top1: Mapped[float] = mapped_column(Float)
    test_top1: Mapped[float] = mapped_column(Float)
    test_top5: Mapped[float] = mapped_column(Float)
    test_loss: Mapped[float] = mapped_column(Float)
    loss_terms: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to artifact_dir
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Study(Base):
    """One request fanned out into jobs over methods × seeds (``service/studies.py``)."""

    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_owner_created_id", "owner_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    spec: Mapped[dict[str, Any]]  # the StudySpec as submitted, model_dump(mode="json")
    job_ids: Mapped[dict[str, Any]]  # {"<method>": ["job_…", …]} in seed order
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
