"""A person in Chromium signs in through a real OpenID Provider, behind real nginx (seed layout).

Olivia (admins, monitoring at the provider) opens Prometheus, presses "Sign in with Corp SSO", signs in at
the provider and lands back on Prometheus; nginx passes the groups the provider gave. Otto (no groups there)
is forbidden. Signing out of the portal signs out of the provider too. The provider's users are not in the
portal's users file.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Page

from tests.servers import free_port
from tests.servers.browser import ARTIFACTS
from tests.support.browsing import DESKTOP, PHONE, assert_on_login_page, echoed_headers, open_protected
from tests.support.oidc import corp, partners, running_provider
from tests.support.stacks import NginxStack, nginx_stack

PROMETHEUS = "/prometheus/graph"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream) -> Iterator[NginxStack]:
    port = free_port()
    with running_provider([f"http://auth.example.test:{port}"]) as provider:
        backend = f"127.0.0.1:{upstream.port}"
        with nginx_stack("seed-layout", tmp_path_factory.mktemp("oidc-stack"),
                         {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend}, port=port,
                         portal_overrides={"authentication": {"oidc": {"providers": [
                             corp(provider), partners(provider)]}}}) as started:
            yield started


def sign_in_at_the_provider(page, user: str) -> None:
    """Press "Sign in with Corp SSO", then the provider's login and consent forms."""
    page.click("#oidc-corp")
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", "secret")
    page.click("button[type=submit]")
    page.click("button[type=submit]")  # consent: "Continue"


def test_olivia_signs_in_through_the_provider_and_nginx_passes_her_groups(browser, stack):
    context, page, url = open_protected(browser, stack, PROMETHEUS, viewport=DESKTOP)
    try:
        assert_on_login_page(page, stack, url)
        assert page.locator("#oidc-corp").inner_text() == "Sign in with Corp SSO"
        assert page.locator("#oidc-partners").inner_text() == "Sign in with Partners"
        assert page.locator("#password").is_visible()
        page.screenshot(path=str(ARTIFACTS / "login-oidc-desktop.png"), full_page=False)
        page.set_viewport_size(PHONE)
        page.screenshot(path=str(ARTIFACTS / "login-oidc-phone.png"), full_page=False)
        sign_in_at_the_provider(page, "olivia")
        page.wait_for_url(url)
        headers = echoed_headers(page)
        assert headers["Remote-User"] == "olivia"
        assert headers["Remote-Groups"] == "admins,monitoring"
    finally:
        context.close()


@contextmanager
def signed_in(browser, stack: NginxStack, user: str) -> Iterator[tuple[Page, str]]:
    """A new browser context that opened Prometheus and signed in at the provider as `user`: (page, url)."""
    context, page, url = open_protected(browser, stack, PROMETHEUS)
    try:
        sign_in_at_the_provider(page, user)
        page.wait_for_url(url)
        yield page, url
    finally:
        context.close()


def test_otto_without_the_group_is_forbidden_by_nginx(browser, stack):
    with signed_in(browser, stack, "otto") as (page, _url):
        again = page.reload()
        assert again is not None and again.status == 403


def test_signing_out_ends_the_portal_and_the_provider_session(browser, stack):
    with signed_in(browser, stack, "oscar") as (page, url):
        page.goto(f"{stack.portal_base}/logout")
        page.click("button[type=submit]")
        page.click("button[value=yes]")  # the provider: "Yes, sign me out"
        page.wait_for_url(f"{stack.portal_base}/")
        page.goto(url)
        assert_on_login_page(page, stack, url)  # the portal's session is gone
        page.click("#oidc-corp")
        page.wait_for_selector("input[name=login]")  # and the provider's: it asks who you are again
