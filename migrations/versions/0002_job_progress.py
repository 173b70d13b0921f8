"""In-epoch progress of a job: batches done of the current epoch's total.

Revision ID: 0002_job_progress
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_job_progress"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("progress_batch", sa.Integer, nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("progress_batches", sa.Integer, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("progress_batches")
        batch.drop_column("progress_batch")
