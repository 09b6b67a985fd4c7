"""Chromium enrolls a second factor and signs in with it, through nginx (examples/nginx/seed-layout.conf)."""
from __future__ import annotations

import re
import time

import pyotp

from tests.servers.browser import ARTIFACTS
from tests.support.browsing import DESKTOP, echoed_headers, open_protected, sign_in

ADMIN_PATH = "/prometheus/api/v1/admin/tsdb/snapshot"


def test_enrollment_then_a_second_login_with_the_code(browser, seed_stack):
    context, page, url = open_protected(browser, seed_stack, ADMIN_PATH, viewport=DESKTOP)
    try:
        sign_in(page, "alice")
        # alice has no device yet and the admin API needs two factors: the portal offers enrollment
        page.wait_for_url(lambda current: "/2fa/setup" in current)
        assert page.locator("h1").inner_text() == "Set up two-factor"
        assert page.locator("figure.qr svg").count() == 1
        shown = page.locator("#totp-secret").inner_text()
        assert re.fullmatch(r"(?:[A-Z2-7]{4} )*[A-Z2-7]{1,4}", shown)  # in groups of four, as apps show them
        secret = shown.replace(" ", "")  # what a person types; apps take it with or without the spaces
        page.screenshot(path=str(ARTIFACTS / "totp-enrollment.png"), full_page=False)
        enrollment_code = pyotp.TOTP(secret).now()
        page.fill("#code", enrollment_code)
        page.click("button[type=submit]")
        page.wait_for_url(url)
        assert echoed_headers(page)["Remote-User"] == "alice"
    finally:
        context.close()

    context, page, url = open_protected(browser, seed_stack, ADMIN_PATH, viewport=DESKTOP)
    try:
        sign_in(page, "alice")
        page.wait_for_url(lambda current: "/2fa?" in current)
        assert page.locator("h1").inner_text() == "Two-factor code"
        page.fill("#code", enrollment_code)  # already used at enrollment (still within the skew): refused
        page.click("button[type=submit]")
        # the person is told what to do: wait for the app's next code, not retype this one
        assert page.locator(".alert").inner_text() == ("That code was already used or is wrong. "
                                                       "Wait for the next code in your app and enter it.")
        page.screenshot(path=str(ARTIFACTS / "totp-code-refused.png"), full_page=False)
        page.fill("#code", pyotp.TOTP(secret).at(time.time() + 30))  # the next step, within the skew
        page.click("button[type=submit]")
        page.wait_for_url(url)
        assert echoed_headers(page)["Remote-User"] == "alice"
    finally:
        context.close()
