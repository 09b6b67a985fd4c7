"""examples/caddy/Caddyfile run by the real Caddy, with the real portal behind it.

One portal and one Caddy for the module; the app behind Caddy is the `upstream`
stub, which records what reached it. The same story as tests/test_haproxy.py:
login round trip, bob in with his identity, carol out, scripts get 401 or use
Basic, no forged Remote-User, and a stopped portal means 502, never 200.
"""
from __future__ import annotations

import json
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
from tests.servers.caddy import Caddy
from tests.servers.process import REPO

EXAMPLE = REPO / "examples" / "caddy" / "Caddyfile"


@pytest.fixture(scope="module")
def listen_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def portal(tmp_path_factory, listen_port) -> Iterator[ServedPortal]:
    setup = portal_behind_proxy(tmp_path_factory.mktemp("caddy-portal"), f"http://auth.example.test:{listen_port}")
    with ServedPortal(setup) as served:
        yield served


@pytest.fixture(scope="module")
def caddy(portal, upstream, listen_port) -> Iterator[Caddy]:
    app = f"127.0.0.1:{upstream.port}"
    with Caddy.from_file(EXAMPLE, BIND="127.0.0.1", PORT=listen_port, PORTAL=f"127.0.0.1:{portal.setup.port}",
                         PROMETHEUS=app, ALERTMANAGER=app, PUBLIC=app) as server:
        yield server


@pytest.fixture(scope="module")
def app(caddy) -> str:
    return f"http://app.example.test:{caddy.port}"


@pytest.fixture(scope="module")
def auth(caddy) -> str:
    return f"http://auth.example.test:{caddy.port}"


@pytest.fixture(scope="module")
def bob(auth) -> requests.Session:
    return logged_in(auth, "bob")


def test_listens_on_the_bind_address_only(caddy):
    """Without `default_bind` (or `bind`) Caddy would listen on every interface."""
    assert "default_bind {{BIND}}" in EXAMPLE.read_text()
    adapted, _ = json.JSONDecoder().raw_decode(caddy.check().lstrip())
    [server] = adapted["apps"]["http"]["servers"].values()
    assert server["listen"] == [f"127.0.0.1:{caddy.port}"]


def test_browser_goes_to_login_and_comes_back_as_bob(app, auth, upstream):
    http = requests.Session()
    http.headers.update(BROWSER)
    target = f"{app}/prometheus/graph?g0.expr=up&from=caddy"

    sent_away = http.get(target, allow_redirects=False, timeout=5)
    assert sent_away.status_code == 302
    assert sent_away.headers["Location"].startswith(f"{auth}/?rd=")
    assert rd_of(sent_away.headers["Location"]) == target
    assert reached(upstream, "/prometheus/graph?g0.expr=up&from=caddy") == []

    logged = login(http, auth, "bob", rd=rd_of(sent_away.headers["Location"]))  # through Caddy's auth site
    assert logged.status_code == 302
    assert logged.headers["Location"] == target

    back = http.get(logged.headers["Location"], allow_redirects=False, timeout=5)
    assert back.status_code == 200
    [seen] = reached(upstream, "/prometheus/graph?g0.expr=up&from=caddy")
    assert_identity(seen, "bob")


def test_client_cannot_forge_identity_headers(app, bob, upstream):
    # Logged in as bob, claiming to be alice: the app sees bob.
    assert bob.get(f"{app}/prometheus/api/v1/query?query=up&forged=caddy1", headers=FORGED_IDENTITY,
                   timeout=5).status_code == 200
    [seen] = reached(upstream, "/prometheus/api/v1/query?query=up&forged=caddy1")
    assert_identity(seen, "bob")

    # Anonymous on an open (bypass) path: the portal's 200 carries no identity; the app sees none
    # (neither the forged one nor Caddy 2.6's literal "{http.reverse_proxy.header.Remote-User}").
    upstream.clear()
    assert requests.get(f"{app}/prometheus/-/healthy", headers={**SCRIPT, **FORGED_IDENTITY},
                        timeout=5).status_code == 200
    [seen] = reached(upstream, "/prometheus/-/healthy")
    assert_no_identity(seen)

    # Anonymous on a protected path: refused, nothing reaches the app.
    refused = requests.get(f"{app}/prometheus/api/v1/query?forged=caddy2", headers={**SCRIPT, **FORGED_IDENTITY},
                           timeout=5)
    assert refused.status_code == 401
    assert reached(upstream, "/prometheus/api/v1/query?forged=caddy2") == []


@pytest.mark.parametrize("smuggled", smuggled_urls("app.example.test"), ids=lambda headers: "+".join(headers))
def test_client_cannot_make_the_portal_check_another_url(app, upstream, smuggled):
    """Headers naming an open URL (/public/) must not open /prometheus/: the portal checks what was requested."""
    path = f"/prometheus/api/v1/query?query=up&smuggled={'+'.join(smuggled)}-caddy"
    answer = requests.get(app + path, headers={**SCRIPT, **smuggled}, timeout=5)
    assert answer.status_code == 401
    assert reached(upstream, path) == []


