"""examples/caddy/Caddyfile run by the real Caddy, with the real portal behind it.

One portal and one Caddy for the class (the contract's stack); the app behind Caddy is the `upstream`
stub, which records what reached it. The same story as tests/test_haproxy.py:
login round trip, bob in with his identity, carol out, scripts get 401 or use
Basic, no forged Remote-User, and a stopped portal means 502, never 200 (on a
portal and a Caddy of that test's own).
"""
from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.servers.caddy import Caddy
from tests.servers.process import REPO
from tests.support.forward_auth_flow import reached
from tests.support.proxy_contract import ProxyContract

EXAMPLE = REPO / "examples" / "caddy" / "Caddyfile"


class TestCaddy(ProxyContract):
    tag = "caddy"
    portal_down_status = 502  # its forward_auth upstream failed; never the app

    @pytest.fixture(scope="class")
    @classmethod
    def example_proxy(cls, upstream) -> Callable[[int, str], Caddy]:
        """`example_proxy(listen_port, portal_address)`: the example in front of that portal, not started yet."""
        app = f"127.0.0.1:{upstream.port}"

        def example(listen_port: int, portal_address: str) -> Caddy:
            return Caddy.from_file(EXAMPLE, BIND="127.0.0.1", PORT=listen_port, PORTAL=portal_address,
                                   PROMETHEUS=app, ALERTMANAGER=app, PUBLIC=app)

        return example

    def test_listens_on_the_bind_address_only(self, proxy):
        """Without `default_bind` (or `bind`) Caddy would listen on every interface."""
        assert "default_bind {{BIND}}" in EXAMPLE.read_text()
        adapted, _ = json.JSONDecoder().raw_decode(proxy.check().lstrip())
        [server] = adapted["apps"]["http"]["servers"].values()
        assert server["listen"] == [f"127.0.0.1:{proxy.port}"]

    def test_unlisted_path_is_refused(self, app, bob, upstream):
        assert bob.get(f"{app}/grafana/?via=caddy", allow_redirects=False, timeout=5).status_code == 403
        assert reached(upstream, "/grafana/?via=caddy") == []
