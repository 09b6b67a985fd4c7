"""e-mailed links: password reset and lost-second-factor links (only their tokens' digests)

A new table only: earlier rows stay as they are, and releases at 0001 or 0002 still serve the database.

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_links",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("username", sa.String(256), nullable=False, index=True),
        sa.Column("stamp", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
        sa.Column("used_at", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("identity_links")
