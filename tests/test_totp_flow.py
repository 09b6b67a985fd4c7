"""Second factor through the portal: enrollment (QR + secret, fresh password), code page, two_factor rules."""
from __future__ import annotations

from urllib.parse import quote

import pyotp
import pytest

from tests.support.clock import Clock
from tests.support.in_process import PORTAL, AuthActions, ProxiedClient
from tests.support.portal import secret_on_page

ADMIN_URL = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"



@pytest.fixture
def portal_setup(portal_setup_both_storages):
    """Every test here runs twice: sessions and TOTP state in SQLite, then in a real PostgreSQL."""
    return portal_setup_both_storages


def enroll(auth: AuthActions, app, rd: str | None = None) -> str:
    """Walk the enrollment page like a user with an authenticator app; returns the secret."""
    path = "/2fa/setup" + (f"?rd={quote(rd, safe='')}" if rd else "")
    page = auth.page(path).get_data(as_text=True)
    secret = secret_on_page(page)
    assert "<svg" in page  # the QR code, rendered server-side
    code = pyotp.TOTP(secret).at(app.portal.totp.clock())
    form = {"csrf_token": auth.csrf(path), "code": code}
    if rd:
        form["rd"] = rd
    response = auth.client.post("/2fa/setup", base_url=PORTAL, data=form)
    assert response.status_code == 302, response.get_data(as_text=True)
    return secret


def test_admin_api_needs_a_second_factor_then_allows(app, auth):
    app.portal.totp.clock = Clock(1_800_000_000)
    auth.login("alice", rd=ADMIN_URL)
    assert auth.verify(ADMIN_URL, "POST").status_code == 401  # one factor is not enough
    # the portal sends a user without TOTP to enrollment for a two_factor target
    landing = auth.page("/?rd=" + quote(ADMIN_URL, safe=""))
    assert landing.status_code == 302 and landing.headers["Location"].startswith("/2fa/setup")
    enroll(auth, app, rd=ADMIN_URL)
    allowed = auth.verify(ADMIN_URL, "POST")
    assert allowed.status_code == 200 and allowed.headers["Remote-User"] == "alice"


def test_next_login_asks_for_the_code_and_refuses_a_reused_one(app, auth):
    clock = Clock(1_800_000_000)
    app.portal.totp.clock = clock
    auth.login("alice")
    secret = enroll(auth, app)
    auth.logout()

    clock.now += 60
    first = auth.login("alice", rd=ADMIN_URL)
    assert first.status_code == 302 and first.headers["Location"].startswith("/2fa?rd=")
    assert auth.verify(ADMIN_URL, "POST").status_code == 401
    code = pyotp.TOTP(secret).at(clock.now)
    wrong = auth.submit("/2fa", code="000000" if code != "000000" else "111111")
    assert wrong.status_code == 401 and "Wait for the next code in your app" in wrong.get_data(as_text=True)
    ok = auth.submit("/2fa", code=code, rd=ADMIN_URL)
    assert ok.status_code == 302 and ok.headers["Location"] == ADMIN_URL
    assert auth.verify(ADMIN_URL, "POST").status_code == 200

    # another login in the same 30 s step: the same code is refused (replay)
    auth.logout()
    auth.login("alice")
    replay = auth.submit("/2fa", code=code)
    assert replay.status_code == 401
    assert auth.verify(ADMIN_URL, "POST").status_code == 401


def test_enrollment_needs_a_recent_password(app, auth):
    app.portal.totp.clock = Clock(1_800_000_000)
    auth.login("bob")
    sid = auth.session_id
    data = app.portal.sessions.get(sid)
    app.portal.sessions.update(sid, dict(data, authenticated_at=data["authenticated_at"] - 3600))
    page = auth.page("/2fa/setup").get_data(as_text=True)
    assert "Confirm your password" in page and "totp-secret" not in page
    assert auth.submit("/2fa/setup", password="nope").status_code == 401
    auth.submit("/2fa/setup", password="bob-Secret-2")
    assert "totp-secret" in auth.page("/2fa/setup").get_data(as_text=True)


def test_a_wrong_code_saves_nothing(app, auth):
    app.portal.totp.clock = Clock(1_800_000_000)
    auth.login("bob")
    response = auth.submit("/2fa/setup", code="123456")
    assert response.status_code == 400
    assert not app.portal.totp.has_totp("bob")


def test_a_one_factor_session_cannot_replace_an_enrolled_device(app, auth):
    app.portal.totp.clock = Clock(1_800_000_000)
    auth.login("alice")
    enroll(auth, app)
    auth.logout()
    auth.login("alice")  # password only: a thief with the password but not the phone
    response = auth.page("/2fa/setup")
    assert response.status_code == 302 and response.headers["Location"].startswith("/2fa")
    assert "/setup" not in response.headers["Location"]


def test_enrollment_can_be_switched_off(app_with):
    auth = AuthActions(ProxiedClient(app_with(totp={"allow_enrollment": False})))
    auth.login("alice")
    page = auth.page("/2fa/setup")
    assert page.status_code == 403 and "authportal totp generate" in page.get_data(as_text=True)
