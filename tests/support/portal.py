"""Test harness for the portal itself: demo users, config files, a served portal, a logged-in client.

`PortalSetup` writes a real config + users file in a temp dir; `ServedPortal`
runs `authportal serve` on it as a subprocess (the real server, granian).
Names under `.example.test` resolve to 127.0.0.1 for `requests` (see
conftest), as Chromium's host-resolver rules do for the browser test.
"""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import requests
import urllib3.util.connection
import yaml

from authportal.config import PasswordHashConfig
from authportal.passwords import PasswordHasher
from tests.servers import free_port, stop_process, tail, wait_until

#: Cheap argon2id parameters for tests (production defaults are t=3, m=64 MiB, p=4).
TEST_HASH = {"iterations": 1, "memory": 8192, "parallelism": 1}

USERS = {
    "alice": {"password": "alice-Secret-1", "displayname": "Alice Admin", "email": "alice@example.test",
              "groups": ["admins", "monitoring"]},
    "bob": {"password": "bob-Secret-2", "displayname": "Bob Viewer", "email": "bob@example.test",
            "groups": ["monitoring"]},
    "carol": {"password": "carol-Secret-3", "displayname": "Carol", "email": "carol@example.test", "groups": []},
    "dave": {"password": "dave-Secret-4", "displayname": "Dave", "email": "dave@example.test",
             "groups": ["monitoring"], "disabled": True},
}

SECRET_KEY = "test-secret-key-" + "0123456789abcdef" * 2

#: The seed layout (examples/nginx/seed-layout.conf, subdomains.conf): Prometheus and Alertmanager under one host,
#: and on their own subdomains.
SEED_RULES: list[dict[str, Any]] = [
    {"domain": ["app.example.test"], "resources": ["^/public/"], "policy": "bypass"},
    {"domain": ["app.example.test", "prometheus.example.test"], "resources": ["^/(prometheus/)?api/v1/admin/"],
     "subject": ["group:admins"], "policy": "two_factor"},
    {"domain": ["app.example.test", "prometheus.example.test"], "resources": ["^/(prometheus/)?api/v1/admin/"],
     "policy": "deny"},
    {"domain": ["app.example.test", "alertmanager.example.test"],
     "resources": ["^/(alertmanager/)?api/v2/silences"], "methods": ["POST", "DELETE"],
     "subject": ["group:admins"], "policy": "two_factor"},
    {"domain": ["app.example.test", "alertmanager.example.test"],
     "resources": ["^/(alertmanager/)?api/v2/silences"], "methods": ["POST", "DELETE"], "policy": "deny"},
    {"domain": ["app.example.test"], "resources": ["^/prometheus/", "^/alertmanager/"],
     "subject": ["group:monitoring"], "policy": "one_factor"},
    {"domain": ["prometheus.example.test"], "subject": ["group:monitoring"], "policy": "one_factor"},
    {"domain": ["alertmanager.example.test"], "subject": ["group:admins"], "policy": "one_factor"},
]


#: The test domains that resolve to loopback: example.test, and corp.test (a second cookie domain).
TEST_DOMAINS = (".example.test", ".corp.test")


def resolve_example_test() -> None:
    """`*.example.test` and `*.corp.test` -> 127.0.0.1 for `requests` (the proxies under test listen there), like Chromium's rules."""
    real = urllib3.util.connection.create_connection
    if getattr(real, "resolves_example_test", False):
        return

    def create_connection(address, *args, **kwargs):
        host, port = address
        if host.endswith(TEST_DOMAINS) or "." + host in TEST_DOMAINS:
            host = "127.0.0.1"
        return real((host, port), *args, **kwargs)

    create_connection.resolves_example_test = True
    urllib3.util.connection.create_connection = create_connection


@cache
def hashed(password: str) -> str:
    return PasswordHasher(PasswordHashConfig(**TEST_HASH)).hash(password)


