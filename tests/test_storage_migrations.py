"""Schema revisions: a database made by the released code is adopted intact, instances migrate one at a time,
a newer database is refused.

The released code is the real one: the package as it was in git before schema
revisions, unpacked into a temp dir and run with this venv's python. Its own
server logs alice in, its own CLI gives her a TOTP secret and an API token;
then this code migrates the database and its server must accept that very
session cookie, that token and a code from that secret.
"""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import requests
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from authportal.cli import main as cli
from authportal.config import PostgresConfig, SqliteConfig, StorageConfig, load_config
from authportal.migrations import latest
from authportal.storage import MIGRATION_LOCK, Storage, StorageUnavailable, metadata
from tests.servers import IN_CI, require_binary, wait_until
from tests.servers.postgres import PostgresServer
from tests.support.portal import PortalSetup, ServedPortal, csrf_from, login

#: The last commit before schema revisions: what operators run today.
RELEASED = "0752434c72e27b2c50ae85365963a768d46c0235"
REPO = Path(__file__).resolve().parent.parent

PROM = "http://app.example.test/prometheus/graph"
ADMIN_API = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"  # two factors for admins


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, str]:
    """Environment that runs the released `authportal` package (checked: not this checkout's)."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", RELEASED, "authportal", "templates", "static"],
                                 capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        message = f"the released code ({RELEASED[:7]}) is not in this checkout: {exc}"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    directory = tmp_path_factory.mktemp("released")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    # PYTHONSAFEPATH: `python -m` must not put the working directory (this checkout) first on the path.
    env = dict(os.environ, PYTHONPATH=str(directory), PYTHONSAFEPATH="1")
    where = subprocess.run([sys.executable, "-c", "import authportal; print(authportal.__file__)"],
                           env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(directory)), where
    return env


def run_released(env: dict[str, str], *args: str) -> str:
    """`python ARGS` on the released code; its stdout."""
    done = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


#: The released CLI gives alice a TOTP device and an API token (one process: each start costs seconds here).
RELEASED_CLI = """
import sys
from click.testing import CliRunner
from authportal.cli import main
for command in (["totp", "generate", "alice"], ["tokens", "create", "alice", "--name", "grafana"]):
    result = CliRunner().invoke(main, [*command, "--config", sys.argv[1]])
    assert result.exit_code == 0, result.output
    print(result.stdout)
"""


def storage_cli(*args: str):
    return CliRunner().invoke(cli, ["storage", *args])


def columns_of(storage_config: StorageConfig) -> dict[str, list[str]]:
    """The columns each table of the code's schema has in the database (the tables it has)."""
    store = Storage(storage_config)
    try:
        with store.connect() as conn:
            inspector = sa.inspect(conn)
            present = set(inspector.get_table_names())
            return {table.name: [column["name"] for column in inspector.get_columns(table.name)]
                    for table in metadata.sorted_tables if table.name in present}
    finally:
        store.close()


def rows(storage_config: StorageConfig, columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple]]:
    """Every row of every table the database has, in a stable order: its `columns` (default: all it has)."""
    columns = {**columns_of(storage_config), **(columns or {})}
    store = Storage(storage_config)
    try:
        with store.connect() as conn:
            return {name: sorted(tuple(row) for row in conn.execute(
                        sa.select(*(metadata.tables[name].c[column] for column in names))))
                    for name, names in columns.items()}
    finally:
        store.close()


def recorded_revision(storage_config: StorageConfig) -> list[str]:
    store = Storage(storage_config)
    try:
        with store.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return []
            return [r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]
    finally:
        store.close()


def differences_from_the_code(storage_config: StorageConfig) -> list:
    """What Alembic's autogenerate would change to reach `storage.metadata` (empty: the revisions got there)."""
    store = Storage(storage_config)
    try:
        with store.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        store.close()


# The released version's database, with alice's session, TOTP secret and API token, upgraded.

