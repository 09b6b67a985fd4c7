"""initial schema: sessions, TOTP devices and used codes, API tokens, the encryption canary

The schema exactly as authportal created it before it had revisions (its
`Storage.migrate()` ran `metadata.create_all` over these tables and wrote 1 to
`schema_version`). The tables are copied here, not imported from `storage.py`,
so this revision creates the same schema whatever later revisions change.

A database made by those releases already has it: this revision then creates
only a table it lacks (as those releases did at every start) and records
revision 0001, leaving every row as it is.

Revision ID: 0001
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(256), index=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

sa.Table(
    "totp_configurations",
    metadata,
    sa.Column("username", sa.String(256), primary_key=True),
    sa.Column("secret", sa.LargeBinary, nullable=False),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("digits", sa.Integer, nullable=False),
    sa.Column("period", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

sa.Table(
    "totp_history",
    metadata,
    sa.Column("username", sa.String(256), primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True),
    sa.Column("used_at", sa.Float, nullable=False),
)

sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("username", sa.String(256), nullable=False, index=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("last_used_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
)

sa.Table(
    "encryption_check",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("canary", sa.LargeBinary, nullable=False),
)

#: What releases before revisions wrote to `schema_version`; they refuse to run on a higher one.
LEGACY_SCHEMA_VERSION = 1


def upgrade() -> None:
    bind = op.get_bind()
    made_before_revisions = sa.inspect(bind).has_table("schema_version")
    # Without that marker any table of these names is someone else's: CREATE TABLE fails on it, adopting nothing.
    metadata.create_all(bind, checkfirst=made_before_revisions)
    if bind.execute(sa.select(sa.func.count()).select_from(schema_version)).scalar() == 0:
        bind.execute(schema_version.insert().values(version=LEGACY_SCHEMA_VERSION))


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
