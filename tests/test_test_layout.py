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
STAR_IMPORT = re.compile(r"^\s*from\s+\S+\s+import\s+\*", re.MULTILINE)


def sources() -> list[Path]:
    return [*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")]


def test_no_module_imports_a_test_module_or_conftest():
    offenders = [f"{path.relative_to(REPO)}: {match.group().strip()}"
                 for path in sources() for match in FROM_A_TEST_MODULE.finditer(path.read_text())]
    assert offenders == [], "import shared helpers from tests.support (or tests.servers) instead"


def test_tests_and_fixtures_arrive_by_name_not_by_star_import():
    """Shared tests are inherited (tests.support.proxy_contract), fixture modules are pytest_plugins."""
    offenders = [str(path.relative_to(REPO)) for path in sources() if STAR_IMPORT.search(path.read_text())]
    assert offenders == []


def test_nothing_edits_sys_path():
    """bench/ runs as `python -m bench.verify` from the repository root: tests.support imports as a package."""
    editors = [path for path in sources() if "sys.path" in path.read_text() and path != Path(__file__).resolve()]
    assert editors == []


def test_the_check_sees_the_imports_it_forbids():
    assert FROM_A_TEST_MODULE.search("from tests.test_login import PORTAL, post_login\n")
    assert FROM_A_TEST_MODULE.search("def f():\n    from tests.conftest import ProxiedClient\n")
    assert not FROM_A_TEST_MODULE.search("from tests.support.in_process import PORTAL\n")
    assert STAR_IMPORT.search("from tests.support.proxy_contract import *  # noqa: F403\n")
