"""PACS: where imported studies came from (original UIDs, kept from the model), and the outbox of signed
reports to store back in the PACS as DICOM SR

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pacs_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("instances", sa.JSON(), nullable=False),
        sa.Column("imported_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["imported_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_id"),
    )
    op.create_index(op.f("ix_pacs_imports_study_uid"), "pacs_imports", ["study_uid"], unique=False)
    op.create_table(
        "report_pushes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("read_id", sa.Integer(), nullable=False),
        sa.Column("signature", sa.String(length=40), nullable=False),
        sa.Column("report_status", sa.String(length=16), nullable=False),
        sa.Column("sr_uid", sa.String(length=64), nullable=False),
        sa.Column("sr_series_uid", sa.String(length=64), nullable=False),
        sa.Column("replaces_uid", sa.String(length=64), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("pending", "delivered", name="push_status", native_enum=False, length=24),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["read_id"], ["reads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("read_id", "signature", name="report_push_once_per_signature"),
    )
    op.create_index(op.f("ix_report_pushes_read_id"), "report_pushes", ["read_id"], unique=False)
    op.create_index(op.f("ix_report_pushes_status"), "report_pushes", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_report_pushes_status"), table_name="report_pushes")
    op.drop_index(op.f("ix_report_pushes_read_id"), table_name="report_pushes")
    op.drop_table("report_pushes")
    op.drop_index(op.f("ix_pacs_imports_study_uid"), table_name="pacs_imports")
    op.drop_table("pacs_imports")
