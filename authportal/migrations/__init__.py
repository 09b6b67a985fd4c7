"""Schema revisions of the storage database (Alembic), applied at server start and by `authportal storage migrate`.

One revision per schema change, in `versions/` (0001, 0002, …). Each is written
by hand and frozen: it never imports the live tables of `storage.py`, so it does
tomorrow what it does today. `tests/test_storage_migrations.py` checks that the
revisions end exactly where `storage.metadata` is, on SQLite and PostgreSQL.

Databases made before revisions carry `schema_version` = 1 and no Alembic
`alembic_version`; revision 0001 is their schema and adopts them as they are.
The `schema_version` row stays, for those releases: they refuse a database whose
`schema_version` is above 1. A later revision they cannot serve (a changed
column, not a new table) raises it, so rolling back to one of them is refused
instead of running on a schema it does not know.

This module runs inside the caller's transaction, which holds the schema lock
(`Storage.migrate`): several instances starting at once migrate one at a time.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

log = logging.getLogger("authportal.storage")

SCRIPTS = Path(__file__).parent
#: The highest `schema_version` that releases before revisions wrote (and the highest they accept).
LEGACY_SCHEMA_VERSION = 1
#: Alembic runs env.py through module-level proxies: one run per process at a time (threads of one process).
_alembic_in_use = threading.Lock()


class SchemaRefused(Exception):
    """This authportal cannot serve the database's schema (newer than the code, or not its own)."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against this code's revisions."""

    current: str | None  #: the revision recorded in the database; None when none is
    latest: str
    legacy_version: int | None  #: `schema_version` of a database made before revisions (none recorded)

    @property
    def pending(self) -> list[str]:
        """Revisions to apply, oldest first (empty when up to date or refused)."""
        if self.problem is not None:
            return []
        revisions = _script().iterate_revisions(self.latest, self.current or "base")
        return [r.revision for r in reversed(list(revisions))]  # from none, 0001 too: it adopts an old database

    @property
    def problem(self) -> str | None:
        """Why this code refuses the database, or None."""
        advice = "Run that version or newer, or restore the backup taken before the upgrade"
        if self.current is not None and self.current not in _known():
            return (f"the database schema is at revision {self.current}, which this authportal does not know "
                    f"(its latest is {self.latest}): a newer authportal migrated it. {advice}")
        if self.current is None and self.legacy_version is not None and self.legacy_version > LEGACY_SCHEMA_VERSION:
            return (f"the database schema is version {self.legacy_version}, newer than this authportal "
                    f"({LEGACY_SCHEMA_VERSION}): a newer authportal made it. {advice}")
        return None


def describe(revision: str | None) -> str:
    """`0001 (initial schema: …)`: the revision with the first line of its docstring."""
    if revision is None:
        return "none"
    if revision not in _known():
        return f"{revision} (unknown to this authportal)"
    doc = (_script().get_revision(revision).doc or "").strip()
    return f"{revision} ({doc})" if doc else revision


def read_state(conn: Connection) -> SchemaState:
    """The database's revision (or its marker from before revisions); reads only."""
    heads = MigrationContext.configure(conn).get_current_heads()
    if len(heads) > 1:  # revisions here form one line; several heads are no state of ours
        raise SchemaRefused(f"the database records several schema revisions ({', '.join(heads)})")
    current = heads[0] if heads else None
    legacy = None
    if current is None and sa.inspect(conn).has_table("schema_version"):
        found = conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar()
        legacy = LEGACY_SCHEMA_VERSION if found is None else int(found)  # empty: those releases wrote 1 next
    return SchemaState(current, latest(), legacy)


def latest() -> str:
    """The newest revision this code has."""
    head = _script().get_current_head()
    assert head is not None  # versions/ ships with the package
    return head


def upgrade(conn: Connection, target: str = "head") -> tuple[SchemaState, SchemaState]:
    """Apply the pending revisions up to `target` on `conn` (its transaction holds the schema lock);
    (before, after)."""
    before = read_state(conn)
    if before.problem is not None:
        raise SchemaRefused(before.problem)
    if before.current == before.latest:
        return before, before
    if before.legacy_version is not None:
        log.info("storage: adopting a database made before schema revisions (schema_version %d) as revision %s",
                 before.legacy_version, before.pending[0])
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = conn
    with _alembic_in_use:
        command.upgrade(config, target)
    after = read_state(conn)
    log.info("storage: schema migrated from revision %s to %s", before.current or "none", after.current)
    return before, after


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(SCRIPTS))


@cache
def _known() -> frozenset[str]:
    return frozenset(r.revision for r in _script().walk_revisions())
