"""The portal in each shipped language, in real Chromium: the browser's language (Accept-Language, from the
context's locale) picks the page's, a failed sign-in says so in that language, the picker switches and
remembers. Screenshots of German, Japanese and Arabic (right to left), and of a custom brand in the dark
theme, go to test-artifacts/screenshots/ for a person to look at; the right-to-left and the branded dark
pages are audited like every other page (contrast and axe-core, tests/support/accessibility.py)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from babel.support import Translations

from authportal.i18n import TRANSLATIONS
from authportal.languages import LANGUAGES
from tests.servers.browser import ARTIFACTS
from tests.support.accessibility import measure_contrast, run_axe
from tests.support.portal import USERS, PortalSetup, ServedPortal

SCREENSHOTS = ARTIFACTS / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SIGN_IN, BAD_CREDENTIALS, USERNAME = "Sign in", "Incorrect username or password.", "Username"
LOGO = ('<svg xmlns="http://www.w3.org/2000/svg" width="120" height="32" viewBox="0 0 120 32">'
        '<rect width="32" height="32" rx="6" fill="#6d28d9"/><text x="40" y="22" font-family="sans-serif" '
        'font-size="16" fill="#6d28d9">ACME</text></svg>')


def translated(code: str, text: str) -> str:
    return Translations.load(str(TRANSLATIONS), [code]).gettext(text)


@pytest.fixture(scope="module")
def portal(tmp_path_factory) -> Iterator[str]:
    setup = PortalSetup(tmp_path_factory.mktemp("languages") / "portal")
    with ServedPortal(setup):
        yield f"http://auth.example.test:{setup.port}"


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], "scrolls sideways"


def sign_in_refused(page, portal: str) -> None:
    page.fill("#username", "bob")
    page.fill("#password", "not-" + USERS["bob"]["password"])
    with page.expect_navigation():
        page.click("button[type=submit]")


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang.catalog != "en"], ids=lambda lang: lang.tag)
def test_the_sign_in_page_and_its_refusal_speak_the_browsers_language(browser, portal, language):
    context = browser.new_context(viewport=DESKTOP, locale=language.tag)
    try:
        page = context.new_page()
        page.goto(portal + "/")
        assert page.get_attribute("html", "lang") == language.tag
        assert page.get_attribute("html", "dir") == language.direction
        for english in (SIGN_IN, USERNAME):
            assert translated(language.catalog, english) != english, f"{english!r} has no {language.tag} text"
        assert page.locator("h1").inner_text() == translated(language.catalog, SIGN_IN)
        assert page.locator("label[for=username]").inner_text() == translated(language.catalog, USERNAME)
        sign_in_refused(page, portal)
        assert page.locator("[role=alert]").inner_text() == translated(language.catalog, BAD_CREDENTIALS)
        assert translated(language.catalog, BAD_CREDENTIALS) != BAD_CREDENTIALS
        if language.tag in ("de", "ja", "ar"):
            page.goto(portal + "/")
            screenshot(page, f"sign-in-{language.tag}")
        if language.direction == "rtl":  # the layout mirrors, and stays readable and usable
            assert page.evaluate("getComputedStyle(document.querySelector('main')).direction") == "rtl"
            report = measure_contrast(page)
            assert not report.failures, "\n".join(map(str, report.failures))
            assert run_axe(page) == []
    finally:
        context.close()


def test_the_picker_switches_the_language_and_remembers_it(browser, portal):
    context = browser.new_context(viewport=DESKTOP, locale="en-US")
    try:
        page = context.new_page()
        page.goto(portal + "/?rd=http%3A%2F%2Fapp.example.test%2Fprometheus%2F")
        assert page.locator("h1").inner_text() == SIGN_IN
        page.select_option("#language-picker", "ja")
        with page.expect_navigation():
            page.click(".language button")
        assert page.locator("h1").inner_text() == translated("ja", SIGN_IN)
        assert "rd=http%3A%2F%2Fapp.example.test%2Fprometheus%2F" in page.url  # still on its way to the app
        sign_in_refused(page, portal)  # a later page, a POST, the browser still asking for English
        assert page.locator("[role=alert]").inner_text() == translated("ja", BAD_CREDENTIALS)
        page.keyboard.press("Tab")  # the picker is reachable by keyboard, after the form
        page.select_option("#language-picker", "en")
        with page.expect_navigation():
            page.click(".language button")
        assert page.locator("h1").inner_text() == SIGN_IN
    finally:
        context.close()


def test_a_custom_brand_in_the_dark_theme(browser, tmp_path):
    setup = PortalSetup(tmp_path / "portal")
    logo = setup.directory / "acme.svg"
    logo.write_text(LOGO)
    setup.write(branding={"name": "ACME Monitoring", "logo_file": str(logo), "primary_color": "#6d28d9",
                          "footer": "Need help? [IT helpdesk](https://help.example.test/) · ext. 4357"},
                theme="dark")
    with ServedPortal(setup):
        context = browser.new_context(viewport=DESKTOP, locale="de-DE")
        try:
            page = context.new_page()
            page.goto(f"http://auth.example.test:{setup.port}/")
            assert page.title() == f"{translated('de', SIGN_IN)} · ACME Monitoring"
            button = page.locator("button[type=submit]").first
            assert button.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(109, 40, 217)"
            assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(238, 242, 247)"
            assert page.locator("img.logo").evaluate("i => i.naturalWidth") == 120  # the logo loaded
            assert page.locator(".page-footer a").get_attribute("href") == "https://help.example.test/"
            screenshot(page, "sign-in-brand-dark")
            report = measure_contrast(page)
            assert not report.failures, "\n".join(map(str, report.failures))
            assert run_axe(page) == []
        finally:
            context.close()
