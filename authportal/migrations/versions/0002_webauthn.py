"""security keys and passkeys: their credentials, users' random handles, ceremonies in progress

New tables only: a database at 0001 keeps every row, and releases up to 0001 still serve it (they do not
read these tables), so `schema_version` stays 1.

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webauthn_credentials",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(256), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("credential_id", sa.String(1400), nullable=False, unique=True),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("sign_count", sa.BigInteger, nullable=False),
        sa.Column("user_handle", sa.String(64), nullable=False),
        sa.Column("discoverable", sa.Boolean, nullable=False),
        sa.Column("transports", sa.String(128), nullable=False),
        sa.Column("aaguid", sa.String(36), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_used_at", sa.Float),
        sa.Column("cloned_at", sa.Float),
        sa.UniqueConstraint("username", "name", name="uq_webauthn_credentials_username_name"),
    )
    op.create_table(
        "webauthn_users",
        sa.Column("username", sa.String(256), primary_key=True),
        sa.Column("user_handle", sa.String(64), nullable=False, unique=True),
    )
    op.create_table(
        "webauthn_ceremonies",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("username", sa.String(256)),
        sa.Column("session", sa.String(64)),
        sa.Column("challenge", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
    )


def downgrade() -> None:
    for table in ("webauthn_ceremonies", "webauthn_users", "webauthn_credentials"):
        op.drop_table(table)
