"""Reset a forgotten password the way a person does: Chromium, real nginx (the seed layout), and a real SMTP
server (STARTTLS, the tests' CA) that receives the link. The old session ends; a link works once."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.servers.browser import ARTIFACTS
from tests.servers.smtp import SmtpServer
from tests.support.browsing import DESKTOP, PHONE, echoed_headers, open_protected, sign_in
from tests.support.stacks import NginxStack, nginx_stack

NEW = "seven quiet ferries cross the bay"


@pytest.fixture(scope="module")
def smtp(tmp_path_factory) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path_factory.mktemp("smtp")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream, smtp) -> Iterator[NginxStack]:
    backend = f"127.0.0.1:{upstream.port}"
    with nginx_stack("seed-layout", tmp_path_factory.mktemp("reset-stack"),
                     {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend},
                     portal_overrides={"password_reset": {"enable": True}, "password_change": {"enable": True},
                                       "notifier": smtp.settings()}) as started:
        yield started


def shoot(page, name: str) -> None:
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)


def test_a_forgotten_password_is_reset_by_an_emailed_link_and_the_old_session_ends(browser, stack, smtp):
    signed_in, old_page, url = open_protected(browser, stack, "/prometheus/graph", viewport=DESKTOP)
    person = browser.new_context(viewport=DESKTOP)
    try:
        sign_in(old_page, "bob")
        old_page.wait_for_url(url)
        assert echoed_headers(old_page)["Remote-User"] == "bob"

        page = person.new_page()
        page.goto(stack.portal_base + "/")
        page.click("#forgot")
        shoot(page, "reset-request")
        page.fill("#identifier", "bob")
        page.click("#main form button[type=submit]")
        assert page.locator("h1").inner_text() == "Check your e-mail"
        said_for_bob = page.locator("#link-sent").inner_text()
        message = smtp.wait_for("bob@example.test")
        assert message["Subject"] == "Reset your password (authportal)"
        text = message.get_body(preferencelist=("plain",)).get_content()
        html = message.get_body(preferencelist=("html",)).get_content()
        [link] = re.findall(r"http://\S+/reset-password/\S+", text)
        assert link in html and "works once, for 10 minutes" in text and "127.0.0.1" in text

        page.goto(stack.portal_base + "/reset-password")
        page.fill("#identifier", "nobody-here")
        page.click("#main form button[type=submit]")
        assert page.locator("#link-sent").inner_text() == said_for_bob  # the same answer for nobody

        page.goto(link)
        assert page.locator("h1").inner_text() == "Choose a new password"
        page.fill("#new_password", "too short")
        page.fill("#confirm_password", "too short")
        page.click("#main form button[type=submit]")
        assert "too short" in page.locator(".alert").inner_text()
        shoot(page, "reset-new-password")
        page.fill("#new_password", NEW)
        page.fill("#confirm_password", NEW)
        page.click("#main form button[type=submit]")
        page.wait_for_url(stack.portal_base + "/")
        assert page.locator(".notice").inner_text() == "Your password was changed. Sign in with the new one."

        old_page.reload()  # the session of the old password has ended
        assert old_page.url.startswith(stack.portal_base + "/?rd=")
        sign_in_with(old_page, "bob", NEW)
        old_page.wait_for_url(url)
        assert echoed_headers(old_page)["Remote-User"] == "bob"

        page.goto(link)  # used: it no longer works
        assert page.locator("h1").inner_text() == "This link no longer works"
    finally:
        person.close()
        signed_in.close()


def sign_in_with(page, user: str, password: str) -> None:
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#main form button[type=submit]")


def test_the_change_page_shows_the_rules_before_the_user_types(browser, stack):
    context, page, url = open_protected(browser, stack, "/prometheus/graph", viewport=DESKTOP)
    try:
        sign_in(page, "carol")
        page.goto(stack.portal_base + "/")
        page.click("text=Change your password")
        rules = page.locator("#password-rules").inner_text()
        assert "At least 12 characters" in rules and "Not your username" in rules
        page.fill("#current_password", "carol-Secret-3")
        page.fill("#new_password", "password1234")
        page.fill("#confirm_password", "password1234")
        page.click("#main form button[type=submit]")
        assert "too easy to guess" in page.locator(".alert").inner_text()
        shoot(page, "password-change")
    finally:
        context.close()
