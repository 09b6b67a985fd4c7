"""Two real `authportal serve` instances sharing a real Redis: sessions, logouts, restarts, outages, bans.

Tests that only sign in and out share the module's pair (`instances`); a test
that restarts the instances, stops Redis or bans a user gets a Redis and a pair
of its own (`own_instances`), so that no other test meets what it left behind.

Sessions and bans you can see and end (issue 19) run on a pair per store
(`store_instances`: Redis, and the shared database without Redis): a user in
Chromium ends their other browser, an administrator uses /admin and the CLI.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import requests

from tests.servers import wait_until
from tests.servers.browser import ARTIFACTS
from tests.servers.redis import RedisServer
from tests.support.browsing import DESKTOP, PHONE
from tests.support.portal import USERS, PortalSetup, ServedPortal, login

PROM = "http://app.example.test/prometheus/graph"
HEADERS = {"X-Original-URL": PROM, "X-Original-Method": "GET"}
#: Long enough that a busy machine still asks while the ban holds, short enough to wait for its end.
BAN_TIME = 6


@contextmanager
def two_instances(base: Path, store: str = "redis",
                  ban_time: int = BAN_TIME) -> Iterator[tuple[ServedPortal, ServedPortal, RedisServer]]:
    """A Redis and two instances on it, one config (same secret, same Redis, same database), two ports.

    `store="database"`: sessions and bans in the shared database instead (the Redis runs unused)."""
    with RedisServer() as redis:
        overrides = {
            "regulation": {"max_retries": 3, "ban_time": f"{ban_time}s", "find_time": "1m"},
            "storage": {"sqlite": {"path": str(base / "shared.sqlite3")}},
            "administration": {"subject": ["group:admins"]},
        }
        if store == "redis":
            overrides["session"] = {"redis": {"url": redis.url, "timeout": "500ms"}}
        first = PortalSetup(base / "one", overrides=overrides)
        second = PortalSetup(base / "two", overrides=first.overrides)
        second.users_path.write_text(first.users_path.read_text())
        with ServedPortal(first) as one, ServedPortal(second) as two:
            yield one, two, redis


@pytest.fixture(scope="module")
def instances(tmp_path_factory) -> Iterator[tuple[ServedPortal, ServedPortal]]:
    """Shared by the module's tests: none may stop, restart or ban anything on them."""
    with two_instances(tmp_path_factory.mktemp("scale")) as (one, two, _):
        yield one, two


@pytest.fixture
def own_instances(tmp_path) -> Iterator[tuple[ServedPortal, ServedPortal, RedisServer]]:
    """A Redis and two instances of this test's own: it restarts, stops or bans."""
    with two_instances(tmp_path) as started:
        yield started


def portal_url(served: ServedPortal) -> str:
    return f"http://auth.example.test:{served.setup.port}"


def verify(served: ServedPortal, http: requests.Session | None = None, **headers) -> requests.Response:
    return (http or requests).get(portal_url(served) + "/api/verify", headers={**HEADERS, **headers})


def test_login_on_one_instance_is_valid_on_the_other(instances):
    one, two = instances
    http = requests.Session()
    assert login(http, portal_url(one), "bob").status_code == 302
    answer = verify(two, http)
    assert answer.status_code == 200 and answer.headers["Remote-User"] == "bob"


def test_logout_on_one_instance_is_seen_by_the_other_within_the_cache_bound(instances):
    one, two = instances
    http = requests.Session()
    login(http, portal_url(one), "bob")
    assert verify(one, http).status_code == 200  # instance one now holds the session in its cache
    cookie = http.cookies.get("authportal_session")
    page = http.get(portal_url(two) + "/logout").text
    from tests.support.portal import csrf_from

    http.post(portal_url(two) + "/logout", data={"csrf_token": csrf_from(page)}, allow_redirects=False)
    logged_out = time.monotonic()
    replay = {"Cookie": f"authportal_session={cookie}"}
    wait_until(lambda: verify(one, **replay).status_code == 401, timeout=15, what="logout seen by instance one")
    # Documented bound: session.cache_ttl (1 s); Redis pub/sub usually makes it immediate. 3 s is that bound
    # plus the margin a busy machine needs for the polling requests; a cache that never lets go fails the wait.
    assert time.monotonic() - logged_out < 3.0


def test_sessions_survive_a_restart_of_both_instances(own_instances):
    one, two, _ = own_instances
    http = requests.Session()
    login(http, portal_url(one), "bob")
    one.restart()
    two.restart()
    assert verify(one, http).status_code == 200
    assert verify(two, http).headers["Remote-User"] == "bob"


