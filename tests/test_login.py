"""Browser login on the portal (in-process WSGI app): form, CSRF, cookies, fixation, logout, rd, headers."""
from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from tests.support.in_process import (
    PORTAL,
    PROM,
    ProxiedClient,
    csrf,
    page,
    post_login,
    session_cookie,
    verify,
    verify_as,
)
from tests.support.portal import USERS


@pytest.fixture
def portal_setup(portal_setup_both_storages):
    """Every test here runs twice: sessions and TOTP state in SQLite, then in a real PostgreSQL."""
    return portal_setup_both_storages


def test_login_page_is_a_plain_form_with_security_headers(client):
    response = page(client, "/?rd=" + quote(PROM))
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    inputs = re.findall(r'<input id="(\w+)" name="\w+" type="(\w+)"', html)
    assert inputs[:2] == [("username", "text"), ("password", "password")]
    assert "to continue to <strong>app.example.test</strong>" in html
    assert "<script" not in html
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none' forbids all scripts
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"


def test_successful_login_lands_on_rd_with_a_scoped_httponly_cookie(client):
    response = post_login(client, "bob", rd=PROM)
    assert response.status_code == 302
    assert response.headers["Location"] == PROM
    cookie_header = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("authportal_session="))
    assert "Domain=example.test" in cookie_header
    assert "HttpOnly" in cookie_header and "SameSite=Lax" in cookie_header
    assert "Max-Age" not in cookie_header  # not remembered: a browser-session cookie
    allowed = verify(client)
    assert allowed.status_code == 200
    assert allowed.headers["Remote-User"] == "bob"
    assert allowed.headers["Remote-Groups"] == "monitoring"
    assert allowed.headers["Remote-Name"] == "Bob Viewer"
    assert allowed.headers["Remote-Email"] == "bob@example.test"


def test_secure_cookie_flag_and_host_csrf_cookie(app_with):
    app = app_with(server={"portal_url": "https://auth.example.test"}, session={"cookie_secure": True})
    client = ProxiedClient(app)
    first = client.get("/", base_url="https://auth.example.test")
    assert any(h.startswith("__Host-authportal_csrf=") and "Secure" in h
               for h in first.headers.getlist("Set-Cookie"))
    token = re.search(r'value="([0-9a-f]{64})"', first.get_data(as_text=True)).group(1)
    response = client.post("/login", base_url="https://auth.example.test", data={
        "username": "bob", "password": USERS["bob"]["password"], "csrf_token": token})
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("authportal_session="))
    assert "; Secure" in cookie


def test_remember_me_sets_a_persistent_cookie(client):
    response = post_login(client, "bob", remember="1")
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("authportal_session="))
    assert f"Max-Age={30 * 86400}" in cookie


@pytest.mark.parametrize("user, password", [("bob", "wrong"), ("nobody", "whatever"), ("dave", USERS["dave"]["password"])])
def test_failed_logins_say_the_same_thing(client, user, password):
    response = post_login(client, user, password)
    assert response.status_code == 401
    assert "Incorrect username or password." in response.get_data(as_text=True)
    assert session_cookie(client) is None
    assert verify(client).status_code == 401


def test_login_without_csrf_token_is_refused(client):
    page(client)
    response = client.post("/login", base_url=PORTAL, data={"username": "bob", "password": USERS["bob"]["password"]})
    assert response.status_code == 400
    assert "Reload the page" in response.get_data(as_text=True)
    assert session_cookie(client) is None


@pytest.mark.parametrize("token", ["é" * 64, "\x00", "x" * 10_000])
def test_a_malformed_csrf_token_is_a_400_not_a_500(client, token):
    page(client)
    response = client.post("/login", base_url=PORTAL, data={
        "username": "bob", "password": USERS["bob"]["password"], "csrf_token": token})
    assert response.status_code == 400 and "Reload the page" in response.get_data(as_text=True)
    assert session_cookie(client) is None


def test_csrf_token_from_another_browser_is_refused(app, client):
    stolen = csrf(ProxiedClient(app))
    page(client)
    response = client.post("/login", base_url=PORTAL, data={
        "username": "bob", "password": USERS["bob"]["password"], "csrf_token": stolen})
    assert response.status_code == 400


def test_session_id_changes_at_login(client):
    client.set_cookie("authportal_session", "A" * 43, domain="example.test")  # planted by an attacker
    post_login(client, "bob")
    new_id = session_cookie(client).value
    assert new_id != "A" * 43
    assert verify_as(client.application, new_id).status_code == 200
    assert verify_as(client.application, "A" * 43).status_code == 401


