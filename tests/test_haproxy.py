"""examples/haproxy (haproxy.cfg + auth-request.lua) run by the real HAProxy, with the real portal behind it.

One portal and one HAProxy for the class (the contract's stack); the app behind HAProxy is the
`upstream` stub, which records what reached it. The story: a browser is sent to
the login page and back, bob gets in with his identity attached, carol does
not, scripts get 401 or use Basic, nobody can forge Remote-User, and a portal
that is down or hanging denies everything quickly (each on a portal and an
HAProxy of that test's own).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.servers import free_port
from tests.support.forward_auth_flow import SCRIPT, reached
from tests.support.proxy_contract import ProxyContract
from tests.support.stacks import HAProxyExample


class _HangingPortal(BaseHTTPRequestHandler):
    """Healthy to the relay's health check, silent to every verify question (until the test ends)."""

    protocol_version = "HTTP/1.1"
    server: _HangingPortalServer

    def do_GET(self) -> None:
        if self.path == "/api/health/live":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.server.released.wait(30)
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:
        pass


class _HangingPortalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HangingPortal)
        self.released = threading.Event()


@pytest.fixture
def hanging_portal() -> Iterator[str]:
    """The address of a portal stuck in every verify (a hung backend call), whose health check still passes."""
    server = _HangingPortalServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()
        thread.join()


class TestHAProxy(ProxyContract):
    tag = "haproxy"
    portal_down_status = 503  # from the example's fail-closed rule

    @pytest.fixture(scope="class")
    @classmethod
    def example_proxy(cls, upstream) -> Callable[[int, str], HAProxyExample]:
        """`example_proxy(listen_port, portal_address)`: the example in front of that portal, not started yet."""
        app = f"127.0.0.1:{upstream.port}"

        def example(listen_port: int, portal_address: str) -> HAProxyExample:
            return HAProxyExample.example(LISTEN=f"127.0.0.1:{listen_port}", PORTAL=portal_address,
                                          RELAY=f"127.0.0.1:{free_port()}", PROMETHEUS=app, ALERTMANAGER=app,
                                          PUBLIC=app)

        return example

    def test_unlisted_path_and_unknown_host_are_refused(self, app, bob, proxy, upstream):
        assert bob.get(f"{app}/grafana/?via=haproxy", allow_redirects=False, timeout=5).status_code == 403
        assert reached(upstream, "/grafana/?via=haproxy") == []
        assert requests.get(proxy.url("/prometheus/"), timeout=5).status_code == 404  # Host: 127.0.0.1:port

    def test_hanging_portal_denies_after_the_relay_timeout(self, upstream, example_proxy, hanging_portal):
        """A portal that takes the question but never answers: the relay gives up after 1.5 s; deny.

        The relay's health check keeps passing, so every request waits for the relay's `timeout server`
        (1.5 s): that is the lower bound. On its own, HAProxy's httpclient would wait 8 s; the 5 s upper
        bound tells the two apart with the margin a loaded machine needs.
        """
        with example_proxy(free_port(), hanging_portal) as proxy:
            started = time.monotonic()
            answer = requests.get(proxy.url("/prometheus/?hang=1", host="app.example.test"), headers=SCRIPT, timeout=15)
            elapsed = time.monotonic() - started
        assert answer.status_code == 503
        assert 1.4 < elapsed < 5.0, elapsed
        assert reached(upstream, "/prometheus/?hang=1") == []
