"""Alembic's environment: runs the revisions on the connection `authportal.migrations` holds the schema lock on.

Not for the `alembic` command line: operators run `authportal storage migrate` (or just start the server).
"""
from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("authportal's revisions run through `authportal storage migrate` or at server start")

# The caller's transaction holds the lock; Alembic joins it, so a failed revision leaves the schema untouched.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
