"""Initial schema: api_keys, checkpoints, jobs, job_metrics, artifacts.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = ("queued", "preparing", "running", "cancelling", "succeeded", "failed", "cancelled")


def timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        timestamp("created_at"),
        timestamp("revoked_at", nullable=True),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("arch", sa.String(64), nullable=False),
        sa.Column("num_classes", sa.Integer, nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        timestamp("created_at"),
    )
    op.create_index("ix_checkpoints_owner_id", "checkpoints", ["owner_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*JOB_STATUSES, name="job_status", native_enum=False, create_constraint=True,
                    length=16),
            nullable=False,
        ),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("request_fingerprint", sa.String(64)),
        sa.Column("failure_reason", sa.String(32)),
        sa.Column("message", sa.Text),
        sa.Column("progress_epoch", sa.Integer, nullable=False),
        sa.Column("progress_total", sa.Integer, nullable=False),
        sa.Column("best_top1", sa.Float),
        sa.Column("best_epoch", sa.Integer),
        sa.Column("last_top1", sa.Float),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(255)),
        timestamp("heartbeat_at", nullable=True),
        timestamp("cancel_requested_at", nullable=True),
        timestamp("enqueued_at", nullable=True),
        timestamp("created_at"),
        timestamp("started_at", nullable=True),
        timestamp("finished_at", nullable=True),
        timestamp("updated_at"),
        sa.UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )
    op.create_index("ix_jobs_owner_created_id", "jobs", ["owner_id", "created_at", "id"])
    op.create_index("ix_jobs_status_heartbeat", "jobs", ["status", "heartbeat_at"])
    op.create_table(
        "job_metrics",
        sa.Column(
            "job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("epoch", sa.Integer, primary_key=True),
        sa.Column("lr", sa.Float, nullable=False),
        sa.Column("train_loss", sa.Float, nullable=False),
        sa.Column("train_top1", sa.Float, nullable=False),
        sa.Column("test_top1", sa.Float, nullable=False),
        sa.Column("test_top5", sa.Float, nullable=False),
        sa.Column("test_loss", sa.Float, nullable=False),
        sa.Column("loss_terms", sa.JSON, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        timestamp("created_at"),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        timestamp("created_at"),
        sa.UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),
    )
    op.create_index("ix_artifacts_job_id", "artifacts", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_artifacts_job_id", table_name="artifacts")
    op.drop_table("artifacts")
    op.drop_table("job_metrics")
    op.drop_index("ix_jobs_status_heartbeat", table_name="jobs")
    op.drop_index("ix_jobs_owner_created_id", table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("ix_checkpoints_owner_id", table_name="checkpoints")
    op.drop_table("checkpoints")
    op.drop_table("api_keys")
