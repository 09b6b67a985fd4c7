"""Pages a person trusts: the served portal (`authportal serve`) in real headless Chromium.

Every page a user meets is reached the way a person reaches it, then measured at
desktop (1280×800) and phone (390×844) width, in the light and the dark theme: contrast ratios computed from the
styles Chromium applied (text 4.5:1; focus ring, input and button edges 3:1,
tests/support/accessibility.py), axe-core's WCAG 2.1 AA audit, no sideways scrolling.
Screenshots go to test-artifacts/screenshots/<page>-<width>.png for a human to
look at, and the measured ratios to test-artifacts/contrast/<page>.json.

Then the stories: signing out says so (JavaScript off), the account page says who
you are and what you own, the enrollment page says why it is shown and lets you
go back, a reused code tells you to wait for the next one.
"""
from __future__ import annotations

import html as html_module
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pyotp
import pytest
import requests

from tests.servers.browser import ARTIFACTS
from tests.support.accessibility import measure_contrast, run_axe
from tests.support.portal import USERS, PortalSetup, ServedPortal, csrf_from, login

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
THEMES = ("light", "dark")
SCREENSHOTS = ARTIFACTS / "screenshots"
CONTRAST = ARTIFACTS / "contrast"

#: alice (admins) needs two factors here (SEED_RULES) and has none yet: the portal sends her to enroll.
ADMIN_URL = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"
#: bob (monitoring) needs one factor here.
GRAPH_URL = "http://app.example.test/prometheus/graph"
SIGNED_OUT = "You have been signed out."


@dataclass
class Portal:
    served: ServedPortal
    carol_secret: str  # carol has an authenticator app, enrolled by the administrator

    def url(self, path: str = "/") -> str:
        return f"http://auth.example.test:{self.served.setup.port}{path}"


@contextmanager
def serving_portal(directory: Path) -> Iterator[Portal]:
    setup = PortalSetup(directory / "portal").write(theme="auto")  # light or dark as the browser prefers
    generated = subprocess.run([sys.executable, "-m", "authportal", "totp", "generate", "carol",
                                "--config", str(setup.config_path)], capture_output=True, text=True, check=True)
    uri = next(line for line in generated.stdout.splitlines() if line.startswith("otpauth://"))
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    with ServedPortal(setup) as served:
        yield Portal(served, secret)


@pytest.fixture(scope="module")
def portal(tmp_path_factory) -> Iterator[Portal]:
    """Shared by the module's stories: none may leave a device, a ban or a changed file behind."""
    with serving_portal(tmp_path_factory.mktemp("pages")) as served:
        yield served


@pytest.fixture
def own_portal(tmp_path) -> Iterator[Portal]:
    """A portal of the test's own, for a story that enrolls a device."""
    with serving_portal(tmp_path) as served:
        yield served


@contextmanager
def browser_page(browser, **options):
    context = browser.new_context(viewport=DESKTOP, **options)
    try:
        yield context.new_page()
    finally:
        context.close()


def submit(page, button: str = "button[type=submit]") -> None:
    with page.expect_navigation():
        page.click(button)


def sign_in(page, portal: Portal, user: str, rd: str | None = None, password: str | None = None) -> None:
    page.goto(portal.url("/" + (f"?rd={quote(rd, safe='')}" if rd else "")))
    page.fill("#username", user)
    page.fill("#password", USERS[user]["password"] if password is None else password)
    submit(page)


def wrong_code(secret: str) -> str:
    """Six digits the app does not show now (nor within the skew)."""
    totp = pyotp.TOTP(secret)
    return next(code for code in ("000000", "111111", "222222") if not totp.verify(code, valid_window=2))


# ---- every page, measured and photographed

def _sign_in_page(page, portal):
    page.goto(portal.url("/"))


def _sign_in_refused(page, portal):
    sign_in(page, portal, "bob", password="not-bobs-password")
    assert page.locator("[role=alert]").inner_text() == "Incorrect username or password."


def _account(page, portal):
    sign_in(page, portal, "bob")
    assert page.locator("h1").inner_text() == "Your account"


def _sign_out(page, portal):
    sign_in(page, portal, "bob")
    page.goto(portal.url("/logout"))


