"""patient registry: identifiers, status, merges; HL7 message log; header differences

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="local")
        )
        batch.add_column(sa.Column("status_reason", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("merged_into_fk", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pas_updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key("fk_patient_merged_into", "patients", ["merged_into_fk"], ["id"])
        batch.create_index("ix_patients_status", ["status"], unique=False)
    with op.batch_alter_table("instances") as batch:
        batch.add_column(
            sa.Column("header_differences", sa.Text(), nullable=False, server_default="")
        )
    op.create_table(
        "patient_identifiers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("system", sa.String(length=128), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["patient_fk"], ["patients.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("system", "value", name="uq_identifier"),
    )
    op.create_index("ix_patient_identifiers_patient_fk", "patient_identifiers", ["patient_fk"])
    op.create_index("ix_patient_identifiers_value", "patient_identifiers", ["value"])
    # patients filed before the registry existed keep their header ID as an identifier
    op.execute(
        "INSERT INTO patient_identifiers (patient_fk, system, value) "
        "SELECT id, '', patient_id FROM patients"
    )
    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sender", sa.String(length=200), nullable=False),
        sa.Column("control_id", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sender", "control_id", name="uq_hl7_control"),
    )


def downgrade() -> None:
    op.drop_table("hl7_messages")
    op.drop_index("ix_patient_identifiers_value", "patient_identifiers")
    op.drop_index("ix_patient_identifiers_patient_fk", "patient_identifiers")
    op.drop_table("patient_identifiers")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("header_differences")
    with op.batch_alter_table("patients") as batch:
        batch.drop_index("ix_patients_status")
        batch.drop_constraint("fk_patient_merged_into", type_="foreignkey")
        batch.drop_column("pas_updated_at")
        batch.drop_column("merged_into_fk")
        batch.drop_column("status_reason")
        batch.drop_column("status")
