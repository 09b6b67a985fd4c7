"""A person in headless Chromium in front of the seed-layout stack (tests/conftest.py `seed_stack`).

The stub upstream stands in for Prometheus and echoes the headers it received
as JSON, so the page the browser lands on shows the identity nginx passed on.
"""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from tests.support.portal import USERS
from tests.support.stacks import NginxStack

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


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