def _signed_out(page, portal):
    _sign_out(page, portal)
    submit(page)
    assert page.locator("[role=status]").inner_text() == SIGNED_OUT


def _second_factor(page, portal):
    sign_in(page, portal, "carol")
    assert page.locator("h1").inner_text() == "Two-factor code"


def _second_factor_refused(page, portal):
    _second_factor(page, portal)
    page.fill("#code", wrong_code(portal.carol_secret))
    submit(page)
    assert page.locator("[role=alert]").count() == 1


def _totp_setup(page, portal):
    sign_in(page, portal, "alice", rd=ADMIN_URL)
    assert page.locator("h1").inner_text() == "Set up two-factor"


def _api_tokens(page, portal):
    sign_in(page, portal, "bob")
    page.goto(portal.url("/tokens"))
    page.fill("#name", "grafana")
    submit(page, "text=Create token")
    assert page.locator("#new-token").count() == 1  # the new token shown once, and the list with Revoke


def _error_not_found(page, portal):
    page.goto(portal.url("/no-such-page"))


def _error_form_expired(page, portal):
    page.goto(portal.url("/"))
    page.context.clear_cookies()  # the CSRF cookie is gone, as after a browser restart
    page.fill("#username", "bob")
    page.fill("#password", USERS["bob"]["password"])
    submit(page)


def _error_wrong_method(page, portal):
    page.goto(portal.url("/login"))


PAGES: dict[str, Callable] = {
    "sign-in": _sign_in_page, "sign-in-refused": _sign_in_refused, "account": _account,
    "sign-out": _sign_out, "signed-out": _signed_out, "second-factor": _second_factor,
    "second-factor-refused": _second_factor_refused, "totp-setup": _totp_setup, "api-tokens": _api_tokens,
    "error-not-found": _error_not_found, "error-form-expired": _error_form_expired,
    "error-wrong-method": _error_wrong_method,
}


@pytest.mark.parametrize("name", PAGES)
def test_page_is_readable_and_usable_by_keyboard_at_desktop_and_phone_width(browser, portal, name):
    with browser_page(browser) as page:
        PAGES[name](page, portal)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        CONTRAST.mkdir(parents=True, exist_ok=True)
        measured = {}
        for (width, viewport), theme in itertools.product((("desktop", DESKTOP), ("phone", PHONE)), THEMES):
            page.set_viewport_size(viewport)
            page.emulate_media(color_scheme=theme)  # the portal's theme is auto: it follows the browser
            shot = f"{name}-{width}" + ("-dark" if theme == "dark" else "")
            page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"), full_page=True)
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], "scrolls sideways"

            report = measure_contrast(page)
            measured[f"{width}-{theme}"] = {kind: round(report.lowest(kind), 2) for kind in sorted(report.kinds())}
            assert not report.failures, f"{theme}, {width}:\n" + "\n".join(map(str, report.failures))
            assert "text" in report.kinds() and "focus ring" in report.kinds()  # every page has both
            if page.locator("input[type=text], input[type=password]").count():
                assert "input border" in report.kinds()
            assert run_axe(page) == [], f"{theme}, {width}"
        (CONTRAST / f"{name}.json").write_text(json.dumps(measured, indent=1, sort_keys=True))


# ---- signing out

def test_signing_out_says_so_once_with_javascript_off(browser, portal):
    with browser_page(browser, java_script_enabled=False) as page:
        sign_in(page, portal, "bob")
        submit(page, "form[action='/logout'] button")  # the account page's Sign out
        assert page.url == portal.url("/")  # nothing in the address: no flag to bookmark, share or forge
        assert page.locator("[role=status]").inner_text() == SIGNED_OUT
        assert page.locator("h1").inner_text() == "Sign in"
        assert "authportal_session" not in {c["name"] for c in page.context.cookies()}
        page.reload()
        assert page.locator("[role=status]").count() == 0  # said once, not on every later visit


