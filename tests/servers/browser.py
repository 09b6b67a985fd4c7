"""Headless Chromium (Debian's, not a Playwright download) driven by Playwright's sync API.

`*.example.test` names resolve to 127.0.0.1 inside the browser, so pages load
under realistic host names (`http://app.example.test:PORT/`) and cookies get a
real domain. Screenshots go to `<repo>/test-artifacts`.

`trusted_certificates=[cert.pem]` makes Chromium accept those server
certificates as valid, the way a browser trusts a real site: the page is a
secure context whose security state is "secure", so WebAuthn works on it.
Playwright's `ignore_https_errors` is not that: the page keeps its certificate
error (state "insecure-broken") and Chromium refuses WebAuthn there.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Playwright, sync_playwright

from . import require_binary
from .ca import spki_sha256
from .process import REPO

ARTIFACTS = REPO / "test-artifacts"
ARTIFACTS.mkdir(exist_ok=True)

EXAMPLE_TEST_RULES = "MAP *.example.test 127.0.0.1, MAP *.corp.test 127.0.0.1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REAL_BINARY = Path("/usr/lib/chromium/chromium")  # /usr/bin/chromium is a slower shell wrapper


def chromium_path() -> str:
    wrapper = require_binary("chromium")
    return str(REAL_BINARY) if REAL_BINARY.exists() else wrapper


def trust_args(certificates: Sequence[Path]) -> list[str]:
    """Chromium's flag that accepts these server certificates (PEM) as valid, by their public key.

    `--ignore-certificate-errors-spki-list` (what web-platform-tests runs Chromium with) takes effect only
    with a `--user-data-dir`, which Playwright always passes (a fresh profile per launch). It pins the
    server's own key: the CA's key in the list does not make the CA's certificates valid.
    """
    if not certificates:
        return []
    return ["--ignore-certificate-errors-spki-list=" + ",".join(spki_sha256(Path(c)) for c in certificates)]


def launch_chromium(playwright: Playwright, host_resolver_rules: str | None = EXAMPLE_TEST_RULES, *,
                    trusted_certificates: Sequence[Path] = (), **launch_options) -> Browser:
    """Launch headless Chromium; `host_resolver_rules=None` leaves name resolution alone.

    `trusted_certificates`: server certificates (PEM files) that Chromium treats as valid (see `trust_args`).
    """
    args = [*CHROMIUM_ARGS, *trust_args(trusted_certificates)]
    if host_resolver_rules:
        args.append(f"--host-resolver-rules={host_resolver_rules}")
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=args, **launch_options)


@contextmanager
def chromium(host_resolver_rules: str | None = EXAMPLE_TEST_RULES, *, trusted_certificates: Sequence[Path] = (),
             **launch_options) -> Iterator[Browser]:
    """Playwright plus a launched browser, both shut down on exit (outside pytest: the fixtures share one
    Playwright, `playwright_driver`, because its sync API cannot run twice at once in one thread)."""
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, host_resolver_rules, trusted_certificates=trusted_certificates,
                                  **launch_options)
        try:
            yield browser
        finally:
            browser.close()
