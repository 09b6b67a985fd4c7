"""Session-scoped fixtures for the directory servers: import them into conftest.py.

    from tests.servers.ldap_fixtures import *  # noqa: F401,F403

* ``slapd`` — a running `SlapdServer` (OpenLDAP, dc=example,dc=com; ldap:// + StartTLS and ldaps://).
  A test that stops it must start it again (``slapd.start()`` in a ``finally``).
* ``samba_template`` — the EXAMPLE.TEST domain provisioned once per session (not running).
* ``samba_ad`` — a running `SambaAD` copied from the template, in its own network namespace.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .samba_ad import SambaAD, provision_template
from .slapd import SlapdServer

# The functions carry a `_fixture` suffix so that tests taking `slapd` as an argument do not shadow an import;
# the fixture names are `slapd`, `samba_template` and `samba_ad`.
__all__ = ["samba_ad_fixture", "samba_template_fixture", "slapd_fixture"]


@pytest.fixture(scope="session", name="slapd")
def slapd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdServer]:
    server = SlapdServer(tmp_path_factory.mktemp("slapd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="samba_template")
def samba_template_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_template(tmp_path_factory.mktemp("samba-template") / "dc")


@pytest.fixture(scope="session", name="samba_ad")
def samba_ad_fixture(samba_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaAD]:
    server = SambaAD(samba_template, tmp_path_factory.mktemp("samba-ad"))
    try:
        server.start()
        yield server
    finally:
        server.close()
