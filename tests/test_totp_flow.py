"""Second factor through the portal: enrollment (QR + secret, fresh password), code page, two_factor rules."""
from __future__ import annotations

from urllib.parse import quote

import pyotp
import pytest

from tests.clock import Clock
from tests.portal import secret_on_page
from tests.test_login import PORTAL, csrf, post_login, verify

ADMIN_URL = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"



@pytest.fixture
def portal_setup(portal_setup_both_storages):
    """Every test here runs twice: sessions and TOTP state in SQLite, then in a real PostgreSQL."""
    return portal_setup_both_storages


def get(client, path):
    return client.get(path, base_url=PORTAL)


def enroll(client, app, rd: str | None = None) -> str:
    """Walk the enrollment page like a user with an authenticator app; returns the secret."""
    path = "/2fa/setup" + (f"?rd={quote(rd, safe='')}" if rd else "")
    page = get(client, path).get_data(as_text=True)
    secret = secret_on_page(page)
    assert "<svg" in page  # the QR code, rendered server-side
    code = pyotp.TOTP(secret).at(app.portal.totp.clock())
    form = {"csrf_token": csrf(client, path), "code": code}
    if rd:
        form["rd"] = rd
    response = client.post("/2fa/setup", base_url=PORTAL, data=form)
    assert response.status_code == 302, response.get_data(as_text=True)
    return secret


def test_admin_api_needs_a_second_factor_then_allows(app, client):
    app.portal.totp.clock = Clock(1_800_000_000)
    post_login(client, "alice", rd=ADMIN_URL)
    assert verify(client, ADMIN_URL, "POST").status_code == 401  # one factor is not enough
    # the portal sends a user without TOTP to enrollment for a two_factor target
    landing = get(client, "/?rd=" + quote(ADMIN_URL, safe=""))
    assert landing.status_code == 302 and landing.headers["Location"].startswith("/2fa/setup")
    enroll(client, app, rd=ADMIN_URL)
    allowed = verify(client, ADMIN_URL, "POST")
    assert allowed.status_code == 200 and allowed.headers["Remote-User"] == "alice"


def test_next_login_asks_for_the_code_and_refuses_a_reused_one(app, client):
    clock = Clock(1_800_000_000)
    app.portal.totp.clock = clock
    post_login(client, "alice")
    secret = enroll(client, app)
    get(client, "/logout")
    client.post("/logout", base_url=PORTAL, data={"csrf_token": csrf(client, "/logout")})

    clock.now += 60
    first = post_login(client, "alice", rd=ADMIN_URL)
    assert first.status_code == 302 and first.headers["Location"].startswith("/2fa?rd=")
    assert verify(client, ADMIN_URL, "POST").status_code == 401
    code = pyotp.TOTP(secret).at(clock.now)
    wrong = client.post("/2fa", base_url=PORTAL, data={"csrf_token": csrf(client, "/2fa"), "code": "000000"
                                                       if code != "000000" else "111111"})
    assert wrong.status_code == 401 and "Wait for the next code in your app" in wrong.get_data(as_text=True)
    ok = client.post("/2fa", base_url=PORTAL, data={"csrf_token": csrf(client, "/2fa"), "code": code,
                                                    "rd": ADMIN_URL})
    assert ok.status_code == 302 and ok.headers["Location"] == ADMIN_URL
    assert verify(client, ADMIN_URL, "POST").status_code == 200

    # another login in the same 30 s step: the same code is refused (replay)
    get(client, "/logout")
    client.post("/logout", base_url=PORTAL, data={"csrf_token": csrf(client, "/logout")})
    post_login(client, "alice")
    replay = client.post("/2fa", base_url=PORTAL, data={"csrf_token": csrf(client, "/2fa"), "code": code})
    assert replay.status_code == 401
    assert verify(client, ADMIN_URL, "POST").status_code == 401


def test_enrollment_needs_a_recent_password(app, client):
    app.portal.totp.clock = Clock(1_800_000_000)
    post_login(client, "bob")
    sid = client.get_cookie("authportal_session", domain="example.test").value
    data = app.portal.sessions.get(sid)
    app.portal.sessions.update(sid, dict(data, authenticated_at=data["authenticated_at"] - 3600))
    page = get(client, "/2fa/setup").get_data(as_text=True)
    assert "Confirm your password" in page and "totp-secret" not in page
    wrong = client.post("/2fa/setup", base_url=PORTAL, data={"csrf_token": csrf(client, "/2fa/setup"),
                                                             "password": "nope"})
    assert wrong.status_code == 401
    client.post("/2fa/setup", base_url=PORTAL, data={"csrf_token": csrf(client, "/2fa/setup"),
                                                     "password": "bob-Secret-2"})
    assert "totp-secret" in get(client, "/2fa/setup").get_data(as_text=True)


def test_a_wrong_code_saves_nothing(app, client):
    app.portal.totp.clock = Clock(1_800_000_000)
    post_login(client, "bob")
    get(client, "/2fa/setup")
    response = client.post("/2fa/setup", base_url=PORTAL, data={"csrf_token": csrf(client, "/2fa/setup"),
                                                                "code": "123456"})
    assert response.status_code == 400
    assert not app.portal.totp.has_totp("bob")


def test_a_one_factor_session_cannot_replace_an_enrolled_device(app, client):
    app.portal.totp.clock = Clock(1_800_000_000)
    post_login(client, "alice")
    enroll(client, app)
    get(client, "/logout")
    client.post("/logout", base_url=PORTAL, data={"csrf_token": csrf(client, "/logout")})
    post_login(client, "alice")  # password only: a thief with the password but not the phone
    response = get(client, "/2fa/setup")
    assert response.status_code == 302 and response.headers["Location"].startswith("/2fa")
    assert "/setup" not in response.headers["Location"]


def test_enrollment_can_be_switched_off(app_with):
    from tests.conftest import ProxiedClient

    app = app_with(totp={"allow_enrollment": False})
    client = ProxiedClient(app)
    post_login(client, "alice")
    page = get(client, "/2fa/setup")
    assert page.status_code == 403 and "authportal totp generate" in page.get_data(as_text=True)
