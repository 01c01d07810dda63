"""jobs may wait until a time (deferred); storage commitment reports run as jobs

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("run_after", sa.DateTime(timezone=True), nullable=True))
    op.add_column("commitments", sa.Column("job_fk", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("commitments") as batch:
        batch.drop_column("job_fk")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_after")
