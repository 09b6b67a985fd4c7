"""Storage fixtures: the same test runs against SQLite and a real PostgreSQL.

`storage_config` / `storage` are parametrized over both backends; PostgreSQL
starts once per session, and only when a postgres-parametrized test runs.
Each test gets its own SQLite file or its own PostgreSQL database.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from authportal.config import PostgresConfig, SqliteConfig, StorageConfig
from authportal.storage import Storage

from .postgres import PostgresServer, start_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def storage_config(request: pytest.FixtureRequest, tmp_path) -> Iterator[StorageConfig]:
    """A StorageConfig pointing at an empty database of the parametrized backend."""
    if request.param == "sqlite":
        yield StorageConfig(sqlite=SqliteConfig(path=tmp_path / "db.sqlite3"))
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        yield StorageConfig(postgres=PostgresConfig(url=server.url(name)))
    finally:
        server.drop_database(name)  # WITH (FORCE): connections a test left open do not block it


@pytest.fixture
def storage(storage_config: StorageConfig) -> Iterator[Storage]:
    """A migrated Storage on the parametrized backend."""
    store = Storage(storage_config)
    store.migrate()
    try:
        yield store
    finally:
        store.close()
