"""examples/haproxy (haproxy.cfg + auth-request.lua) run by the real HAProxy, with the real portal behind it.

One portal and one HAProxy for the module; the app behind HAProxy is the
`upstream` stub, which records what reached it. The story: a browser is sent to
the login page and back, bob gets in with his identity attached, carol does
not, scripts get 401 or use Basic, nobody can forge Remote-User, and a portal
that is down or hanging denies everything quickly.
"""
from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests.forward_auth_flow import (
    BROWSER,
    FORGED_ADDRESS,
    FORGED_IDENTITY,
    SCRIPT,
    assert_identity,
    assert_no_identity,
    audit_events,
    basic,
    logged_in,
    portal_behind_proxy,
    rd_of,
    reached,
    smuggled_urls,
)
from tests.portal import ServedPortal, login
from tests.servers import free_port
from tests.servers.haproxy import HAProxy
from tests.servers.process import REPO

EXAMPLE = REPO / "examples" / "haproxy"


class ExampleHAProxy(HAProxy):
    """The example haproxy.cfg with auth-request.lua beside it, where `default-path config` looks for it."""

    def prepare(self) -> None:
        shutil.copy(EXAMPLE / "auth-request.lua", self.dir / "auth-request.lua")
        super().prepare()


def start_example(upstream, listen_port: int, portal_address: str) -> ExampleHAProxy:
    app = f"127.0.0.1:{upstream.port}"
    return ExampleHAProxy.from_file(
        EXAMPLE / "haproxy.cfg", LISTEN=f"127.0.0.1:{listen_port}", PORTAL=portal_address,
        RELAY=f"127.0.0.1:{free_port()}", PROMETHEUS=app, ALERTMANAGER=app, PUBLIC=app,
    ).start()


@pytest.fixture(scope="module")
def listen_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def portal(tmp_path_factory, listen_port) -> Iterator[ServedPortal]:
    setup = portal_behind_proxy(tmp_path_factory.mktemp("haproxy-portal"), f"http://auth.example.test:{listen_port}")
    with ServedPortal(setup) as served:
        yield served


@pytest.fixture(scope="module")
def haproxy(portal, upstream, listen_port) -> Iterator[ExampleHAProxy]:
    proxy = start_example(upstream, listen_port, f"127.0.0.1:{portal.setup.port}")
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def app(haproxy) -> str:
    return f"http://app.example.test:{haproxy.port}"


@pytest.fixture(scope="module")
def auth(haproxy) -> str:
    return f"http://auth.example.test:{haproxy.port}"


@pytest.fixture(scope="module")
def bob(auth) -> requests.Session:
    return logged_in(auth, "bob")


def test_browser_goes_to_login_and_comes_back_as_bob(app, auth, upstream):
    http = requests.Session()
    http.headers.update(BROWSER)
    target = f"{app}/prometheus/graph?g0.expr=up&from=haproxy"

    sent_away = http.get(target, allow_redirects=False, timeout=5)
    assert sent_away.status_code == 302
    assert sent_away.headers["Location"].startswith(f"{auth}/?rd=")
    assert rd_of(sent_away.headers["Location"]) == target
    assert reached(upstream, "/prometheus/graph?g0.expr=up&from=haproxy") == []

    logged = login(http, auth, "bob", rd=rd_of(sent_away.headers["Location"]))  # through HAProxy's auth host
    assert logged.status_code == 302
    assert logged.headers["Location"] == target

    back = http.get(logged.headers["Location"], allow_redirects=False, timeout=5)
    assert back.status_code == 200
    [seen] = reached(upstream, "/prometheus/graph?g0.expr=up&from=haproxy")
    assert_identity(seen, "bob")


def test_client_cannot_forge_identity_headers(app, bob, upstream):
    # Logged in as bob, claiming to be alice: the app sees bob.
    assert bob.get(f"{app}/prometheus/api/v1/query?query=up&forged=1", headers=FORGED_IDENTITY,
                   timeout=5).status_code == 200
    [seen] = reached(upstream, "/prometheus/api/v1/query?query=up&forged=1")
    assert_identity(seen, "bob")

    # Anonymous on an open (bypass) path: the app sees no identity at all.
    assert requests.get(f"{app}/prometheus/-/healthy", headers={**SCRIPT, **FORGED_IDENTITY},
                        timeout=5).status_code == 200
    assert_no_identity(reached(upstream, "/prometheus/-/healthy")[-1])

    # Anonymous on a protected path: refused, nothing reaches the app.
    refused = requests.get(f"{app}/prometheus/api/v1/query?forged=2", headers={**SCRIPT, **FORGED_IDENTITY},
                           timeout=5)
    assert refused.status_code == 401
    assert reached(upstream, "/prometheus/api/v1/query?forged=2") == []


@pytest.mark.parametrize("smuggled", smuggled_urls("app.example.test"), ids=lambda headers: "+".join(headers))
def test_client_cannot_make_the_portal_check_another_url(app, upstream, smuggled):
    """Headers naming an open URL (/public/) must not open /prometheus/: the portal checks what was requested."""
    path = f"/prometheus/api/v1/query?query=up&smuggled={'+'.join(smuggled)}-haproxy"
    answer = requests.get(app + path, headers={**SCRIPT, **smuggled}, timeout=5)
    assert answer.status_code == 401
    assert reached(upstream, path) == []


