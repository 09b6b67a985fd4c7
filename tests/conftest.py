"""Shared fixtures: real servers (tests/servers/), the portal's config, a served portal, the portal in-process."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.browser import launch_chromium
from tests.support.in_process import AuthActions, ProxiedClient
from tests.support.portal import SECRET_KEY, USERS, PortalSetup, ServedPortal, resolve_example_test
from tests.support.stacks import NginxStack, nginx_stack

pytest_plugins = ["tests.servers.fixtures", "tests.servers.ldap_fixtures", "tests.servers.storage_fixtures"]

resolve_example_test()


def pytest_collection_modifyitems(items) -> None:
    """For `make test`'s two workers (pytest-xdist, `--dist loadgroup`): a module's tests stay together (its
    module-scoped servers start once), and the modules that run Samba AD share one worker: two domain
    controllers starting at once on a 2-core machine fail each other ("failed to setup parent messaging")."""
    samba_modules = {item.module.__name__ for item in items if any("samba" in name for name in item.fixturenames)}
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("samba-ad" if module in samba_modules else module))


@pytest.fixture
def portal_setup(tmp_path) -> PortalSetup:
    return PortalSetup(tmp_path / "portal")


@pytest.fixture
def served_portal(portal_setup) -> Iterator[ServedPortal]:
    with ServedPortal(portal_setup) as served:
        yield served


@pytest.fixture
def app_with(portal_setup):
    """`app_with(**settings)`: the portal in-process with these config sections changed; closed after the test."""
    from authportal.app import create_app
    from authportal.config import load_config

    made = []

    def make(**settings):
        made.append(create_app(load_config(portal_setup.write(**settings).config_path)))
        return made[-1]

    yield make
    for application in made:
        application.close()


@pytest.fixture
def app(app_with):
    """The portal in-process (same WSGI app the server runs), for fast HTTP-level tests."""
    return app_with()


@pytest.fixture
def client(app):
    return ProxiedClient(app)


@pytest.fixture
def auth(client) -> AuthActions:
    """`auth.login("bob")`, `auth.verify(url)`, `auth.csrf()`, `auth.logout()` with the test's `client`."""
    return AuthActions(client)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory):
    """After the whole run: no password or secret key of the tests appears in any log any server wrote."""
    yield
    secrets = {SECRET_KEY, *(fields["password"] for fields in USERS.values())}
    leaks = []
    for log in tmp_path_factory.getbasetemp().rglob("*.log"):
        text = log.read_text(errors="replace")
        leaks += [f"{log}: {secret[:4]}…" for secret in secrets if secret in text]
    assert not leaks, f"secrets found in logs: {leaks}"


@pytest.fixture(scope="module")
def seed_stack(tmp_path_factory, upstream) -> Iterator[NginxStack]:
    """The portal behind examples/nginx/seed-layout.conf, the stub `upstream` as every app, for one module."""
    backend = f"127.0.0.1:{upstream.port}"
    with nginx_stack("seed-layout", tmp_path_factory.mktemp("seed-stack"),
                     {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend}) as started:
        yield started


@pytest.fixture
def portal_setup_both_storages(portal_setup, storage_config) -> PortalSetup:
    """`portal_setup` on SQLite and on a real PostgreSQL (parametrized): modules opt in by aliasing it."""
    if storage_config.postgres is not None:
        portal_setup.write(storage={"sqlite": None, "postgres": {"url": storage_config.postgres.url}})
    return portal_setup


@pytest.fixture(scope="module")
def https_stack(tmp_path_factory, upstream) -> Iterator[NginxStack]:
    """The portal behind examples/nginx/https.conf (TLS, a CA of its own: `ca_file`), the stub `upstream` as every
    app, for one module; `url()` and `portal_base` are https."""
    backend = f"127.0.0.1:{upstream.port}"
    with nginx_stack("https", tmp_path_factory.mktemp("https-stack"),
                     {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend}) as started:
        yield started


@pytest.fixture(scope="module")
def https_browser(playwright_driver, https_stack):
    """A Chromium that trusts `https_stack`'s certificate as browsers trust a real site: secure pages, WebAuthn."""
    launched = launch_chromium(playwright_driver, trusted_certificates=[https_stack.cert_file])
    yield launched
    launched.close()
