"""Per-user state in SQLite (default) or PostgreSQL (several instances), via SQLAlchemy Core.

Holds sessions and bans (when Redis is not configured), TOTP secrets and used
codes, and API tokens. `metadata` is the schema the code expects; the revisions in
`migrations/` build it, and `migrate()` applies the pending ones at startup
(one instance at a time). Every statement runs through `connect()` / `begin()`,
which turn database errors into `StorageUnavailable` (callers fail closed) or,
for a refused duplicate, `StorageConflict`.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import migrations
from .config import StorageConfig
from .migrations import SchemaRefused, SchemaState

log = logging.getLogger("authportal.storage")

#: PostgreSQL advisory lock held while one instance migrates ("authport" in ASCII); per database.
MIGRATION_LOCK = 0x61757468706F7274
#: SQLite: how long an instance waits for another one's migration (the write lock) before giving up.
MIGRATION_WAIT_SECONDS = 120

metadata = sa.MetaData()

#: For releases before revisions, which refuse a database above 1 (see migrations/__init__.py); the code ignores it.
schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(256), index=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

totp_configurations = sa.Table(
    "totp_configurations",
    metadata,
    sa.Column("username", sa.String(256), primary_key=True),
    sa.Column("secret", sa.LargeBinary, nullable=False),  # AES-GCM nonce + ciphertext
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("digits", sa.Integer, nullable=False),
    sa.Column("period", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

totp_history = sa.Table(
    "totp_history",
    metadata,
    sa.Column("username", sa.String(256), primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True),
    sa.Column("used_at", sa.Float, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("username", sa.String(256), nullable=False, index=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("scope", sa.Text, nullable=False, default=""),  # comma-separated subjects, "" = all of the owner's
    sa.Column("methods", sa.Text, nullable=False, server_default=""),  # comma-separated methods, "" = any
    sa.Column("resources", sa.Text, nullable=False, server_default=""),  # JSON list of path regexes, "" = any
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("last_used_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
)

#: Security keys and passkeys: the public key only. `user_handle` is the random id the key holds for its
#: user (never the username); `cloned_at` is set when the signature counter went backwards.
webauthn_credentials = sa.Table(
    "webauthn_credentials",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(256), nullable=False, index=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("credential_id", sa.String(1400), nullable=False, unique=True),  # base64url, at most 1023 bytes
    sa.Column("public_key", sa.LargeBinary, nullable=False),  # COSE
    sa.Column("sign_count", sa.BigInteger, nullable=False),
    sa.Column("user_handle", sa.String(64), nullable=False),
    sa.Column("discoverable", sa.Boolean, nullable=False),
    sa.Column("transports", sa.String(128), nullable=False),  # comma-separated
    sa.Column("aaguid", sa.String(36), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float),
    sa.Column("cloned_at", sa.Float),
    sa.UniqueConstraint("username", "name", name="uq_webauthn_credentials_username_name"),
)

#: One random user handle per user, the same in every key they register.
webauthn_users = sa.Table(
    "webauthn_users",
    metadata,
    sa.Column("username", sa.String(256), primary_key=True),
    sa.Column("user_handle", sa.String(64), nullable=False, unique=True),
)

#: Challenges of ceremonies in progress, single-use: taken by a DELETE. `id` is the SHA-256 of the ceremony
#: id the browser holds; `session` the SHA-256 of the session that started it (None: a passkey sign-in).
webauthn_ceremonies = sa.Table(
    "webauthn_ceremonies",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("username", sa.String(256)),
    sa.Column("session", sa.String(64)),
    sa.Column("challenge", sa.LargeBinary, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


#: OpenID Connect sign-ins in progress: the state's SHA-256, the browser that started it (a cookie's SHA-256), the
#: nonce and PKCE verifier, and where to go afterwards; taken once (a DELETE), expiring after a few minutes.
oidc_flows = sa.Table(
    "oidc_flows",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("browser", sa.String(64), nullable=False),
    sa.Column("nonce", sa.String(64), nullable=False),
    sa.Column("verifier", sa.String(128), nullable=False),
    sa.Column("rd", sa.Text),
    sa.Column("rm", sa.String(16)),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


#: E-mailed links (a password reset, removing a lost second factor): only the SHA-256 of the link's token, the
#: user and their password stamp when it was made (a link made before a password change no longer works).
identity_links = sa.Table(
    "identity_links",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("username", sa.String(256), nullable=False, index=True),
    sa.Column("stamp", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
    sa.Column("used_at", sa.Float),
)


#: Bans in force when Redis is not configured (`regulation.DatabaseBans`); `id` is the ban's kind and whom it
#: holds (`user:alice`, `ip:198.51.100.7`, `user_ip:alice@198.51.100.7`).
bans = sa.Table(
    "bans",
    metadata,
    sa.Column("id", sa.String(400), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("username", sa.String(256)),
    sa.Column("ip", sa.String(64)),
    sa.Column("banned_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

#: Failed attempts (and reset-link requests) in their moving windows, one row per event until its window ends.
regulation_events = sa.Table(
    "regulation_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("counter", sa.String(400), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


class StorageUnavailable(Exception):
    """The database cannot answer; callers deny."""


class StorageConflict(StorageUnavailable):
    """A unique key refused the write (a replay, or two instances at once).

    A StorageUnavailable, so callers that do not expect one still fail closed;
    callers that race on purpose (single-use TOTP codes, the canary) catch it first.
    """


def engine_url(config: StorageConfig) -> sa.URL:
    if config.sqlite is not None:
        return sa.URL.create("sqlite+pysqlite", database=str(config.sqlite.path))
    assert config.postgres is not None
    url = sa.make_url(config.postgres.url).set(drivername="postgresql+psycopg")
    if config.postgres.password is not None:
        url = url.set(password=config.postgres.password.get_secret_value())
    return url


class Storage:
    """The database and its tables; one instance per process, safe across threads."""

    def __init__(self, config: StorageConfig):
        url = engine_url(config)
        if url.get_backend_name() == "sqlite":
            assert config.sqlite is not None
            config.sqlite.path.parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(url, connect_args={"timeout": 5})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(
                url, pool_size=4, max_overflow=4, pool_pre_ping=True, pool_recycle=600,
                connect_args={"connect_timeout": 3},
            )

    def migrate(self, target: str = "head") -> tuple[SchemaState, SchemaState]:
        """Apply the pending schema revisions (up to `target`); (before, after). Refuses a schema newer than
        this code.

        Several instances starting at once: one migrates, the others wait for the
        lock and then find nothing left to do.
        """
        try:
            with self._schema_lock() as conn:
                return migrations.upgrade(conn, target)
        except (SchemaRefused, CommandError) as exc:
            raise StorageUnavailable(str(exc)) from exc
        except StorageUnavailable as exc:
            raise StorageUnavailable(f"cannot migrate the database: {exc}") from exc

    def schema_state(self) -> SchemaState:
        """Where the database stands against this code's revisions (reads only)."""
        try:
            with self.connect() as conn:
                return migrations.read_state(conn)
        except SchemaRefused as exc:
            raise StorageUnavailable(str(exc)) from exc

    @contextmanager
    def _schema_lock(self) -> Iterator[Connection]:
        """A transaction holding the database's migration lock, for DDL and data together."""
        if self.engine.dialect.name == "postgresql":
            with self.begin() as conn:
                if not conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(MIGRATION_LOCK))).scalar():
                    log.info("storage: another instance is migrating the database; waiting for it")
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
                yield conn  # the lock ends with the transaction, also when the process dies
            return
        # SQLite: pysqlite would begin only at the first INSERT and commit before DDL. Driver autocommit plus our
        # own BEGIN IMMEDIATE takes the write lock first and keeps the whole migration in one transaction.
        engine = sa.create_engine(self.engine.url, poolclass=sa.pool.NullPool,
                                  connect_args={"isolation_level": None, "timeout": MIGRATION_WAIT_SECONDS})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "connect", _wait_for_migrations)
        sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        try:
            with _Guard(engine.begin) as conn:
                yield conn
        finally:
            engine.dispose()

    def health(self) -> str | None:
        try:
            with self.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except StorageUnavailable as exc:
            cause = exc.__cause__ or exc
            return f"{cause.__class__.__name__}: {exc}"
        return None

    def close(self) -> None:
        self.engine.dispose()

    def truncate_wal(self) -> None:
        """SQLite: copy the WAL into the database file and empty it, after a TOTP seed was replaced or removed.

        secure_delete zeroes a deleted row in the database file, but every earlier version of its page stays in
        the `-wal` file until about 1000 pages later (measured: still there after 100 more writes). Best
        effort: a reader holding the WAL makes SQLite checkpoint what it can and keep the file. PostgreSQL keeps
        dead rows and WAL segments of its own; there only the sealing protects a seed.
        """
        if self.engine.dialect.name == "sqlite":
            with self.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").all()

    # Sessions (the local store when Redis is not configured).

    def load_session(self, session_id: str) -> dict[str, Any] | None:
        with self.connect() as conn:
            row = conn.execute(
                sa.select(sessions.c.data).where(sessions.c.id == session_id, sessions.c.expires_at > time.time())
            ).first()
        return json.loads(row[0]) if row else None

    def save_session(self, session_id: str, data: dict[str, Any], expires_at: float) -> None:
        values = {"username": data.get("user"), "data": json.dumps(data), "expires_at": expires_at}
        with self.begin() as conn:
            updated = conn.execute(sessions.update().where(sessions.c.id == session_id).values(**values)).rowcount
            if not updated:
                conn.execute(sessions.insert().values(id=session_id, **values))
            conn.execute(sessions.delete().where(sessions.c.expires_at < time.time() - 60))

    def delete_session(self, session_id: str) -> None:
        with self.begin() as conn:
            conn.execute(sessions.delete().where(sessions.c.id == session_id))

    def unexpired_sessions(self, username: str | None) -> list[tuple[str, dict[str, Any]]]:
        """(id, data) of every unexpired session (of `username`, by its index; None: everyone's)."""
        query = sa.select(sessions.c.id, sessions.c.data).where(sessions.c.expires_at > time.time())
        if username is not None:
            query = query.where(sessions.c.username == username)
        with self.connect() as conn:
            return [(row.id, json.loads(row.data)) for row in conn.execute(query)]

    def connect(self) -> Any:
        return _Guard(self.engine.connect)

    def begin(self) -> Any:
        return _Guard(self.engine.begin)


