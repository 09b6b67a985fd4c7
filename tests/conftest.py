"""Shared fixtures: real servers (tests/servers/), the portal's config and a served portal."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from werkzeug.test import Client

from tests.portal import PortalSetup, ServedPortal, resolve_example_test
from tests.servers.fixtures import *  # noqa: F403
from tests.servers.ldap_fixtures import *  # noqa: F403
from tests.servers.storage_fixtures import *  # noqa: F403


class ProxiedClient(Client):
    """In-process client whose requests arrive from 127.0.0.1, a trusted proxy, as they do behind nginx."""

    def open(self, *args, **kwargs):
        kwargs.setdefault("environ_overrides", {}).setdefault("REMOTE_ADDR", "127.0.0.1")
        return super().open(*args, **kwargs)


resolve_example_test()



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


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory):
    """After the whole run: no password or secret key of the tests appears in any log any server wrote."""
    from tests.portal import SECRET_KEY, USERS

    yield
    secrets = {SECRET_KEY, *(fields["password"] for fields in USERS.values())}
    leaks = []
    for log in tmp_path_factory.getbasetemp().rglob("*.log"):
        text = log.read_text(errors="replace")
        leaks += [f"{log}: {secret[:4]}…" for secret in secrets if secret in text]
    assert not leaks, f"secrets found in logs: {leaks}"


@pytest.fixture
def portal_setup_both_storages(portal_setup, storage_config) -> PortalSetup:
    """`portal_setup` on SQLite and on a real PostgreSQL (parametrized): modules opt in by aliasing it."""
    if storage_config.postgres is not None:
        portal_setup.write(storage={"sqlite": None, "postgres": {"url": storage_config.postgres.url}})
    return portal_setup
