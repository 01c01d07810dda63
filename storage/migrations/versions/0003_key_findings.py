"""key images from KOS, finding texts from KOS and SR, IOCM rejections

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kos_sop_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("frames", sa.String(length=200), nullable=False),
        sa.Column("title_code", sa.String(length=16), nullable=False),
        sa.Column("title_meaning", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kos_sop_uid", "sop_uid", name="uq_key_image"),
    )
    op.create_index("ix_key_images_kos_sop_uid", "key_images", ["kos_sop_uid"])
    op.create_index("ix_key_images_study_uid", "key_images", ["study_uid"])
    op.create_index("ix_key_images_sop_uid", "key_images", ["sop_uid"])
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_uid"),
    )
    op.create_index("ix_findings_study_uid", "findings", ["study_uid"])
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("by_sop_uid", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("meaning", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_uid"),
    )
    op.create_index("ix_rejections_by_sop_uid", "rejections", ["by_sop_uid"])


def downgrade() -> None:
    op.drop_table("rejections")
    op.drop_table("findings")
    op.drop_table("key_images")