def users_document(users: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    entries = {}
    for name, fields in (users or USERS).items():
        entry = {k: v for k, v in fields.items() if k != "password"}
        entry["password"] = fields["password"] if fields["password"].startswith("$") else hashed(fields["password"])
        entries[name] = entry
    return {"users": entries}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class PortalSetup:
    """A config directory: config.yml, users.yml, secret, database."""

    directory: Path
    port: int = field(default_factory=free_port)
    overrides: dict[str, Any] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_users(self.users)
        self.write()

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yml"

    @property
    def users_path(self) -> Path:
        return self.directory / "users.yml"

    def document(self) -> dict[str, Any]:
        base = {
            "server": {"address": f"127.0.0.1:{self.port}", "portal_url": f"http://auth.example.test:{self.port}"},
            "secret_key": SECRET_KEY,
            "session": {"domain": "example.test", "cookie_secure": False},
            "authentication": {"backend": "file", "file": {"path": "users.yml", "password": TEST_HASH}},
            "storage": {"sqlite": {"path": "db.sqlite3"}},
            "regulation": {"minimum_delay": "10ms"},
            "access_control": {"default_policy": "deny", "rules": SEED_RULES},
            "log": {"level": "info", "audit_file": "audit.log"},
        }
        return deep_merge(base, self.overrides)

    def write(self, **overrides: Any) -> PortalSetup:
        self.overrides = deep_merge(self.overrides, overrides)
        self.config_path.write_text(yaml.safe_dump(self.document(), sort_keys=False))
        return self

    def write_users(self, users: dict[str, dict[str, Any]] | None = None) -> None:
        tmp = self.users_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(users_document(users)))
        os.replace(tmp, self.users_path)


class ServedPortal:
    """`authportal serve` as a subprocess, on the setup's port; logs kept for assertions."""

    def __init__(self, setup: PortalSetup, *extra_args: str, env: dict[str, str] | None = None):
        self.setup = setup
        self.args = extra_args
        self.env = env
        self.log = setup.directory / f"serve-{setup.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.setup.port}"

    def start(self) -> ServedPortal:
        env = dict(os.environ, **(self.env or {}))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "authportal", "serve", "--config", str(self.setup.config_path), *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        wait_until(self._live, timeout=30, what="authportal serve", process=self.process, log=self.log)
        return self

    def _live(self) -> bool:
        try:
            return requests.get(self.url + "/api/health/live", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> ServedPortal:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return tail(self.log, 400)

    def replace_users(self, users: dict[str, dict[str, Any]]) -> None:
        """Write the users file and wait for the portal's own word that it re-read it. Not by polling with a new
        user's password: every refused check counts towards a ban (regulation), so polling would ban them."""
        self.setup.write_users(users)
        reloaded = f"users file reloaded: {self.setup.users_path} ({len(users)} users)"
        wait_until(lambda: reloaded in self.logs(), what="users file re-read")

    def __enter__(self) -> ServedPortal:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def basic(user: str, password: str | None = None) -> tuple[str, str]:
    """(user, password) for `requests`' auth=; the user's real password unless one is given."""
    return user, USERS[user]["password"] if password is None else password


def basic_header(user: str, password: str | None = None) -> str:
    """The Authorization header value a client sends for HTTP Basic."""
    return "Basic " + base64.b64encode(":".join(basic(user, password)).encode()).decode()


_CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def csrf_from(html: str) -> str:
    match = _CSRF_RE.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


_TOTP_SECRET_RE = re.compile(r'<code id="totp-secret">((?:[A-Z2-7]{4} )*[A-Z2-7]{1,4})</code>')


def secret_on_page(html: str) -> str:
    """The TOTP secret the enrollment page shows (in groups of four), as an authenticator app would read it."""
    match = _TOTP_SECRET_RE.search(html)
    assert match, "no secret on the enrollment page"
    return match.group(1).replace(" ", "")


def login(http: requests.Session, portal_url: str, user: str, password: str | None = None,
          rd: str | None = None, remember: bool = False) -> requests.Response:
    """Fill the login form like a browser: GET the page, POST the form with its CSRF token."""
    params = {"rd": rd} if rd else {}
    page = http.get(portal_url + "/", params=params, allow_redirects=False)
    form = {"username": user, "password": USERS[user]["password"] if password is None else password,
            "csrf_token": csrf_from(page.text)}
    if rd:
        form["rd"] = rd
    if remember:
        form["remember"] = "1"
    return http.post(portal_url + "/login", data=form, allow_redirects=False)


@contextmanager
def served_pair(base: Path, overrides: dict[str, Any]) -> Iterator[tuple[ServedPortal, ServedPortal]]:
    """Two instances of one config (same secret, session store and database file), on two ports, started."""
    overrides = deep_merge({"storage": {"sqlite": {"path": str(base / "shared.sqlite3")}}}, overrides)
    first = PortalSetup(base / "one", overrides=overrides)
    second = PortalSetup(base / "two", overrides=overrides)
    with ServedPortal(first) as one, ServedPortal(second) as two:
        yield one, two


def portal_base(served: ServedPortal) -> str:
    """The instance's own portal URL (its `server.portal_url`), as a browser would reach it directly."""
    return f"http://auth.example.test:{served.setup.port}"
