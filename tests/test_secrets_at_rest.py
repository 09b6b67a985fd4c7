"""Secrets at rest (issue 14): a stolen database, WAL or Redis dump holds no TOTP seed and no password in clear.

alice signs in to the served portal, enrolls a device through the pages with a
real code, an administrator resets it (`authportal totp reset`), she enrolls
again and then opens the setup page once more without finishing (a pending
seed sits in her session). Every file the stores wrote is then read as raw
bytes, as a thief with a copy of the disk would: the SQLite database with its
`-wal`/`-shm`/`-journal` while the portal runs and again after it stopped, the
PostgreSQL cluster directory after a CHECKPOINT, and a Redis dump after SAVE.
In SQLite's files not even the replaced device's sealed seed may remain
(PostgreSQL keeps dead rows and WAL segments: there only the sealing protects).
"""
from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyotp
import pytest
import redis
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from authportal.cli.totp import totp as totp_cli
from authportal.config import load_config
from authportal.storage import Storage, totp_configurations
from tests.servers.redis import RedisServer
from tests.support.portal import USERS, PortalSetup, ServedPortal, csrf_from, login

SECRET_ON_PAGE = re.compile(r'<code id="totp-secret">((?:[A-Z2-7]{4} )*[A-Z2-7]{1,4})</code>')


@pytest.fixture(scope="module")
def dump_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own whose dumps are uncompressed: LZF would split a seed and hide it from grep."""
    with RedisServer() as server:
        redis.Redis.from_url(server.url).config_set("rdbcompression", "no")
        yield server


@pytest.fixture(params=["sessions_in_database", "sessions_in_redis"])
def sessions_in(request: pytest.FixtureRequest) -> RedisServer | None:
    return request.getfixturevalue("dump_redis") if request.param == "sessions_in_redis" else None


@pytest.fixture
def portal_setup(portal_setup_both_storages: PortalSetup, sessions_in: RedisServer | None) -> PortalSetup:
    """SQLite or PostgreSQL (parametrized), with sessions in that database or in Redis."""
    if sessions_in is not None:
        portal_setup_both_storages.write(session={"redis": {"url": sessions_in.url}})
    return portal_setup_both_storages


def open_setup_page(http: requests.Session, portal_url: str) -> tuple[str, str]:
    """The enrollment page as alice's browser sees it: the seed shown to her, and the form's CSRF token."""
    page = http.get(portal_url + "/2fa/setup", allow_redirects=False)
    assert page.status_code == 200, page.text
    match = SECRET_ON_PAGE.search(page.text)
    assert match, "no secret on the enrollment page"
    return match.group(1).replace(" ", ""), csrf_from(page.text)


def enroll(http: requests.Session, portal_url: str) -> str:
    """Scan the seed into an authenticator and type its current code; returns the seed."""
    secret, token = open_setup_page(http, portal_url)
    confirmed = http.post(portal_url + "/2fa/setup", data={"csrf_token": token, "code": pyotp.TOTP(secret).now()},
                          allow_redirects=False)
    assert confirmed.status_code == 302, confirmed.text
    return secret


def stored_seed(setup: PortalSetup, username: str) -> bytes:
    """The device's seed as the database holds it (sealed), read as the CLI would."""
    storage = Storage(load_config(setup.config_path).storage)
    try:
        with storage.connect() as conn:
            query = sa.select(totp_configurations.c.secret).where(totp_configurations.c.username == username)
            return bytes(conn.execute(query).scalar_one())
    finally:
        storage.close()


def needles(secrets: dict[str, str]) -> dict[str, bytes]:
    """What must not be found, by a label that does not itself reveal it."""
    found = {"alice's password": USERS["alice"]["password"].encode()}
    for label, secret in secrets.items():
        found[f"{label} seed (base32)"] = secret.encode()
        found[f"{label} seed (raw bytes)"] = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return found


def leaks(files: list[Path], wanted: dict[str, bytes], root: Path, moment: str) -> list[str]:
    found = []
    for path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # PostgreSQL removed a temporary file meanwhile
            continue
        found += [f"{label} in {path.relative_to(root)} ({moment})" for label, needle in wanted.items()
                  if needle in data]
    return found


def files_under(directory: Path, pattern: str = "*") -> list[Path]:
    return [path for path in directory.rglob(pattern) if path.is_file()]  # not the PostgreSQL socket


def test_no_seed_and_no_password_in_any_file_the_stores_wrote(portal_setup, sessions_in, request):
    sqlite_dir = portal_setup.directory

    def sqlite_leaks(wanted: dict[str, bytes], moment: str) -> list[str]:
        return leaks(files_under(sqlite_dir, "db.sqlite3*"), wanted, sqlite_dir.parent, moment)

    served = ServedPortal(portal_setup).start()
    try:
        http = requests.Session()
        portal_url = portal_setup.document()["server"]["portal_url"]
        assert login(http, portal_url, "alice").status_code == 302
        secrets = {"first enrolled": enroll(http, portal_url)}
        replaced = {"the replaced device's sealed seed": stored_seed(portal_setup, "alice")}

        reset = CliRunner().invoke(totp_cli, ["reset", "--config", str(portal_setup.config_path), "alice"])
        assert reset.exit_code == 0 and "TOTP device removed" in reset.output, reset.output
        found = sqlite_leaks(replaced, "after the reset")
        secrets["second enrolled"] = enroll(http, portal_url)
        secrets["pending"], _ = open_setup_page(http, portal_url)  # replacing the device, not finished
        assert len(set(secrets.values())) == 3
        wanted = needles(secrets)

        found += sqlite_leaks(wanted | replaced, "portal running")
        if portal_setup.document()["storage"].get("postgres"):
            cluster = request.getfixturevalue("postgres_server")
            with psycopg.connect(cluster.url(), autocommit=True) as conn:
                conn.execute("CHECKPOINT")  # dirty pages reach the data files
            found += leaks(files_under(cluster.directory), wanted, cluster.directory.parent, "after CHECKPOINT")
        if sessions_in is not None:
            redis.Redis.from_url(sessions_in.url).save()
            found += leaks([sessions_in.dir / "dump.rdb"], wanted, sessions_in.dir.parent, "after SAVE")
    finally:
        served.stop()
    found += sqlite_leaks(wanted | replaced, "portal stopped")  # a copy of a stopped server's disk
    assert not found, "secrets readable at rest:\n" + "\n".join(found)
