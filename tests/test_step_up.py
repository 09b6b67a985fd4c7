"""Step-up (`max_age` on a rule): inside a live session that signed in too long ago, a dangerous path asks for
the password again (and the second factor, for a two_factor rule), then passes; ordinary paths never ask, and
machine credentials are unaffected. In-process, and through real nginx."""
from __future__ import annotations

import json
import sqlite3
import time
from urllib.parse import parse_qs, quote, urlsplit

import pyotp
import pytest
import requests

from tests.servers import wait_until
from tests.support.in_process import PORTAL, PROM, ProxiedClient, csrf, post_login, verify
from tests.support.portal import SEED_RULES, USERS, basic_header, csrf_from, login
from tests.support.stacks import nginx_stack

ADMIN = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"
SILENCE = "http://app.example.test/alertmanager/api/v2/silences/abc"
#: The seed rules, with a 5-minute step-up on the admin API (two_factor) and on deleting a silence (one_factor).
STEP_UP_RULES = [
    {"domain": ["app.example.test"], "resources": ["^/prometheus/api/v1/admin/"], "subject": ["group:admins"],
     "policy": "two_factor", "max_age": "5m"},
    {"domain": ["app.example.test"], "resources": ["^/alertmanager/api/v2/silences"], "methods": ["DELETE"],
     "subject": ["group:admins"], "policy": "one_factor", "max_age": "5m"},
    *SEED_RULES,
]


@pytest.fixture
def app(app_with):
    return app_with(access_control={"default_policy": "deny", "rules": STEP_UP_RULES})


def age(app, session_id: str, seconds: float) -> None:
    """Make the session's sign-in `seconds` old (as if signed in that long ago)."""
    sessions = app.portal.sessions
    data = sessions.get(session_id)
    then = time.time() - seconds
    sessions.update(session_id, dict(data, authenticated_at=then, second_factor_at=then))


def went(response) -> tuple[str, dict[str, list[str]]]:
    """Where a redirect sends the browser: its path and query."""
    location = urlsplit(response.headers["Location"])
    return location.path, parse_qs(location.query)


def test_an_old_sign_in_must_confirm_the_password_and_second_factor_for_the_admin_api(app):
    secret = app.portal.totp.provision("alice")
    client = ProxiedClient(app)
    assert post_login(client, "alice").status_code == 302
    code = client.post("/2fa", base_url=PORTAL, data={"csrf_token": csrf(client, "/2fa"),
                                                     "code": pyotp.TOTP(secret).now()})
    assert code.status_code == 302
    admin = {"X-Original-URL": ADMIN, "X-Original-Method": "POST"}
    assert client.get("/api/verify", base_url=PORTAL, headers=admin).status_code == 200
    sid = client.get_cookie("authportal_session", domain="example.test").value
    age(app, sid, 600)

    asked = client.get("/api/verify", base_url=PORTAL, headers=admin)
    assert asked.status_code == 401 and asked.headers["Location"].endswith(f"/?rd={quote(ADMIN, safe='')}&rm=POST")
    assert verify(client, PROM).status_code == 200, "ordinary paths do not ask"
    # the login page, for a signed-in user whose sign-in is too old for the target: "Confirm it's you"
    landing = client.get(f"/?rd={quote(ADMIN, safe='')}", base_url=PORTAL)
    assert went(landing) == ("/confirm", {"rd": [ADMIN]})
    page = client.get(landing.headers["Location"], base_url=PORTAL).get_data(as_text=True)
    assert "Confirm it's you" in page and "app.example.test" in page
    form = {"csrf_token": csrf_from(page), "rd": ADMIN}
    wrong = client.post("/confirm", base_url=PORTAL, data={**form, "password": "nope"})
    assert wrong.status_code == 401
    confirmed = client.post("/confirm", base_url=PORTAL, data={**form, "password": USERS["alice"]["password"]})
    assert went(confirmed) == ("/2fa", {"rd": [ADMIN], "fresh": ["1"]})  # two_factor: the code too
    assert client.get("/api/verify", base_url=PORTAL, headers=admin).status_code == 401
    second = client.post("/2fa", base_url=PORTAL, data={
        "csrf_token": csrf(client, "/2fa?fresh=1"), "code": pyotp.TOTP(secret).at(time.time() + 30), "rd": ADMIN,
        "fresh": "1"})
    assert second.headers["Location"] == ADMIN
    assert client.get("/api/verify", base_url=PORTAL, headers=admin).status_code == 200


