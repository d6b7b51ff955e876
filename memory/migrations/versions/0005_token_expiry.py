"""tokens: an expiry, and a kind (api, or a browser session)

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
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        # Existing tokens are API tokens; the default only fills them in.
        batch.add_column(
            sa.Column(
                "kind",
                sa.Enum("api", "session", name="token_kind", native_enum=False, length=24),
                nullable=False,
                server_default="api",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("kind")
        batch.drop_column("expires_at")
