"""A real headless Chromium through examples/nginx/seed-layout.conf: the login as a user sees it.

The stub upstream stands in for Prometheus and echoes the headers it received as
JSON, so the page the browser lands on shows the identity nginx passed on.
Screenshots of the login page go to test-artifacts/ (login-desktop.png,
login-phone.png) for a human to look at.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.portal import USERS
from tests.servers.browser import ARTIFACTS
from tests.stacks import NginxStack, nginx_stack

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream) -> Iterator[NginxStack]:
    backend = f"127.0.0.1:{upstream.port}"
    with nginx_stack("seed-layout", tmp_path_factory.mktemp("browser"),
                     {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend}) as started:
        yield started


def open_protected(browser, stack: NginxStack, path: str, **context_options):
    """A fresh browser context (no cookies) that asked for a protected page; returns (context, page, url)."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    url = stack.url("app.example.test", path)
    page.goto(url)
    return context, page, url


def assert_on_login_page(page, stack: NginxStack, url: str) -> None:
    landed = urlsplit(page.url)
    assert f"{landed.scheme}://{landed.netloc}{landed.path}" == stack.portal_base + "/"
    assert parse_qs(landed.query)["rd"] == [url]
    assert page.title() == "Sign in · authportal"
    assert page.locator("h1").inner_text() == "Sign in"
    assert "app.example.test" in page.locator(".lead").inner_text()  # "to continue to app.example.test"


def sign_in(page, user: str) -> None:
    page.fill("#username", user)
    page.fill("#password", USERS[user]["password"])
    page.click("button[type=submit]")


def echoed_headers(page) -> dict[str, str]:
    """The stub's JSON echo as Chromium shows it (text in the page)."""
    return json.loads(page.locator("body").inner_text())["headers"]


def test_browser_login_through_nginx_lands_on_the_app_as_bob(browser, stack, upstream):
    context, page, url = open_protected(browser, stack, "/prometheus/browser-check?g0.expr=up", viewport=DESKTOP)
    try:
        assert_on_login_page(page, stack, url)
        # The stylesheet really loaded: the card is styled (white, rounded), not a bare HTML form.
        card = page.locator("main.card")
        assert card.evaluate("e => getComputedStyle(e).borderTopLeftRadius") == "12px"
        assert page.locator("#username").evaluate("e => e === document.activeElement")  # autofocus
        page.screenshot(path=str(ARTIFACTS / "login-desktop.png"), full_page=False)

        sign_in(page, "bob")
        page.wait_for_url(url)
        headers = echoed_headers(page)
        assert (headers["Remote-User"], headers["Remote-Groups"]) == ("bob", "monitoring")
        assert headers["Remote-Name"] == "Bob Viewer"
        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies["authportal_session"]
        assert session["domain"] in ("example.test", ".example.test") and session["httpOnly"]
        assert session["sameSite"] == "Lax"
    finally:
        context.close()


def test_login_page_on_a_phone(browser, stack):
    context, page, url = open_protected(browser, stack, "/prometheus/phone-check", viewport=PHONE,
                                        is_mobile=True, has_touch=True, device_scale_factor=1)
    try:
        assert_on_login_page(page, stack, url)
        # Nothing wider than the screen: no sideways scrolling on a phone.
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        box = page.locator("#password").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        page.screenshot(path=str(ARTIFACTS / "login-phone.png"), full_page=False)
    finally:
        context.close()


def test_login_works_with_javascript_disabled(browser, stack):
    context, page, url = open_protected(browser, stack, "/prometheus/no-js-check", viewport=DESKTOP,
                                        java_script_enabled=False)
    try:
        assert_on_login_page(page, stack, url)
        sign_in(page, "bob")  # a plain HTML form post: no script involved
        page.wait_for_url(url)
        assert echoed_headers(page)["Remote-User"] == "bob"
    finally:
        context.close()


def test_wrong_password_in_the_browser_stays_on_the_login_page(browser, stack, upstream):
    context, page, url = open_protected(browser, stack, "/prometheus/wrong-password-check", viewport=DESKTOP)
    try:
        page.fill("#username", "bob")
        page.fill("#password", "not-bobs-password")
        page.click("button[type=submit]")
        assert page.locator("[role=alert]").inner_text() == "Incorrect username or password."
        assert page.locator("#username").input_value() == "bob"  # kept, the password is not
        assert page.locator("#password").input_value() == ""
        assert page.locator("#password").evaluate("e => e === document.activeElement")  # type it again at once
        assert not [seen for seen in upstream.requests if seen.path.startswith("/prometheus/wrong-password-check")]
        sign_in(page, "bob")  # the rd survived the failed attempt
        page.wait_for_url(url)
        assert echoed_headers(page)["Remote-User"] == "bob"
    finally:
        context.close()