@pytest.fixture
def portal_setup(portal_setup_both_storages) -> PortalSetup:
    return portal_setup_both_storages


def test_released_database_is_adopted_and_alice_keeps_her_session_totp_and_token(released, portal_setup):
    storage_config = load_config(str(portal_setup.config_path)).storage
    portal = f"http://auth.example.test:{portal_setup.port}"
    config = ["--config", str(portal_setup.config_path)]
    http = requests.Session()
    with ServedPortal(portal_setup, env=released):
        assert login(http, portal, "alice").status_code == 302
    printed = run_released(released, "-c", RELEASED_CLI, str(portal_setup.config_path))
    secret = parse_qs(urlsplit(re.search(r"otpauth://\S+", printed).group(0)).query)["secret"][0]
    token = re.search(r"\bap_[A-Za-z0-9_-]{43}\b", printed).group(0)
    made_by_release, released_columns = rows(storage_config), columns_of(storage_config)
    assert made_by_release["schema_version"] == [(1,)] and recorded_revision(storage_config) == []
    assert len(made_by_release["sessions"]) == 1 and len(made_by_release["totp_configurations"]) == 1

    status = storage_cli("status", *config)
    assert status.exit_code == 0, status.output
    assert "made before schema revisions: schema_version 1" in status.output
    assert "to apply (0001" in status.output
    migrated = storage_cli("migrate", *config)
    assert migrated.exit_code == 0, migrated.output
    assert "recorded the database made before schema revisions (schema_version 1) as 0001" in migrated.output

    assert recorded_revision(storage_config) == [latest()]
    upgraded = rows(storage_config, released_columns)
    assert {name: upgraded[name] for name in made_by_release} == made_by_release, "every row as the release left it"
    assert {name: found for name, found in upgraded.items() if name not in made_by_release} == {
        name: [] for name in LATER_TABLES}, "later revisions add tables"
    assert differences_from_the_code(storage_config) == []
    assert "state:            up to date" in storage_cli("status", *config).output

    verify = portal + "/api/verify"
    with ServedPortal(portal_setup):
        signed_in = http.get(verify, headers={"X-Original-URL": PROM, "X-Original-Method": "GET"})
        assert signed_in.status_code == 200 and signed_in.headers["Remote-User"] == "alice"
        by_token = requests.get(verify, headers={"X-Original-URL": PROM, "X-Original-Method": "GET",
                                                 "Authorization": f"Bearer {token}"})
        assert by_token.status_code == 200 and by_token.headers["Remote-User"] == "alice"

        admin = {"X-Original-URL": ADMIN_API, "X-Original-Method": "GET"}
        assert http.get(verify, headers=admin).status_code == 401  # one factor so far
        form = {"csrf_token": csrf_from(http.get(portal + "/2fa").text), "code": pyotp.TOTP(secret).now()}
        assert http.post(portal + "/2fa", data=form, allow_redirects=False).status_code == 302
        assert http.get(verify, headers=admin).status_code == 200, "the released code's secret opens"


def test_revisions_build_exactly_the_schema_the_released_code_built(released, backend, tmp_path, request):
    """Revision 0001 on an empty database gives what the released `create_all` gave, table for table; the
    later revisions then reach the code's schema."""
    by_release, by_revisions = (fresh_database(request, tmp_path / name) for name in ("released", "revisions"))
    write_config(tmp_path / "released.yml", by_release)
    # Any released command that opens the database creates its schema (`Storage.migrate`: create_all).
    run_released(released, "-m", "authportal", "tokens", "list", "--config", str(tmp_path / "released.yml"))
    store = Storage(by_revisions)
    try:
        store.migrate("0001")
        assert schema_of(by_revisions) == schema_of(by_release)
        store.migrate()
    finally:
        store.close()
    assert differences_from_the_code(by_revisions) == []
    assert rows(by_revisions)["schema_version"] == [(1,)], "releases before revisions still read it"