def test_the_signed_out_notice_waits_for_the_trip_through_the_app(portal):
    http = requests.Session()
    login(http, portal.url(""), "bob")
    form = http.get(portal.url("/logout"), params={"rd": GRAPH_URL}).text
    out = http.post(portal.url("/logout"), data={"csrf_token": csrf_from(form), "rd": GRAPH_URL},
                    allow_redirects=False)
    assert out.status_code == 302 and out.headers["Location"] == GRAPH_URL  # back to the app, unchanged
    # the app, its session gone, sends the browser to the sign-in page: that page says what happened
    back = http.get(portal.url("/"), params={"rd": GRAPH_URL})
    assert SIGNED_OUT in back.text and "to continue to <strong>app.example.test</strong>" in back.text
    assert SIGNED_OUT not in http.get(portal.url("/")).text


def test_a_failed_sign_in_does_not_claim_a_sign_out(portal):
    http = requests.Session()
    login(http, portal.url(""), "bob")
    form = http.get(portal.url("/logout")).text
    http.post(portal.url("/logout"), data={"csrf_token": csrf_from(form)}, allow_redirects=False)
    refused = login(http, portal.url(""), "bob", password="wrong")  # the notice was shown by the GET before
    assert refused.status_code == 401 and SIGNED_OUT not in refused.text


# ---- the account page

def _facts(page, section: str) -> dict[str, str]:
    terms = page.locator(f"#{section} dt").all_inner_texts()
    values = page.locator(f"#{section} dd").all_inner_texts()
    return dict(zip(terms, (v.strip() for v in values), strict=True))


def active_tokens(page) -> int:
    said = re.search(r"No active tokens\.|(\d+) active tokens?\.", page.locator("#api-tokens").inner_text())
    assert said, "the API tokens section does not say how many"
    return int(said.group(1) or 0)


def test_the_account_page_says_who_you_are_and_what_you_own(browser, portal):
    with browser_page(browser) as page:
        sign_in(page, portal, "bob")
        assert page.url == portal.url("/") and page.title() == "Your account · authportal"
        assert page.locator("h2").all_inner_texts() == ["Who you are", "Second factor", "Security keys and passkeys",
                                                        "Your sessions", "API tokens"]
        # this portal is on plain http: the page says why keys cannot be added instead of offering them
        assert "cannot be used on this portal: the portal is not on https" in page.locator("#security-keys").inner_text()
        assert page.locator("#security-keys a").count() == 0
        assert _facts(page, "identity") == {"Username": "bob", "Name": "Bob Viewer", "Email": "bob@example.test",
                                            "Groups": "monitoring"}
        assert _facts(page, "second-factors") == {"Authenticator app": "Not set up"}
        assert page.locator("#second-factors a").inner_text() == "Set up an authenticator app"
        before = active_tokens(page)

        page.click("text=Manage API tokens")
        page.fill("#name", "grafana-account-page")
        submit(page, "text=Create token")
        page.click("text=Back to your account")
        assert active_tokens(page) == before + 1
        assert page.locator("form[action='/logout'] button").inner_text() == "Sign out"

    with browser_page(browser) as page:
        sign_in(page, portal, "carol")
        page.fill("#code", pyotp.TOTP(portal.carol_secret).now())
        submit(page)
        assert page.locator("h1").inner_text() == "Your account"
        assert "with your password and a second factor" in page.locator(".lead").inner_text()
        assert _facts(page, "identity")["Groups"] == "none"
        assert _facts(page, "second-factors") == {"Authenticator app": "Set up"}
        assert page.locator("#second-factors a").inner_text() == "Replace your authenticator app"


# ---- enrolling a second factor

def qr_code_shown_whole(page) -> bool:
    """The QR symbol (its light background square) lies inside the box the page gives the SVG: not clipped."""
    return page.evaluate("""() => {
      const svg = document.querySelector('figure.qr svg'), symbol = svg.querySelector('path');
      const box = svg.getBoundingClientRect(), drawn = symbol.getBoundingClientRect();
      return box.width >= 150 && drawn.width > 0 && drawn.left >= box.left - 0.5 && drawn.top >= box.top - 0.5
          && drawn.right <= box.right + 0.5 && drawn.bottom <= box.bottom + 0.5;
    }""")