def test_login_replaces_the_previous_session_server_side(app, client):
    post_login(client, "bob")
    first = session_cookie(client).value
    assert verify_as(app, first).status_code == 200
    post_login(client, "alice")
    assert verify_as(app, first).status_code == 401


def test_logout_ends_the_session_server_side(app, client):
    post_login(client, "bob")
    sid = session_cookie(client).value
    assert verify_as(app, sid).status_code == 200
    form = page(client, "/logout").get_data(as_text=True)
    assert 'method="post"' in form
    token = re.search(r'value="([0-9a-f]{64})"', form).group(1)
    response = client.post("/logout", base_url=PORTAL, data={"csrf_token": token, "rd": PROM})
    assert response.status_code == 302 and response.headers["Location"] == PROM
    assert verify_as(app, sid).status_code == 401


def test_logout_needs_csrf(client):
    post_login(client, "bob")
    response = client.post("/logout", base_url=PORTAL, data={})
    assert response.status_code == 400
    assert verify(client).status_code == 200


@pytest.mark.parametrize("rd", ["https://evil.test/", "//evil.test", "/\\evil.test", "javascript:alert(1)",
                                "https://example.test.evil.test/", "https://a@evil.test"])
def test_hostile_rd_lands_on_the_portal(client, rd):
    response = post_login(client, "bob", rd=rd)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_relative_rd_from_ingress_nginx_goes_to_the_portal_host(client, portal_setup):
    response = post_login(client, "bob", rd="/prometheus/graph?g0.expr=up")
    assert response.headers["Location"] == f"http://auth.example.test:{portal_setup.port}/prometheus/graph?g0.expr=up"


def test_logged_in_user_sees_home_with_links(client):
    post_login(client, "alice")
    html = page(client).get_data(as_text=True)
    assert "Alice Admin" in html and 'href="/2fa/setup"' in html and 'href="/tokens"' in html


def test_errors_are_pages_not_tracebacks(client):
    response = page(client, "/no-such-page")
    assert response.status_code == 404
    assert "Traceback" not in response.get_data(as_text=True)
    api = page(client, "/api/nothing")
    assert api.status_code == 404 and api.json["error"] == "Not Found"


def test_user_info(client):
    assert page(client, "/api/user/info").status_code == 401
    post_login(client, "alice")
    info = page(client, "/api/user/info").json
    assert info == {"user": "alice", "name": "Alice Admin", "email": "alice@example.test",
                    "groups": ["admins", "monitoring"], "level": 1, "totp": False}


def test_portal_under_a_path_prefix(portal_setup, app_with):
    """portal_url https://host/auth: the portal answers under /auth and its links carry the prefix."""
    app = app_with(server={"portal_url": f"http://app.example.test:{portal_setup.port}/auth"})
    client = ProxiedClient(app)
    html = client.get("/auth/", base_url="http://app.example.test").get_data(as_text=True)
    assert 'action="/auth/login"' in html and 'href="/auth/static/portal.css"' in html
    assert client.get("/auth/static/portal.css", base_url="http://app.example.test").status_code == 200
    token = re.search(r'value="([0-9a-f]{64})"', html).group(1)
    response = client.post("/auth/login", base_url="http://app.example.test", data={
        "username": "bob", "password": USERS["bob"]["password"], "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/auth/"
    allowed = client.get("/auth/api/verify", base_url="http://app.example.test",
                         headers={"X-Original-Method": "GET", "X-Original-URL": "http://app.example.test/alertmanager/x"})
    assert allowed.status_code == 200 and allowed.headers["Remote-User"] == "bob"
    anonymous = ProxiedClient(app).get("/auth/api/verify", base_url="http://app.example.test",
                                       headers={"X-Original-Method": "GET", "X-Original-URL": PROM})
    assert anonymous.headers["Location"].startswith(f"http://app.example.test:{portal_setup.port}/auth/?rd=")


def test_logins_beyond_the_free_threads_get_503_at_once(app, client):
    """Password checks may not take the threads verifies need: a login beyond the gate is refused quickly."""
    gate = app.portal.login_gate
    held = 0
    while gate.acquire(blocking=False):  # simulate logins occupying every admitted slot
        held += 1
    try:
        assert held == app.portal.config.server.threads - 2
        response = post_login(client, "bob")
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        page = response.get_data(as_text=True)
        # The form again, the user name kept, the password never echoed: one click to retry.
        assert "Many people are signing in right now" in page and 'value="bob"' in page
        assert USERS["bob"]["password"] not in page and "Incorrect" not in page
        assert client.get("/").status_code == 200  # pages that check no password are not gated
        assert verify(client).status_code == 401  # no session was created
    finally:
        for _ in range(held):
            gate.release()
    assert post_login(client, "bob").status_code == 302