def test_carol_without_group_is_forbidden(app, auth, upstream):
    carol = logged_in(auth, "carol")
    answer = carol.get(f"{app}/prometheus/graph?who=carol-caddy", allow_redirects=False, timeout=5)
    assert answer.status_code == 403
    assert reached(upstream, "/prometheus/graph?who=carol-caddy") == []


def test_audit_log_has_the_real_client_address(app, auth, portal):
    """Login (through the portal host) and denial (through the check) are logged with the peer's address."""
    carol = requests.Session()
    carol.headers.update({**BROWSER, **FORGED_ADDRESS})
    assert login(carol, auth, "carol").status_code == 302
    assert carol.get(f"{app}/prometheus/graph?audit=caddy", allow_redirects=False, timeout=5).status_code == 403
    logged_in_event = [e for e in audit_events(portal.setup, "login_success") if e["user"] == "carol"][-1]
    [denied] = [e for e in audit_events(portal.setup, "access_denied") if e["url"].endswith("?audit=caddy")]
    assert logged_in_event["ip"] == denied["ip"] == "127.0.0.1"


def test_method_reaches_the_rules(app, bob, upstream):
    """Bob may read Alertmanager but not create silences (POST is admins-only, two factors)."""
    assert bob.get(f"{app}/alertmanager/api/v2/silences?m=caddy-get", timeout=5).status_code == 200
    denied = bob.post(f"{app}/alertmanager/api/v2/silences?m=caddy-post", json={}, allow_redirects=False,
                      timeout=5)
    assert denied.status_code == 403
    assert reached(upstream, "/alertmanager/api/v2/silences?m=caddy-post") == []


def test_public_path_is_open(app, upstream):
    answer = requests.get(f"{app}/public/status.txt?via=caddy", headers={**BROWSER, **FORGED_IDENTITY},
                          allow_redirects=False, timeout=5)
    assert answer.status_code == 200
    assert_no_identity(reached(upstream, "/public/status.txt?via=caddy")[-1])


def test_script_without_credentials_gets_401_with_basic_challenge(app, upstream):
    answer = requests.get(f"{app}/prometheus/api/v1/query?query=up&who=curl-caddy", headers=SCRIPT, timeout=5)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    assert reached(upstream, "/prometheus/api/v1/query?query=up&who=curl-caddy") == []


def test_script_with_basic_credentials_gets_in_as_bob(app, upstream):
    answer = requests.get(f"{app}/prometheus/api/v1/query?query=up&who=basic-caddy", headers=SCRIPT,
                          auth=basic("bob"), timeout=5)
    assert answer.status_code == 200
    assert_identity(reached(upstream, "/prometheus/api/v1/query?query=up&who=basic-caddy")[-1], "bob")

    wrong = requests.get(f"{app}/prometheus/api/v1/query?who=wrong-caddy", headers=SCRIPT,
                         auth=basic("bob", "not-his-password"), timeout=5)
    assert wrong.status_code == 401
    assert reached(upstream, "/prometheus/api/v1/query?who=wrong-caddy") == []


def test_unlisted_path_is_refused(app, bob, upstream):
    assert bob.get(f"{app}/grafana/?via=caddy", allow_redirects=False, timeout=5).status_code == 403
    assert reached(upstream, "/grafana/?via=caddy") == []


def test_verify_endpoints_are_not_exposed_on_the_portal_host(auth):
    forged = {**SCRIPT, "X-Forwarded-Proto": "http", "X-Forwarded-Host": "app.example.test",
              "X-Forwarded-Uri": "/prometheus/", "X-Forwarded-Method": "GET"}
    for path in ("/api/forward-auth", "/api/verify"):
        assert requests.get(f"{auth}{path}", headers=forged, auth=basic("bob"), timeout=5).status_code == 404


def test_portal_stopped_means_502_never_200(app, portal, bob, upstream):
    """Last in the module: stops the shared portal (and starts it again for anyone after)."""
    portal.stop()
    try:
        for client, headers in ((bob, {}), (requests, BROWSER), (requests, SCRIPT)):
            started = time.monotonic()
            answer = client.get(f"{app}/prometheus/graph?down=caddy", headers=headers, allow_redirects=False,
                                timeout=10)
            assert answer.status_code == 502, answer.status_code
            assert time.monotonic() - started < 2.0
        assert requests.get(f"{app}/prometheus/?down=caddy-basic", headers=SCRIPT, auth=basic("bob"),
                            timeout=10).status_code == 502
        assert reached(upstream, "/prometheus/graph?down=caddy") == []
        assert reached(upstream, "/prometheus/?down=caddy-basic") == []
    finally:
        portal.start()
