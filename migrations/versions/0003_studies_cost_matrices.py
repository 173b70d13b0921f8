"""Studies (method × seed fan-outs) and the kind of an uploaded checkpoint (teacher, cost matrix).

Revision ID: 0003_studies_cost_matrices
Revises: 0002_job_progress
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_studies_cost_matrices"
down_revision: str | None = "0002_job_progress"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("kind", sa.String(32), nullable=False, server_default="teacher"))
    op.create_table(
        "studies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("job_ids", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_studies_owner_created_id", "studies", ["owner_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_studies_owner_created_id", table_name="studies")
    op.drop_table("studies")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("kind")
