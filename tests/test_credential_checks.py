"""Every place that takes a password goes through one path: it bans, evens out its time and audits.

The entry points: the login form, HTTP Basic on the verify path, the password asked again before a second
factor is set up (an authenticator app or a security key) or for a step-up rule, and the current password on
the change form. A new entry point must join `CredentialChecks`; the source test below fails when code calls
a provider's `check_password` anywhere else.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers.slapd import SlapdServer
from tests.support.in_process import PORTAL, PROM, ProxiedClient, csrf, post_login, verify
from tests.support.portal import USERS, basic_header

PACKAGE = Path(__file__).resolve().parents[1] / "authportal"
MAX_RETRIES = 3
MINIMUM_DELAY = 0.3


def test_no_code_checks_a_password_outside_the_one_path():
    callers = [f"{path.relative_to(PACKAGE)}:{number}"
               for path in PACKAGE.rglob("*.py")
               for number, line in enumerate(path.read_text().splitlines(), 1)
               if re.search(r"\.check_password\(", line) and path.name != "credentials.py"]
    assert callers == [], "call CredentialChecks.password instead of the provider: bans, timing, audit"


def _by_form(client, user: str, password: str):
    return post_login(client, user, password)


def _by_basic(client, user: str, password: str):
    return verify(client, PROM, Authorization=basic_header(user, password))


def _by_reauthentication(client, user: str, password: str):
    """alice, signed in, sets up a second factor: the page asks for her password again (window: 0 s)."""
    return client.post("/2fa/setup", base_url=PORTAL, data={"password": password, "csrf_token": csrf(client)})


def _by_key_reauthentication(client, user: str, password: str):
    """alice, signed in, adds a security key: the same password check first."""
    return client.post("/webauthn/setup", base_url=PORTAL, data={"password": password, "csrf_token": csrf(client)})


def _by_password_change(client, user: str, password: str):
    """alice, signed in, changes her password: the current one is checked first."""
    new = "a long walk to the harbour at dawn"
    return client.post("/password", base_url=PORTAL, data={
        "current_password": password, "new_password": new, "confirm_password": new,
        "csrf_token": csrf(client, "/password")})


def _by_step_up(client, user: str, password: str):
    """alice, signed in, confirms it is her for a step-up rule ("Confirm it's you")."""
    return client.post("/confirm", base_url=PORTAL, data={"password": password, "csrf_token": csrf(client, "/confirm")})


#: name -> (the CredentialChecks entry point it uses, how a client sends a password there)
ENTRY_POINTS: dict[str, tuple[str, Callable]] = {
    "form": ("form", _by_form), "basic": ("basic", _by_basic), "reauthentication": ("reauthentication", _by_reauthentication),
    "key_reauthentication": ("reauthentication", _by_key_reauthentication),
    "password_change": ("password_change", _by_password_change),
    "step_up": ("reauthentication", _by_step_up),
}


@pytest.fixture
def regulated_app(app_with):
    # on https (as a proxy that terminates TLS says), where security keys can be added
    return app_with(regulation={"max_retries": MAX_RETRIES, "minimum_delay": MINIMUM_DELAY},
                    totp={"reauthentication": "0s"}, authentication={"credentials_cache_ttl": "0s"},
                    server={"portal_url": "https://auth.example.test"}, password_change={"enable": True})


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_bans_pads_and_audits(regulated_app, entry, caplog):
    client = ProxiedClient(regulated_app)
    via, send = ENTRY_POINTS[entry]
    if via in ("reauthentication", "password_change"):  # signed in first
        assert post_login(client, "alice").status_code == 302
    caplog.set_level(logging.INFO, logger="authportal.audit")
    timer = getattr(regulated_app.portal.checks, via).timer
    for attempt in range(MAX_RETRIES):
        floor = timer.target  # a refusal takes at least this long (a lower bound holds on a busy machine)
        started = time.perf_counter()
        refused = send(client, "alice", f"guess-{attempt}")
        assert refused.status_code == 401
        assert time.perf_counter() - started >= floor
    # the guesses through this entry point banned alice everywhere: the right password no longer opens the form
    assert post_login(ProxiedClient(regulated_app), "alice").status_code == 401
    audited = [(r.audit["event"], r.audit["reason"], r.audit["via"]) for r in caplog.records
               if r.name == "authportal.audit" and r.audit.get("user") == "alice"
               and r.audit["event"].endswith("_failure")]
    event = {"reauthentication": "reauthentication_failure", "password_change": "password_change_failure"}.get(
        via, "login_failure")
    assert audited[:MAX_RETRIES] == [(event, "bad_credentials", via)] * MAX_RETRIES
    assert audited[MAX_RETRIES] == ("login_failure", "banned", "form")


def test_the_form_pads_every_refusal_to_the_minimum_delay(regulated_app):
    assert regulated_app.portal.checks.form.timer.target >= MINIMUM_DELAY


@pytest.mark.parametrize("backend", ["file", "ldap"])
def test_basic_refuses_an_unknown_user_as_slowly_as_a_known_one(app_with, backend, request):
    """Without padding, an unknown name failed faster (no bind; slapd: about 7 ms against 13 ms)."""
    if backend == "ldap":
        slapd = request.getfixturevalue("slapd")
        user, password = "bob", SlapdServer.PASSWORDS["bob"]
        app = app_with(authentication={"backend": "ldap", "credentials_cache_ttl": "0s",
                                       "ldap": slapd.ldap_settings()})
    else:
        user, password = "bob", USERS["bob"]["password"]
        app = app_with(authentication={"credentials_cache_ttl": "0s"})
    client = ProxiedClient(app, use_cookies=False)
    timer = app.portal.checks.basic.timer
    for _ in range(5):  # successes teach the timer how long a real check takes
        assert verify(client, PROM, Authorization=basic_header(user, password)).status_code == 200
    assert timer.target > 0
    for name in ("nobody-at-all", user):
        floor = timer.target
        started = time.perf_counter()
        assert verify(client, PROM, Authorization=basic_header(name, "wrong")).status_code == 401
        assert time.perf_counter() - started >= floor, name
    assert timer.target <= 0.25  # a Basic refusal holds a check slot briefly, never the login form's delay