def test_redis_down_denies_and_recovers_without_restart(own_instances):
    one, _, redis = own_instances
    http = requests.Session()
    login(http, portal_url(one), "bob")
    redis.stop()
    try:
        wait_until(lambda: verify(one, http).status_code == 401, timeout=15, what="deny while Redis is down")
        health = requests.get(portal_url(one) + "/api/health")
        assert health.status_code == 503
        assert health.json()["checks"]["redis"]["status"] == "down"
        page = requests.get(portal_url(one) + "/", headers={"Cookie": f"authportal_session={http.cookies['authportal_session']}"})
        assert "unavailable" in page.text
        failed_login = login(requests.Session(), portal_url(one), "bob")
        assert failed_login.status_code == 503 and "unavailable" in failed_login.text
    finally:
        redis.start()
    wait_until(lambda: requests.get(portal_url(one) + "/api/health").status_code == 200, timeout=30,
               what="health back after Redis restart")
    again = requests.Session()
    assert login(again, portal_url(one), "bob").status_code == 302
    assert verify(one, again).status_code == 200


def test_bans_are_shared_and_expire(own_instances):
    one, two, _ = own_instances
    for _ in range(3):
        assert login(requests.Session(), portal_url(one), "alice", "wrong").status_code == 401
    # banned now, on the other instance too, even with the right password, with the same message
    refused = login(requests.Session(), portal_url(two), "alice")
    assert refused.status_code == 401 and "Incorrect username or password." in refused.text
    wait_until(lambda: login(requests.Session(), portal_url(two), "alice").status_code == 302,
               timeout=BAN_TIME + 20, what=f"ban to expire (ban_time {BAN_TIME}s)")


def test_ip_bans_trust_forwarded_for_only_from_proxies(tmp_path):
    setup = PortalSetup(tmp_path, overrides={"regulation": {"max_retries": 50, "ip_max_retries": 2,
                                                            "ban_time": "1m"}})
    with ServedPortal(setup) as served:
        url = portal_url(served)

        def attempt(user: str, password: str | None = None, forwarded: str | None = None) -> int:
            http = requests.Session()
            if forwarded:
                http.headers["X-Forwarded-For"] = forwarded
            return login(http, url, user, password).status_code

        assert attempt("bob", "x", "198.51.100.7") == 401
        assert attempt("carol", "x", "198.51.100.7") == 401
        assert attempt("alice", None, "198.51.100.7") == 401  # that client IP is banned, whoever it claims to be
        assert attempt("alice", None, "198.51.100.8") == 302  # another client is not


def test_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path):
    setup = PortalSetup(tmp_path, overrides={
        "server": {"trusted_proxies": ["10.0.0.0/8"]},  # the tests' 127.0.0.1 is not a proxy here
        "regulation": {"max_retries": 50, "ip_max_retries": 2, "ban_time": "1m"}})
    with ServedPortal(setup) as served:
        url = portal_url(served)
        for fake in ("198.51.100.1", "198.51.100.2"):  # rotating a forged header does not escape the ban
            http = requests.Session()
            http.headers["X-Forwarded-For"] = fake
            assert login(http, url, "bob", "x").status_code == 401
        http = requests.Session()
        http.headers["X-Forwarded-For"] = "198.51.100.3"
        assert login(http, url, "alice").status_code == 401  # 127.0.0.1 itself is banned


# -- Sessions and bans you can see and end (issue 19), on each store -----------------------------------------------

@pytest.fixture(scope="module", params=["redis", "database"])
def store_instances(request, tmp_path_factory) -> Iterator[tuple[ServedPortal, ServedPortal]]:
    """A pair per store: Redis (the logout broadcast ends a session at once), and the shared database (within
    session.cache_ttl). Its stories end sessions and lift bans of their own users only."""
    with two_instances(tmp_path_factory.mktemp(f"sessions-{request.param}"), request.param, ban_time=600) as (one, two, _):
        yield one, two