class _Guard:
    """Context manager turning any database error into StorageUnavailable (fail closed upstream)."""

    def __init__(self, opener: Any):
        self._opener = opener
        self._ctx: Any = None

    def __enter__(self) -> Any:
        try:
            self._ctx = self._opener()
            return self._ctx.__enter__()
        except SQLAlchemyError as exc:
            raise _translated(exc) from exc

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._ctx.__exit__(*exc_info)
        except SQLAlchemyError as exc:
            raise _translated(exc) from exc
        if exc_info[0] is not None and issubclass(exc_info[0], SQLAlchemyError):
            raise _translated(exc_info[1]) from exc_info[1]


def _translated(exc: SQLAlchemyError) -> StorageUnavailable:
    kind = StorageConflict if isinstance(exc, IntegrityError) else StorageUnavailable
    return kind(str(exc).splitlines()[0])


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    # Zero deleted rows and freed pages: a reset seed or an ended session leaves no bytes behind. Debian's
    # SQLite is built with this on, others default to off.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _wait_for_migrations(dbapi_conn: Any, _record: Any) -> None:
    """After `_sqlite_pragmas`: wait as long for another instance's migration as `MIGRATION_WAIT_SECONDS`."""
    dbapi_conn.execute(f"PRAGMA busy_timeout={MIGRATION_WAIT_SECONDS * 1000}")

#: One sealed canary, so a changed secret_key is caught at startup rather than at someone's login.
encryption_check = sa.Table(
    "encryption_check",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("canary", sa.LargeBinary, nullable=False),  # AES-GCM nonce + ciphertext
)
