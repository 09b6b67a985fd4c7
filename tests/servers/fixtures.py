"""pytest fixtures for the real servers, a plugin that tests/conftest.py names in `pytest_plugins`.

Session-scoped (shared, never stop them in a test): `redis_server`, `upstream`,
`browser`, and `playwright_driver`, from which every Chromium of the run is
launched. A test that stops Redis mid-run starts its own `RedisServer`.
Factories (function-scoped) start any number of proxies and stop them all at
teardown: `nginx_factory(config, substitutions=None, **more)`, and
`nginx_factory.from_file("examples/nginx/x.conf", {...})`; same for HAProxy
and Caddy.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Playwright, sync_playwright

from .browser import launch_chromium
from .caddy import Caddy
from .haproxy import HAProxy
from .nginx import Nginx
from .process import ConfiguredServer
from .redis import RedisServer
from .upstream import Upstream


class ServerFactory:
    """Builds and starts servers of one class; `stop_all()` stops every one it started."""

    def __init__(self, server_class: type[ConfiguredServer]) -> None:
        self.server_class = server_class
        self.started: list[ConfiguredServer] = []

    def __call__(self, config: str, substitutions: Mapping[str, Any] | None = None, **more: Any):
        return self._start(self.server_class(config, substitutions, **more))

    def from_file(self, path: str | Path, substitutions: Mapping[str, Any] | None = None, **more: Any):
        return self._start(self.server_class.from_file(path, substitutions, **more))

    def _start(self, server: ConfiguredServer):
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    """Shared by all tests: filter `upstream.requests` by a path unique to the test, or `clear()` first."""
    with Upstream() as server:
        yield server


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    """One Playwright for the run: its sync API cannot be started a second time while one runs in the thread,
    so a module that needs a Chromium of its own (other flags) launches it from this one."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright_driver):
    launched = launch_chromium(playwright_driver)
    yield launched
    launched.close()


def _factory(server_class: type[ConfiguredServer]) -> Iterator[ServerFactory]:
    factory = ServerFactory(server_class)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def nginx_factory() -> Iterator[ServerFactory]:
    yield from _factory(Nginx)


@pytest.fixture
def haproxy_factory() -> Iterator[ServerFactory]:
    yield from _factory(HAProxy)


@pytest.fixture
def caddy_factory() -> Iterator[ServerFactory]:
    yield from _factory(Caddy)
