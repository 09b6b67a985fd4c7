"""API tokens limited to methods and paths: two columns, empty (no limit) for every existing token

Releases at 0001-0003 do not read them and still serve the database (their tokens stay unlimited there).

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("methods", sa.Text, nullable=False, server_default=""))
    op.add_column("api_tokens", sa.Column("resources", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("resources")
        batch.drop_column("methods")
