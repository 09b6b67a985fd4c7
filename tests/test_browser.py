"""A real headless Chromium through examples/nginx/seed-layout.conf: the login as a user sees it.

The stub upstream stands in for Prometheus and echoes the headers it received as
JSON, so the page the browser lands on shows the identity nginx passed on.
Screenshots of the login page go to test-artifacts/ (login-desktop.png,
login-phone.png) for a human to look at.
"""
from __future__ import annotations

from tests.servers.browser import ARTIFACTS
from tests.support.browsing import DESKTOP, PHONE, assert_on_login_page, echoed_headers, open_protected, sign_in


def test_browser_login_through_nginx_lands_on_the_app_as_bob(browser, seed_stack, upstream):
    context, page, url = open_protected(browser, seed_stack, "/prometheus/browser-check?g0.expr=up", viewport=DESKTOP)
    try:
        assert_on_login_page(page, seed_stack, url)
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


def test_login_page_on_a_phone(browser, seed_stack):
    context, page, url = open_protected(browser, seed_stack, "/prometheus/phone-check", viewport=PHONE,
                                        is_mobile=True, has_touch=True, device_scale_factor=1)
    try:
        assert_on_login_page(page, seed_stack, url)
        # Nothing wider than the screen: no sideways scrolling on a phone.
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        box = page.locator("#password").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        page.screenshot(path=str(ARTIFACTS / "login-phone.png"), full_page=False)
    finally:
        context.close()


def test_login_works_with_javascript_disabled(browser, seed_stack):
    context, page, url = open_protected(browser, seed_stack, "/prometheus/no-js-check", viewport=DESKTOP,
                                        java_script_enabled=False)
    try:
        assert_on_login_page(page, seed_stack, url)
        sign_in(page, "bob")  # a plain HTML form post: no script involved
        page.wait_for_url(url)
        assert echoed_headers(page)["Remote-User"] == "bob"
    finally:
        context.close()


def test_wrong_password_in_the_browser_stays_on_the_login_page(browser, seed_stack, upstream):
    context, page, url = open_protected(browser, seed_stack, "/prometheus/wrong-password-check", viewport=DESKTOP)
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
