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
    SCRIPT,
    basic,
    reached,
)
from tests.proxy_contract import *  # noqa: F403 - the tests every proxy example must pass
from tests.servers.caddy import Caddy
from tests.servers.process import REPO

EXAMPLE = REPO / "examples" / "caddy" / "Caddyfile"


@pytest.fixture(scope="module")
def tag() -> str:
    return "caddy"


@pytest.fixture(scope="module")
def caddy(portal, upstream, listen_port) -> Iterator[Caddy]:
    app = f"127.0.0.1:{upstream.port}"
    with Caddy.from_file(EXAMPLE, BIND="127.0.0.1", PORT=listen_port, PORTAL=f"127.0.0.1:{portal.setup.port}",
                         PROMETHEUS=app, ALERTMANAGER=app, PUBLIC=app) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(caddy):
    return caddy


def test_listens_on_the_bind_address_only(caddy):
    """Without `default_bind` (or `bind`) Caddy would listen on every interface."""
    assert "default_bind {{BIND}}" in EXAMPLE.read_text()
    adapted, _ = json.JSONDecoder().raw_decode(caddy.check().lstrip())
    [server] = adapted["apps"]["http"]["servers"].values()
    assert server["listen"] == [f"127.0.0.1:{caddy.port}"]


def test_unlisted_path_is_refused(app, bob, upstream):
    assert bob.get(f"{app}/grafana/?via=caddy", allow_redirects=False, timeout=5).status_code == 403
    assert reached(upstream, "/grafana/?via=caddy") == []


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
