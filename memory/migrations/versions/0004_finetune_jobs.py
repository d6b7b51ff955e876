"""fine-tune jobs: states evaluating/rejected, progress, gate report, cancellation; adapter artifacts

The status columns are portable VARCHAR enums without a CHECK constraint (memory.schema._enum), so the
new values (job: evaluating, rejected; adapter: rejected) need no ALTER; only columns are added.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("finetune_jobs") as batch:
        batch.add_column(sa.Column("champion_version", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("progress", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("dataset", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("gate", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("runner", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("adapter_versions") as batch:
        batch.add_column(sa.Column("path", sa.String(length=1000), nullable=True))
        batch.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("gate_passed", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        for column in ("promoted_at", "gate_passed", "sha256", "path"):
            batch.drop_column(column)
    with op.batch_alter_table("finetune_jobs") as batch:
        for column in (
            "finished_at",
            "runner",
            "cancel_requested",
            "error",
            "gate",
            "dataset",
            "progress",
            "champion_version",
        ):
            batch.drop_column(column)
