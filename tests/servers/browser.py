"""Headless Chromium (Debian's, not a Playwright download) driven by Playwright's sync API.

`*.example.test` names resolve to 127.0.0.1 inside the browser, so pages load
under realistic host names (`http://app.example.test:PORT/`) and cookies get a
real domain. Screenshots go to `<repo>/test-artifacts`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Playwright, sync_playwright

from . import require_binary
from .process import REPO

ARTIFACTS = REPO / "test-artifacts"
ARTIFACTS.mkdir(exist_ok=True)

EXAMPLE_TEST_RULES = "MAP *.example.test 127.0.0.1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REAL_BINARY = Path("/usr/lib/chromium/chromium")  # /usr/bin/chromium is a slower shell wrapper


def chromium_path() -> str:
    wrapper = require_binary("chromium")
    return str(REAL_BINARY) if REAL_BINARY.exists() else wrapper


def launch_chromium(playwright: Playwright, host_resolver_rules: str | None = EXAMPLE_TEST_RULES,
                    **launch_options) -> Browser:
    """Launch headless Chromium; `host_resolver_rules=None` leaves name resolution alone."""
    args = list(CHROMIUM_ARGS)
    if host_resolver_rules:
        args.append(f"--host-resolver-rules={host_resolver_rules}")
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=args, **launch_options)


@contextmanager
def chromium(host_resolver_rules: str | None = EXAMPLE_TEST_RULES, **launch_options) -> Iterator[Browser]:
    """Playwright plus a launched browser, both shut down on exit."""
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, host_resolver_rules, **launch_options)
        try:
            yield browser
        finally:
            browser.close()