def cli(served: ServedPortal, *args: str) -> subprocess.CompletedProcess:
    """The real `authportal` command on the instances' config, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "authportal", *args, "--config", str(served.setup.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def refused_within_the_bound(check, what: str) -> float:
    """Wait until `check()` (a verify) is refused; how long that took after the call, printed for the note."""
    started = time.monotonic()
    wait_until(check, timeout=15, what=what)
    took = time.monotonic() - started
    print(f"\n{what}: refused after {took * 1000:.0f} ms")
    return took


def chromium_sign_in(page, served: ServedPortal, user: str, secret: str | None = None) -> None:
    page.goto(portal_url(served) + "/")
    page.fill("#username", user)
    page.fill("#password", USERS[user]["password"])
    with page.expect_navigation():
        page.click("button[type=submit]")
    if secret is not None:
        page.fill("#code", pyotp.TOTP(secret).now())
        with page.expect_navigation():
            page.click("form:has(#code) button[type=submit]")


def screenshots(page, name: str, element: str | None = None) -> None:
    """`name`-desktop.png and `name`-phone.png in test-artifacts; no sideways scrolling on the phone."""
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        path = str(ARTIFACTS / f"{name}-{width}.png")
        page.locator(element).screenshot(path=path) if element else page.screenshot(path=path, full_page=False)
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], f"{name} scrolls sideways"
    page.set_viewport_size(DESKTOP)


def test_a_user_sees_both_browsers_ends_the_other_and_every_instance_refuses_it(store_instances, browser, request):
    one, two = store_instances
    store = request.node.callspec.params["store_instances"]
    other = requests.Session()
    assert login(other, portal_url(two), "bob").status_code == 302
    assert verify(two, other).status_code == 200  # instance two now holds it in its cache
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        chromium_sign_in(page, one, "bob")
        sessions = page.locator("#sessions")
        assert sessions.locator("li").count() == 2
        assert "HeadlessChrome on Linux" in sessions.inner_text() and "Python Requests" in sessions.inner_text()
        assert sessions.locator(".this-session").count() == 1
        if store == "redis":
            screenshots(page, "account-sessions", "#sessions")
        assert verify(two, other).status_code == 200  # instance two holds it in its cache now
        with page.expect_navigation():
            page.get_by_role("button", name=re.compile("^Sign out Python Requests")).click()
        refused_within_the_bound(lambda: verify(two, other).status_code == 401,
                                 f"{store}: the other browser's next verify on the other instance")
        assert "That session was signed out." in page.locator("[role=status]").inner_text()
        assert page.locator("#sessions li").count() == 1
        assert verify(one, headers_of(context)).status_code == 200, "this browser stays signed in"
    finally:
        context.close()


def headers_of(context) -> requests.Session:
    """A requests session holding the browser's cookies (Playwright's own HTTP client ignores our host rules)."""
    http = requests.Session()
    for cookie in context.cookies():
        http.cookies.set(cookie["name"], cookie["value"], domain=cookie["domain"], path=cookie["path"])
    return http


def test_the_admin_lists_ends_a_users_sessions_lifts_a_ban_and_revokes_a_token(store_instances, browser, request):
    one, two = store_instances
    store = request.node.callspec.params["store_instances"]
    secret = parse_qs(urlsplit(re.search(r"otpauth://\S+", cli(one, "totp", "generate", "alice", "--force").stdout)
                               .group(0)).query)["secret"][0]
    bobs = [requests.Session(), requests.Session()]
    for http, served in zip(bobs, (one, two), strict=True):
        assert login(http, portal_url(served), "bob").status_code == 302
        assert verify(two, http).status_code == 200
    for _ in range(3):  # regulation.max_retries: carol is banned on both instances
        login(requests.Session(), portal_url(one), "carol", "wrong")
    token = cli(one, "tokens", "create", "bob", "--name", f"grafana-{store}").stdout.strip()
    bearer = {"Authorization": f"Bearer {token}"}
    assert verify(one, **bearer).status_code == 200  # instance one now remembers the token

    listed = json.loads(cli(one, "sessions", "list", "--user", "bob", "--json").stdout)
    assert {s["instance"] for s in listed} >= {f"{socket.gethostname()}:{served.setup.port}" for served in (one, two)}
    assert all(http.cookies["authportal_session"] not in json.dumps(listed) for http in bobs)
    assert "carol" in cli(one, "bans", "list").stdout

    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        chromium_sign_in(page, two, "alice", secret)
        page.goto(portal_url(two) + "/admin")
        assert "the user, from anywhere" in page.locator("#bans").inner_text()
        assert "Python Requests" in page.locator("#sessions").inner_text()
        assert "session_revoke" in page.locator("#audit").inner_text() or "login_success" in page.locator("#audit").inner_text()
        if store == "redis":
            screenshots(page, "admin")
            page.locator("#audit").screenshot(path=str(ARTIFACTS / "admin-audit-desktop.png"))
        page.fill("#user-filter", "bob")
        with page.expect_navigation():
            page.click("form.filter button")
        assert all(verify(two, http).status_code == 200 for http in bobs)  # in instance two's cache now
        with page.expect_navigation():
            page.click("text=End all sessions of bob")
        assert page.locator("[role=status]").inner_text() == "The sessions were ended."
        refused_within_the_bound(lambda: all(verify(served, http).status_code == 401
                                             for served in (one, two) for http in bobs),
                                 f"{store}: bob's sessions on both instances after /admin ended them")
        page.goto(portal_url(two) + "/admin")
        with page.expect_navigation():
            page.get_by_role("button", name="Lift the ban on carol").click()
        assert login(requests.Session(), portal_url(one), "carol").status_code == 302
        assert verify(one, **bearer).status_code == 200  # in instance one's token cache now
        with page.expect_navigation():
            page.get_by_role("button", name=re.compile(f"^Revoke bob's token grafana-{store}")).click()
        refused_within_the_bound(lambda: verify(one, **bearer).status_code == 401,
                                 f"{store}: the token on the other instance after /admin revoked it")
    finally:
        context.close()
    audit = [json.loads(line) for line in (one.setup.directory / "audit.log").read_text().splitlines()
             + (two.setup.directory / "audit.log").read_text().splitlines()]
    by_admin = [(e["event"], e["actor"], e["user"]) for e in audit if e.get("via") == "admin"]
    assert sorted(set(by_admin)) == [("ban_lift", "alice", "carol"), ("session_revoke", "alice", "bob"),
                                     ("token_revoke", "alice", "bob")]
    assert any(e["event"] == "sessions_list" and e["actor"].startswith("cli") for e in audit)
