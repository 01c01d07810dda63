"""modality worklist orders and MPPS instances

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("placer_order_number", sa.String(length=64), nullable=False),
        sa.Column("filler_order_number", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("accession_issuer", sa.String(length=64), nullable=False),
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("requested_procedure_id", sa.String(length=16), nullable=False),
        sa.Column("requested_procedure_description", sa.String(length=64), nullable=False),
        sa.Column("procedure_codes", sa.Text(), nullable=False),
        sa.Column("sps_id", sa.String(length=16), nullable=False),
        sa.Column("sps_description", sa.String(length=64), nullable=False),
        sa.Column("station_ae", sa.String(length=16), nullable=False),
        sa.Column("station_name", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("scheduled_date", sa.String(length=8), nullable=False),
        sa.Column("scheduled_time", sa.String(length=16), nullable=False),
        sa.Column("performing_physician", sa.String(length=324), nullable=False),
        sa.Column("referring_physician", sa.String(length=324), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_fk"], ["patients.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("accession_number", "accession_issuer", name="uq_order_accession"),
        sa.UniqueConstraint("study_uid"),
    )
    op.create_index("ix_orders_placer_order_number", "orders", ["placer_order_number"])
    op.create_index("ix_orders_patient_fk", "orders", ["patient_fk"])
    op.create_index("ix_orders_patient_id", "orders", ["patient_id"])
    op.create_index("ix_orders_station_ae", "orders", ["station_ae"])
    op.create_index("ix_orders_modality", "orders", ["modality"])
    op.create_index("ix_orders_status_date", "orders", ["status", "scheduled_date"])
    op.create_table(
        "mpps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("order_fk", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("attrs", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_fk"], ["orders.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_uid"),
    )
    op.create_index("ix_mpps_order_fk", "mpps", ["order_fk"])


def downgrade() -> None:
    op.drop_table("mpps")
    op.drop_table("orders")