def test_carol_without_group_is_forbidden(app, auth, upstream):
    carol = logged_in(auth, "carol")
    answer = carol.get(f"{app}/prometheus/graph?who=carol", allow_redirects=False, timeout=5)
    assert answer.status_code == 403
    assert reached(upstream, "/prometheus/graph?who=carol") == []


def test_audit_log_has_the_real_client_address(app, auth, portal):
    """Login (through the portal host) and denial (through the check) are logged with the peer's address."""
    carol = requests.Session()
    carol.headers.update({**BROWSER, **FORGED_ADDRESS})
    assert login(carol, auth, "carol").status_code == 302
    assert carol.get(f"{app}/prometheus/graph?audit=haproxy", allow_redirects=False, timeout=5).status_code == 403
    logged_in_event = [e for e in audit_events(portal.setup, "login_success") if e["user"] == "carol"][-1]
    [denied] = [e for e in audit_events(portal.setup, "access_denied") if e["url"].endswith("?audit=haproxy")]
    assert logged_in_event["ip"] == denied["ip"] == "127.0.0.1"


def test_method_reaches_the_rules(app, bob, upstream):
    """Bob may read Alertmanager but not create silences (POST is admins-only, two factors)."""
    assert bob.get(f"{app}/alertmanager/api/v2/silences?m=get", timeout=5).status_code == 200
    denied = bob.post(f"{app}/alertmanager/api/v2/silences?m=post", json={}, allow_redirects=False, timeout=5)
    assert denied.status_code == 403
    assert reached(upstream, "/alertmanager/api/v2/silences?m=post") == []


def test_public_path_is_open(app, upstream):
    answer = requests.get(f"{app}/public/status.txt?via=haproxy", headers=BROWSER, allow_redirects=False, timeout=5)
    assert answer.status_code == 200
    assert_no_identity(reached(upstream, "/public/status.txt?via=haproxy")[-1])


def test_script_without_credentials_gets_401_with_basic_challenge(app, upstream):
    answer = requests.get(f"{app}/prometheus/api/v1/query?query=up&who=curl", headers=SCRIPT, timeout=5)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    assert reached(upstream, "/prometheus/api/v1/query?query=up&who=curl") == []


def test_script_with_basic_credentials_gets_in_as_bob(app, upstream):
    answer = requests.get(f"{app}/prometheus/api/v1/query?query=up&who=basic", headers=SCRIPT, auth=basic("bob"),
                          timeout=5)
    assert answer.status_code == 200
    assert_identity(reached(upstream, "/prometheus/api/v1/query?query=up&who=basic")[-1], "bob")

    wrong = requests.get(f"{app}/prometheus/api/v1/query?who=wrong", headers=SCRIPT,
                         auth=basic("bob", "not-his-password"), timeout=5)
    assert wrong.status_code == 401
    assert reached(upstream, "/prometheus/api/v1/query?who=wrong") == []


def test_unlisted_path_and_unknown_host_are_refused(app, bob, haproxy, upstream):
    assert bob.get(f"{app}/grafana/?via=haproxy", allow_redirects=False, timeout=5).status_code == 403
    assert reached(upstream, "/grafana/?via=haproxy") == []
    assert requests.get(haproxy.url("/prometheus/"), timeout=5).status_code == 404  # Host: 127.0.0.1:port


def test_verify_endpoints_are_not_exposed_on_the_portal_host(auth):
    forged = {**SCRIPT, "X-Forwarded-Proto": "http", "X-Forwarded-Host": "app.example.test",
              "X-Forwarded-Uri": "/prometheus/", "X-Forwarded-Method": "GET"}
    for path in ("/api/forward-auth", "/api/verify"):
        assert requests.get(f"{auth}{path}", headers=forged, auth=basic("bob"), timeout=5).status_code == 404


def test_hanging_portal_denies_after_the_relay_timeout(upstream):
    """A portal that accepts connections but never answers: the relay gives up after 1.5 s; deny."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes handshakes; nobody ever reads
        proxy = start_example(upstream, free_port(), f"127.0.0.1:{silent.getsockname()[1]}")
        try:
            started = time.monotonic()
            answer = requests.get(proxy.url("/prometheus/?hang=1", host="app.example.test"), headers=SCRIPT,
                                  timeout=10)
            elapsed = time.monotonic() - started
        finally:
            proxy.stop()
    assert answer.status_code == 503
    assert 1.0 < elapsed < 2.5, elapsed
    assert reached(upstream, "/prometheus/?hang=1") == []


def test_portal_stopped_denies_at_once(app, portal, bob, upstream):
    """Last in the module: stops the shared portal (and starts it again for anyone after)."""
    portal.stop()
    try:
        for client, headers in ((bob, {}), (requests, BROWSER), (requests, SCRIPT)):
            started = time.monotonic()
            answer = client.get(f"{app}/prometheus/graph?down=1", headers=headers, allow_redirects=False, timeout=10)
            elapsed = time.monotonic() - started
            assert answer.status_code == 503, answer.status_code
            assert elapsed < 2.0, elapsed
        assert requests.get(f"{app}/prometheus/?down=basic", headers=SCRIPT, auth=basic("bob"),
                            timeout=10).status_code == 503
        assert reached(upstream, "/prometheus/graph?down=1") == []
        assert reached(upstream, "/prometheus/?down=basic") == []
    finally:
        portal.start()
