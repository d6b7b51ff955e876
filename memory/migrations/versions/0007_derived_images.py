"""Derived images: what the model generated from a study's slice, preliminary until a physician reviews
it; the outbox of PACS pushes learns a second kind (a Secondary Capture of an accepted image)

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
        "derived_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=24), nullable=False),
        sa.Column("source_slice", sa.Integer(), nullable=False),
        sa.Column("pixel_key", sa.String(length=64), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "preliminary", "accepted", "rejected", name="derived_status", native_enum=False, length=24
            ),
            nullable=False,
        ),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("reviewed_by", sa.Integer(), nullable=True),
        sa.Column("review_reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["reviewed_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_derived_images_study_id"), "derived_images", ["study_id"], unique=False)
    # Existing pushes are all signed reads: kind "sr". A push now names a read or a derived image.
    with op.batch_alter_table("report_pushes") as batch:
        batch.add_column(
            sa.Column(
                "kind",
                sa.Enum("sr", "sc", name="push_kind", native_enum=False, length=24),
                server_default="sr",
                nullable=False,
            )
        )
        batch.add_column(sa.Column("image_id", sa.Integer(), nullable=True))
        batch.alter_column("read_id", existing_type=sa.Integer(), nullable=True)
        batch.create_foreign_key(
            "fk_report_pushes_image_id", "derived_images", ["image_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_unique_constraint("report_push_once_per_image", ["image_id"])
        batch.create_check_constraint("report_push_one_subject", "(read_id IS NULL) <> (image_id IS NULL)")


def downgrade() -> None:
    op.execute("DELETE FROM report_pushes WHERE image_id IS NOT NULL")
    with op.batch_alter_table("report_pushes") as batch:
        batch.drop_constraint("report_push_one_subject", type_="check")
        batch.drop_constraint("report_push_once_per_image", type_="unique")
        batch.drop_constraint("fk_report_pushes_image_id", type_="foreignkey")
        batch.alter_column("read_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("image_id")
        batch.drop_column("kind")
    op.drop_index(op.f("ix_derived_images_study_id"), table_name="derived_images")
    op.drop_table("derived_images")
