"""An https portal reached over plain http: the form says why it cannot work, and the log says it once.

The story (issue 15): `server.portal_url: https://…` behind an nginx that listens on plain http. The
form's CSRF cookie is `__Host-…; Secure`, which a browser never sends back over http, so every sign-in
failed with "The form expired … Reload the page" (reloading never helps) and the portal logged nothing.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from werkzeug.test import Client

from tests.support.portal import USERS, PortalSetup, ServedPortal, csrf_from

CAUSE = "but this request came over http: the browser does not send back the Secure cookie the form needs"
FIX = "set server.portal_url to http://… and session.cookie_secure: false"


@pytest.fixture(scope="module")
def https_portal_over_http(tmp_path_factory) -> Iterator[ServedPortal]:
    """The real server (granian) with an https portal_url and Secure cookies, reached directly over http."""
    setup = PortalSetup(tmp_path_factory.mktemp("https-portal"))
    setup.write(server={"portal_url": f"https://auth.example.test:{setup.port}"}, session={"cookie_secure": True})
    with ServedPortal(setup) as served:
        yield served


def test_requests_client_is_told_why_the_form_fails_and_the_log_says_it_once(https_portal_over_http):
    served = https_portal_over_http
    portal = f"http://auth.example.test:{served.setup.port}"
    browser = requests.Session()
    form = browser.get(portal + "/", timeout=10)
    assert form.status_code == 200
    assert "__Host-authportal_csrf" in browser.cookies  # kept, but a Secure cookie never goes back over http
    for _ in range(2):  # the second attempt gets the same explanation, not "reload the page"
        refused = browser.post(portal + "/login", timeout=10, data={
            "username": "bob", "password": USERS["bob"]["password"], "csrf_token": csrf_from(form.text)})
        assert refused.status_code == 400
        page = refused.text.replace("&#39;", "'")
        assert f"the portal URL is https (https://auth.example.test:{served.setup.port}) {CAUSE}" in page
        assert "reloading does not help" in page and FIX in page and "Reload the page" not in page
    logged = [line for line in served.logs().splitlines() if CAUSE in line]
    assert len(logged) == 1, served.logs()  # once a minute, not once per failed form
    assert "WARNING authportal.http: POST /login refused: the portal URL is https" in logged[0] and FIX in logged[0]


def test_chromium_shows_the_reason_instead_of_reload_the_page(browser, https_portal_over_http):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://auth.example.test:{https_portal_over_http.setup.port}/")
        assert not [c for c in context.cookies() if c["name"].startswith("__Host-")]  # Chromium refused it
        page.fill("#username", "bob")
        page.fill("#password", USERS["bob"]["password"])
        page.click("button[type=submit]")
        text = page.locator("body").inner_text()
        assert CAUSE in text and FIX in text and "Reload the page" not in text
    finally:
        context.close()


@pytest.mark.parametrize("peer, forwarded_proto, scheme, explained", [
    ("127.0.0.1", None, "http", True),        # reached directly over http
    ("127.0.0.1", "http", "http", True),      # a trusted plain-http proxy says so
    ("127.0.0.1", "https", "http", False),    # a trusted proxy terminated TLS: the cookie was lost otherwise
    ("203.0.113.9", "https", "http", True),   # an untrusted peer's X-Forwarded-Proto is not believed
    ("127.0.0.1", None, "https", False),      # over https the usual advice stands
], ids=["direct", "trusted-http", "trusted-https", "untrusted-header", "https"])
def test_the_reason_follows_the_scheme_the_browser_used(app_with, peer, forwarded_proto, scheme, explained):
    app = app_with(server={"portal_url": "https://auth.example.test"}, session={"cookie_secure": True})
    headers = {"X-Forwarded-Proto": forwarded_proto} if forwarded_proto else {}
    response = Client(app).post("/login", base_url=f"{scheme}://auth.example.test", headers=headers,
                                environ_overrides={"REMOTE_ADDR": peer},
                                data={"username": "bob", "password": "x", "csrf_token": "0" * 64})
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert (CAUSE in page) is explained
    assert ("Reload the page" in page) is not explained


def test_a_plain_http_trial_is_not_told_anything(app_with):
    """cookie_secure: false (the documented plain-http trial): a missing cookie there is just an expired form."""
    app = app_with()  # the test setup: http portal_url, cookie_secure false
    response = Client(app).post("/login", base_url="http://auth.example.test",
                                data={"username": "bob", "password": "x", "csrf_token": "0" * 64})
    assert response.status_code == 400 and CAUSE not in response.get_data(as_text=True)
