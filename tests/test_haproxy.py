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
    SCRIPT,
    reached,
)
from tests.proxy_contract import *  # noqa: F403 - the tests every proxy example must pass
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
def tag() -> str:
    return "haproxy"


@pytest.fixture(scope="module")
def haproxy(portal, upstream, listen_port) -> Iterator[ExampleHAProxy]:
    proxy = start_example(upstream, listen_port, f"127.0.0.1:{portal.setup.port}")
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def portal_down_status() -> int:
    """HAProxy's answer when the portal is down: 503 from the example's fail-closed rule."""
    return 503


@pytest.fixture(scope="module")
def proxy(haproxy):
    return haproxy


def test_unlisted_path_and_unknown_host_are_refused(app, bob, haproxy, upstream):
    assert bob.get(f"{app}/grafana/?via=haproxy", allow_redirects=False, timeout=5).status_code == 403
    assert reached(upstream, "/grafana/?via=haproxy") == []
    assert requests.get(haproxy.url("/prometheus/"), timeout=5).status_code == 404  # Host: 127.0.0.1:port


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
