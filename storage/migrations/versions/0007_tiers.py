"""near tier index, per-tier read counters and prefetch rules

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "near_objects",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("last_access", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pinned_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_near_objects_study_uid", "near_objects", ["study_uid"])
    op.create_index("ix_near_objects_last_access", "near_objects", ["last_access"])
    op.create_table(
        "tier_counters",
        sa.Column("tier", sa.String(length=8), nullable=False),
        sa.Column("reads", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tier"),
    )
    op.create_table(
        "prefetch_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("modalities", sa.String(length=128), nullable=False),
        sa.Column("body_part", sa.String(length=16), nullable=False),
        sa.Column("years", sa.Integer(), nullable=False),
        sa.Column("max_studies", sa.Integer(), nullable=False),
        sa.Column("on_order", sa.Boolean(), nullable=False),
        sa.Column("on_admission", sa.Boolean(), nullable=False),
        sa.Column("order_modalities", sa.String(length=128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("prefetch_rules")
    op.drop_table("tier_counters")
    op.drop_table("near_objects")
