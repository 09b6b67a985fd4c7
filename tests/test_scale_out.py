"""Two real `authportal serve` instances sharing a real Redis: sessions, logouts, restarts, outages, bans.

Tests that only sign in and out share the module's pair (`instances`); a test
that restarts the instances, stops Redis or bans a user gets a Redis and a pair
of its own (`own_instances`), so that no other test meets what it left behind.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.servers import wait_until
from tests.servers.redis import RedisServer
from tests.support.portal import PortalSetup, ServedPortal, login

PROM = "http://app.example.test/prometheus/graph"
HEADERS = {"X-Original-URL": PROM, "X-Original-Method": "GET"}
#: Long enough that a busy machine still asks while the ban holds, short enough to wait for its end.
BAN_TIME = 6


@contextmanager
def two_instances(base: Path) -> Iterator[tuple[ServedPortal, ServedPortal, RedisServer]]:
    """A Redis and two instances on it, one config (same secret, same Redis, same database), two ports."""
    with RedisServer() as redis:
        first = PortalSetup(base / "one", overrides={
            "session": {"redis": {"url": redis.url, "timeout": "500ms"}},
            "regulation": {"max_retries": 3, "ban_time": f"{BAN_TIME}s", "find_time": "1m"},
            "storage": {"sqlite": {"path": str(base / "shared.sqlite3")}},
        })
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