def test_enrollment_says_a_rule_sent_you_and_lets_you_go_back(browser, portal):
    with browser_page(browser) as page:
        sign_in(page, portal, "alice", rd=ADMIN_URL)
        assert urlsplit(page.url).path == "/2fa/setup"
        reason = page.locator("#setup-reason").inner_text()
        assert reason.startswith("The page you asked for on app.example.test needs a second factor.")
        assert qr_code_shown_whole(page)
        submit(page, "#setup-cancel")
        assert page.url == portal.url("/") and page.locator("h1").inner_text() == "Your account"
        assert _facts(page, "second-factors") == {"Authenticator app": "Not set up"}  # nothing saved


def test_enrollment_you_chose_does_not_blame_a_rule(browser, portal):
    with browser_page(browser) as page:
        sign_in(page, portal, "bob")
        submit(page, "text=Set up an authenticator app")
        assert page.locator("#setup-reason").inner_text().startswith("Add an authenticator app")
        # an rd that needs no second factor is no reason to claim one
        page.goto(portal.url(f"/2fa/setup?rd={quote(GRAPH_URL, safe='')}"))
        assert "asked for" not in page.locator("#setup-reason").inner_text()
        submit(page, "#setup-cancel")
        assert page.url == portal.url("/") and page.locator("h1").inner_text() == "Your account"


def test_a_reused_code_says_to_wait_for_the_next_one(browser, own_portal, upstream):
    """alice enrolls a device: on a portal of this test's own, so that she has none in the other stories."""
    portal = own_portal
    admin_url = f"http://app.example.test:{upstream.port}/prometheus/api/v1/admin/tsdb/snapshot"
    with browser_page(browser) as page:
        sign_in(page, portal, "alice", rd=admin_url)
        secret = page.locator("#totp-secret").inner_text().replace(" ", "")
        code = pyotp.TOTP(secret).now()
        page.fill("#code", code)
        submit(page)
        assert page.url == admin_url  # enrolled, and on to the app
    with browser_page(browser) as page:
        sign_in(page, portal, "alice")
        page.fill("#code", code)  # the same code again, still on the app's screen
        submit(page)
        assert page.locator("[role=alert]").inner_text() == (
            "That code was already used or is wrong. Wait for the next code in your app and enter it.")


# ---- keyboard only

_FOCUSED = """() => { const e = document.activeElement, s = getComputedStyle(e);
  return {id: e.id || e.getAttribute('name') || e.tagName.toLowerCase(), text: (e.innerText || '').trim(),
          outline: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2}; }"""


def tab_order(page, stops: int) -> list[str]:
    """The focused control, then the ones the Tab key visits from it; each must show its focus ring."""
    visited = []
    for stop in range(stops):
        if stop:
            page.keyboard.press("Tab")
        focused = page.evaluate(_FOCUSED)
        assert focused["outline"], f"no visible focus on {focused}"
        visited.append(focused["id"] if focused["id"] not in ("button", "a") else focused["text"])
    return visited


def test_signing_in_with_two_factors_by_keyboard_alone(browser, portal):
    """Tab order follows the form, every stop shows its focus ring, Enter submits, and the next field has the
    focus without a click."""
    with browser_page(browser) as page:
        page.goto(portal.url("/"))
        assert tab_order(page, 6) == ["username", "password", "remember", "Sign in", "language-picker", "Change"]
        page.focus("#username")
        page.keyboard.type("carol")
        page.keyboard.press("Tab")
        page.keyboard.type(USERS["carol"]["password"])
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.locator("h1").inner_text() == "Two-factor code"
        assert page.evaluate(_FOCUSED)["id"] == "code"
        page.keyboard.type(pyotp.TOTP(portal.carol_secret).now())
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.locator("h1").inner_text() == "Your account"


# ---- error pages, in words

STOCK_NAMES = re.compile(r"Bad Request|Forbidden|Not Found|Method Not Allowed|Too Many Requests|"
                         r"Internal Server Error|Service Unavailable")


def heading(html: str) -> str:
    match = re.search(r"<h1>(.*?)</h1>", html, re.S)
    assert match, "no heading"
    return html_module.unescape(match.group(1))


def _signed_in(client) -> None:
    page = client.get("/", base_url=PORTAL_BASE).get_data(as_text=True)
    client.post("/login", base_url=PORTAL_BASE, data={"username": "bob", "password": USERS["bob"]["password"],
                                                     "csrf_token": csrf_from(page)})