# Several instances starting at once.

def test_instances_starting_at_once_migrate_one_after_the_other(backend, tmp_path, request):
    storage_config = fresh_database(request, tmp_path / "shared")
    config = write_config(tmp_path / "config.yml", storage_config)
    with holding_the_migration_lock(storage_config) as wait_for_waiters:
        starting = [subprocess.Popen([sys.executable, "-m", "authportal", "storage", "migrate", "--config", config],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    for _ in range(2)]
        wait_for_waiters(starting)
    outputs = [process.communicate(timeout=60)[0] for process in starting]
    assert [process.returncode for process in starting] == [0, 0], outputs
    assert sorted("applied 0001" in out for out in outputs) == [False, True], outputs
    assert any(f"already at the latest revision, {latest()}" in out for out in outputs), outputs
    assert recorded_revision(storage_config) == [latest()]
    assert rows(storage_config)["schema_version"] == [(1,)]
    assert differences_from_the_code(storage_config) == []


# A database this code cannot serve.

def test_a_database_migrated_by_a_newer_authportal_is_refused_and_left_alone(backend, tmp_path, request):
    storage_config = fresh_database(request, tmp_path / "newer")
    config = write_config(tmp_path / "config.yml", storage_config)
    store = Storage(storage_config)
    try:
        store.migrate()
        with store.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
        with pytest.raises(StorageUnavailable, match="revision 0099, which this authportal does not know"):
            store.migrate()
    finally:
        store.close()
    for command in ("migrate", "status"):
        result = storage_cli(command, "--config", config)
        assert result.exit_code == 1, result.output
        assert "a newer authportal migrated it" in result.output
    assert "current revision: 0099 (unknown to this authportal)" in storage_cli("status", "--config", config).output
    assert recorded_revision(storage_config) == ["0099"]


def test_the_server_refuses_to_start_on_a_newer_database(portal_setup):
    store = Storage(load_config(str(portal_setup.config_path)).storage)
    try:
        store.migrate()
        with store.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    finally:
        store.close()
    served = subprocess.run([sys.executable, "-m", "authportal", "serve", "--config", str(portal_setup.config_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert served.returncode == 1
    assert "cannot start: the database schema is at revision 0099" in served.stderr
    assert "a newer authportal migrated it" in served.stderr


def test_a_release_before_revisions_with_a_higher_schema_version_is_refused(tmp_path):
    """schema_version 2 without a recorded revision: what the released code already refused, refused still."""
    storage_config = StorageConfig(sqlite=SqliteConfig(path=tmp_path / "db.sqlite3"))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        conn.execute(sa.text("INSERT INTO schema_version VALUES (2)"))
    engine.dispose()
    result = storage_cli("migrate", "--config", write_config(tmp_path / "config.yml", storage_config))
    assert result.exit_code == 1
    assert "the database schema is version 2, newer than this authportal" in result.output
    assert recorded_revision(storage_config) == []


def test_status_reads_without_creating_and_config_errors_exit_2(tmp_path):
    storage_config = StorageConfig(sqlite=SqliteConfig(path=tmp_path / "data" / "db.sqlite3"))
    config = write_config(tmp_path / "config.yml", storage_config)
    result = storage_cli("status", "--config", config)
    assert result.exit_code == 0, result.output
    assert "current revision: none (the file does not exist yet)" in result.output
    assert f"{len(REVISIONS)} revisions to apply ({', '.join(REVISIONS)})" in result.output
    assert not (tmp_path / "data").exists()
    (tmp_path / "broken.yml").write_text("storage: {sqlite: {path: 3, colour: blue}}\n")
    for command in ("status", "migrate"):
        assert storage_cli(command, "--config", str(tmp_path / "broken.yml")).exit_code == 2
        assert storage_cli(command, "--config", str(tmp_path / "missing.yml")).exit_code == 2


# Helpers: databases, configs, schemas, the lock.

@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


def fresh_database(request: pytest.FixtureRequest, path: Path) -> StorageConfig:
    """An empty database of the test's backend (`backend` fixture): a SQLite file, or a PostgreSQL database."""
    if request.getfixturevalue("backend") == "sqlite":
        return StorageConfig(sqlite=SqliteConfig(path=path.with_suffix(".sqlite3")))
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    request.addfinalizer(lambda: server.drop_database(name))
    return StorageConfig(postgres=PostgresConfig(url=server.url(name)))


def write_config(path: Path, storage_config: StorageConfig) -> str:
    """A minimal portal config around `storage_config` (enough for the CLI)."""
    storage = (f"sqlite: {{path: '{storage_config.sqlite.path}'}}" if storage_config.sqlite is not None
               else f"postgres: {{url: '{storage_config.postgres.url}'}}")
    users = path.parent / "users.yml"
    if not users.exists():
        users.write_text("users: {}\n")
    path.write_text(f"secret_key: {'k' * 40}\nauthentication: {{backend: file, file: {{path: '{users}'}}}}\n"
                    f"storage: {{{storage}}}\n")
    return str(path)


#: Tables revisions after 0001 added (the released code never had them).
LATER_TABLES = ("webauthn_credentials", "webauthn_users", "webauthn_ceremonies", "identity_links", "bans",
                "regulation_events", "oidc_flows")
#: Every revision, oldest first.
REVISIONS = sorted(path.name[:4] for path in (REPO / "authportal" / "migrations" / "versions").glob("0*.py"))


def schema_of(storage_config: StorageConfig) -> object:
    """The schema as the database itself describes it, without Alembic's version table."""
    left_out = ("alembic_version",)
    if storage_config.sqlite is not None:
        engine = sa.create_engine(f"sqlite:///{storage_config.sqlite.path}")
        try:
            with engine.connect() as conn:
                return sorted(tuple(row) for row in conn.exec_driver_sql(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master") if row[2] not in left_out)
        finally:
            engine.dispose()
    url = sa.make_url(storage_config.postgres.url)
    dump = subprocess.run(
        [require_binary("pg_dump"), "--schema-only", "--no-owner", *(f"--exclude-table={t}*" for t in left_out),
         "-h", url.host, "-p", str(url.port), "-U", url.username, url.database],
        env=dict(os.environ, PGPASSWORD=url.password), capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return [line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict", "--"))]


@contextmanager
def holding_the_migration_lock(storage_config: StorageConfig) -> Iterator[Callable[[list[subprocess.Popen]], None]]:
    """Hold the lock `Storage.migrate` takes; the function it gives returns once the processes all wait on it."""
    if storage_config.sqlite is not None:
        path = storage_config.sqlite.path
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")

        def opened_the_database(process: subprocess.Popen) -> bool:  # the next step is BEGIN IMMEDIATE: it waits
            assert process.poll() is None, "an instance did not wait for the migration lock"
            fds = Path(f"/proc/{process.pid}/fd")
            return any(os.path.realpath(fd) == str(path) for fd in fds.iterdir())

        try:
            yield lambda processes: wait_until(lambda: all(map(opened_the_database, processes)), timeout=30,
                                               what="both instances at the migration lock")
        finally:
            holder.execute("COMMIT")
            holder.close()
        return
    engine = sa.create_engine(sa.make_url(storage_config.postgres.url).set(drivername="postgresql+psycopg"))
    waiting = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    try:
        with engine.connect() as holder, engine.connect() as probe:
            holder.execute(sa.select(sa.func.pg_advisory_lock(MIGRATION_LOCK)))
            yield lambda processes: wait_until(lambda: probe.execute(waiting).scalar() == len(processes),
                                               timeout=30, what="both instances waiting for the migration lock")
            holder.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK)))
    finally:
        engine.dispose()