def test_a_one_factor_step_up_asks_only_the_password_and_machines_are_unaffected(app):
    client = ProxiedClient(app)
    assert post_login(client, "alice").status_code == 302
    delete = {"X-Original-URL": SILENCE, "X-Original-Method": "DELETE"}
    assert client.get("/api/verify", base_url=PORTAL, headers=delete).status_code == 200
    age(app, client.get_cookie("authportal_session", domain="example.test").value, 301)
    asked = client.get("/api/verify", base_url=PORTAL, headers=delete)
    assert asked.status_code == 401 and asked.headers["Location"].endswith("&rm=DELETE")
    # the same page by GET has no step-up rule: only the DELETE asks
    assert went(client.get(f"/?rd={quote(SILENCE, safe='')}", base_url=PORTAL)) == ("/alertmanager/api/v2/silences/abc", {})
    assert went(client.get(f"/?rd={quote(SILENCE, safe='')}&rm=DELETE", base_url=PORTAL))[0] == "/confirm"
    confirmed = client.post("/confirm", base_url=PORTAL, data={
        "csrf_token": csrf(client, "/confirm"), "rd": SILENCE, "rm": "DELETE", "password": USERS["alice"]["password"]})
    assert confirmed.headers["Location"] == SILENCE
    assert client.get("/api/verify", base_url=PORTAL, headers=delete).status_code == 200
    machine = ProxiedClient(app, use_cookies=False)
    by_basic = machine.get("/api/verify", base_url=PORTAL, headers={**delete, "Authorization": basic_header("alice")})
    assert by_basic.status_code == 200, "Basic proves the password on every request"


def test_through_nginx_an_old_session_confirms_then_passes(tmp_path, upstream):
    backend = f"127.0.0.1:{upstream.port}"
    with nginx_stack("seed-layout", tmp_path, {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend},
                     portal_overrides={"access_control": {"default_policy": "deny", "rules": STEP_UP_RULES}}) as stack:
        http = requests.Session()
        url = stack.url("app.example.test", "/alertmanager/api/v2/silences/xyz")
        assert login(http, stack.portal_base, "alice").status_code == 302
        assert http.delete(url, allow_redirects=False, timeout=10).status_code == 200
        database = stack.portal.setup.directory / "db.sqlite3"
        with sqlite3.connect(database) as db:  # the session signed in ten minutes ago
            [(sid, data)] = db.execute("SELECT id, data FROM sessions WHERE username = 'alice'").fetchall()
            record = json.loads(data)
            record["authenticated_at"] -= 600
            db.execute("UPDATE sessions SET data = ? WHERE id = ?", (json.dumps(record), sid))
        # the verify path caches a session for session.cache_ttl (1 s): then it reads the old sign-in
        wait_until(lambda: http.delete(url, allow_redirects=False, timeout=10).status_code == 302, timeout=15,
                   what="step-up asked")
        assert http.get(stack.url("app.example.test", "/prometheus/graph"), allow_redirects=False,
                        timeout=10).status_code == 200, "ordinary paths do not ask"
        asked = http.delete(url, allow_redirects=False, timeout=10)
        assert parse_qs(urlsplit(asked.headers["Location"]).query) == {"rd": [url], "rm": ["DELETE"]}
        landing = http.get(asked.headers["Location"], allow_redirects=False, timeout=10)
        assert went(landing) == ("/confirm", {"rd": [url], "rm": ["DELETE"]})
        page = http.get(stack.portal_base + landing.headers["Location"], timeout=10).text
        assert 'name="rm" value="DELETE"' in page
        done = http.post(stack.portal_base + "/confirm", allow_redirects=False, timeout=10, data={
            "csrf_token": csrf_from(page), "rd": url, "rm": "DELETE", "password": USERS["alice"]["password"]})
        assert done.headers["Location"] == url
        assert http.delete(url, allow_redirects=False, timeout=10).status_code == 200