PORTAL_BASE = "http://auth.example.test"


def test_an_expired_form_says_to_reload(client):
    response = client.post("/login", base_url=PORTAL_BASE, data={"username": "bob", "password": "x"})
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and heading(html) == "Please try that again"
    assert "The form expired or was not sent by this site. Reload the page and try again." in html
    assert not STOCK_NAMES.search(html)


def test_a_refused_address_is_told_it_has_no_access(app_with):
    from tests.support.in_process import ProxiedClient

    client = ProxiedClient(app_with(metrics={"networks": ["10.0.0.0/8"]}))
    response = client.get("/metrics", base_url=PORTAL_BASE)
    html = response.get_data(as_text=True)
    assert response.status_code == 403 and heading(html) == "You don't have access to this"
    assert "Metrics are not served to this address." in html and not STOCK_NAMES.search(html)


def test_a_missing_page_is_page_not_found_with_a_way_on(client):
    response = client.get("/no-such-page", base_url=PORTAL_BASE)
    html = response.get_data(as_text=True)
    assert response.status_code == 404 and heading(html) == "Page not found"
    assert "Check it for typing mistakes" in html and not STOCK_NAMES.search(html)
    assert '<a href="/">Go to the sign-in page</a>' in html
    _signed_in(client)
    html = client.get("/no-such-page", base_url=PORTAL_BASE).get_data(as_text=True)
    assert '<a href="/">Go to your account</a>' in html  # a signed-in user goes back to their account
    api = client.get("/api/nothing", base_url=PORTAL_BASE)
    assert api.json == {"error": "Not Found", "message": api.json["message"]}  # programs keep the stock name


def test_the_wrong_method_says_to_use_the_page(client):
    response = client.get("/login", base_url=PORTAL_BASE)
    html = response.get_data(as_text=True)
    assert response.status_code == 405 and heading(html) == "That can't be done from here"
    assert "use the buttons and links on the page" in html and not STOCK_NAMES.search(html)
    assert response.headers["Allow"].split(", ") and "POST" in response.headers["Allow"]


def test_too_many_requests_says_to_wait(app_with):
    from flask import abort

    from tests.support.in_process import ProxiedClient

    app = app_with()
    app.flask.add_url_rule("/slow-down", "slow_down", lambda: abort(429))  # nothing of the portal's says 429 yet
    response = ProxiedClient(app).get("/slow-down", base_url=PORTAL_BASE)
    html = response.get_data(as_text=True)
    assert response.status_code == 429 and heading(html) == "Too many attempts"
    assert "Wait a minute, then try again." in html and not STOCK_NAMES.search(html)


def test_a_crash_is_our_fault_in_plain_words(app, client, monkeypatch, caplog):
    _signed_in(client)

    def broken(*args, **kwargs):
        raise RuntimeError("token table exploded")

    monkeypatch.setattr(app.portal.tokens, "list", broken)
    response = client.get("/", base_url=PORTAL_BASE)
    html = response.get_data(as_text=True)
    assert response.status_code == 500 and heading(html) == "Something went wrong on our side"
    assert "tell your administrator" in html and "exploded" not in html and "Traceback" not in html
    assert not STOCK_NAMES.search(html)
    assert "token table exploded" in caplog.text  # the log has it, the page does not


def test_a_session_store_outage_at_sign_out_says_unavailable(app_with):
    from tests.servers import free_port
    from tests.support.in_process import ProxiedClient

    app = app_with(session={"redis": {"url": f"redis://127.0.0.1:{free_port()}/0", "timeout": "1s"}})
    client = ProxiedClient(app)
    form = client.get("/logout", base_url=PORTAL_BASE).get_data(as_text=True)
    client.set_cookie("authportal_session", "A" * 43, domain="auth.example.test")
    response = client.post("/logout", base_url=PORTAL_BASE, data={"csrf_token": csrf_from(form)})
    html = response.get_data(as_text=True)
    assert response.status_code == 503 and heading(html) == "Sign-in is unavailable right now"
    assert "Please try again in a moment." in html and not STOCK_NAMES.search(html)
