"""studies found and verified by legacy PACS migration jobs

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "migration_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_fk", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("source_instances", sa.Integer(), nullable=False),
        sa.Column("archived_instances", sa.Integer(), nullable=False),
        sa.Column("retrievals", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_fk"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_fk", "study_uid", name="uq_migration_study"),
    )
    op.create_index("ix_migration_job_state", "migration_studies", ["job_fk", "state"])


def downgrade() -> None:
    op.drop_index("ix_migration_job_state", table_name="migration_studies")
    op.drop_table("migration_studies")
