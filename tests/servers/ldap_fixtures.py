"""Fixtures for the directory servers, a plugin that tests/conftest.py names in `pytest_plugins`.

Session-scoped, shared by every test (never stop them, nor change their entries, in a test):

* ``slapd`` — a running `SlapdServer` (OpenLDAP, dc=example,dc=com; ldap:// + StartTLS and ldaps://).
* ``samba_template`` — the EXAMPLE.TEST domain provisioned once per session (not running).
* ``samba_ad`` — a running `SambaAD` copied from the template, in its own network namespace.

Function-scoped, for a test that stops, freezes or changes its directory:

* ``own_slapd`` — a `SlapdServer` of the test's own, with the same entries.
* ``own_samba_ad`` — a `SambaAD` of the test's own, copied from the template.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .samba_ad import SambaAD, provision_template
from .slapd import SlapdServer

# The functions carry a `_fixture` suffix so that a module importing this one does not shadow a test's
# `slapd` argument; the fixture names are `slapd`, `samba_template` and `samba_ad`.


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


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[SlapdServer]:
    server = SlapdServer(tmp_path / "own-slapd")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_samba_ad(samba_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaAD]:
    # A short folder, not the test's own: Samba's messaging sockets live under it, and a Unix socket path may
    # have at most 107 bytes (a long test name under pytest-xdist's popen-gwN/ made the DC fail to start).
    server = SambaAD(samba_template, tmp_path_factory.mktemp("ad"))
    try:
        server.start()
        yield server
    finally:
        server.close()
