"""Test modules share helpers through tests/support/ and tests/servers/, never by importing one another.

A helper imported from a test module drags that module's tests and fixtures
along (pytest collects them twice, or a fixture shadows another), and moving a
test breaks a stranger's import.
"""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FROM_A_TEST_MODULE = re.compile(r"^\s*(?:from|import)\s+tests\.(?:test_\w+|conftest)\b", re.MULTILINE)


def test_no_module_imports_a_test_module_or_conftest():
    sources = [*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")]
    offenders = [f"{path.relative_to(REPO)}: {match.group().strip()}"
                 for path in sources for match in FROM_A_TEST_MODULE.finditer(path.read_text())]
    assert offenders == [], "import shared helpers from tests.support (or tests.servers) instead"


def test_the_check_sees_the_imports_it_forbids():
    assert FROM_A_TEST_MODULE.search("from tests.test_login import PORTAL, post_login\n")
    assert FROM_A_TEST_MODULE.search("def f():\n    from tests.conftest import ProxiedClient\n")
    assert not FROM_A_TEST_MODULE.search("from tests.support.in_process import PORTAL\n")
