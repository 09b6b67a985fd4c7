"""A throwaway PostgreSQL 15 cluster on a free loopback port (Debian's binaries, /usr/lib/postgresql/15/bin).

initdb refuses to run as root, so under root the cluster belongs to the
`postgres` user and lives in its own directory under /dev/shm or /tmp
(pytest's tmp dirs are private to root). The socket goes to that directory too (`-k`), leaving
Debian's own cluster alone. Tests get a fresh database each via
`create_database()`.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from . import free_port, require_binary, tail, wait_until

USER = "app"


@dataclass
class PostgresServer:
    directory: Path
    port: int
    password: str
    pg_ctl: str

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy/libpq URL for `database` on this cluster."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection:
        # CREATE/DROP DATABASE cannot run inside a transaction.
        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password,
                               dbname="postgres", autocommit=True, connect_timeout=3)

    def create_database(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        _run_as_owner([self.pg_ctl, "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop"], check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


def _run_as_owner(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def start_postgres() -> PostgresServer:
    initdb = require_binary("initdb")
    pg_ctl = require_binary("pg_ctl")
    directory = Path(tempfile.mkdtemp(prefix="authportal-pg-", dir=_fast_tmp()))
    password = secrets.token_hex(16)
    (directory / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
        shutil.chown(directory / "pw", "postgres", "postgres")
    server = PostgresServer(directory, free_port(), password, pg_ctl)
    log = directory / "pg.log"
    try:
        _run_as_owner([initdb, "-D", str(directory / "data"), "-U", USER, f"--pwfile={directory / 'pw'}",
                       "-A", "scram-sha-256", "--no-sync", "--locale=C.UTF-8"])
        options = (f"-p {server.port} -k {directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        _run_as_owner([pg_ctl, "-D", str(directory / "data"), "-l", str(log), "-w", "-o", options, "start"])
        wait_until(lambda: _accepts(server), timeout=15, what="postgres", log=log)
    except (subprocess.SubprocessError, RuntimeError, TimeoutError) as exc:
        details = f"{getattr(exc, 'stderr', '') or ''}\n{tail(log)}"
        server.stop()
        raise RuntimeError(f"cannot start postgres: {exc}\n{details}") from exc
    return server


def _fast_tmp() -> str | None:
    """/dev/shm when there is one: CREATE DATABASE takes ~10 ms on tmpfs, ~300 ms on this ext4 disk."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def _accepts(server: PostgresServer) -> bool:
    try:
        with server._admin():
            return True
    except psycopg.OperationalError:
        return False
