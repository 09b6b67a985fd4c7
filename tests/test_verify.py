"""The verify endpoints: decisions, proxy styles, trusted proxies, machine clients, fail closed."""
from __future__ import annotations

import base64
import socket
from urllib.parse import quote

import pytest

from tests.support.in_process import PORTAL, PROM, VERIFY_PROM, ProxiedClient, csrf, forward_auth, post_login, verify
from tests.support.portal import USERS, basic_header


def test_anonymous_gets_401_with_the_login_url(client, portal_setup):
    response = verify(client, Accept="text/html")
    assert response.status_code == 401
    assert response.headers["Location"] == f"http://auth.example.test:{portal_setup.port}/?rd={quote(PROM, safe='')}"
    assert "WWW-Authenticate" not in response.headers  # a browser must not get a Basic prompt
    assert response.get_data() == b""


def test_anonymous_script_gets_basic_challenge(client):
    response = verify(client, Accept="application/json")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="authportal"'


@pytest.mark.parametrize("user, url, method, status", [
    ("bob", PROM, "GET", 200),
    ("carol", PROM, "GET", 403),                                                 # not in monitoring
    ("bob", "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot", "POST", 403),
    ("alice", "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot", "POST", 401),  # needs 2FA
    ("bob", "http://app.example.test/alertmanager/api/v2/silences", "GET", 200),
    ("bob", "http://app.example.test/alertmanager/api/v2/silences", "POST", 403),
    ("bob", "http://prometheus.example.test/graph", "GET", 200),
    ("bob", "http://alertmanager.example.test/", "GET", 403),
    ("alice", "http://alertmanager.example.test/", "GET", 200),
    ("bob", "http://other.example.test/", "GET", 403),                           # default deny
    ("bob", "http://APP.example.test:8443/prometheus/graph", "GET", 200),        # case and port ignored
])
def test_decisions_for_logged_in_users(client, user, url, method, status):
    post_login(client, user)
    response = verify(client, url, method)
    assert response.status_code == status
    assert (response.headers.get("Remote-User") == user) == (status == 200)


ADMIN = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"


@pytest.mark.parametrize("disguised", [
    "/public/../prometheus/graph", "/public/%2e%2e/prometheus/graph", "/public/%2E%2E/prometheus/graph",
    "/public/..%2Fprometheus/graph", "/public/.%2e/prometheus/graph", "/public//../prometheus/graph",
    "/public/./../prometheus/graph", "/public/x/../../prometheus/graph",
])
def test_a_public_prefix_cannot_disguise_a_protected_path(client, disguised):
    """nginx routes `/public/../prometheus/graph` to the Prometheus location: the rules must see that path too."""
    url = "http://app.example.test" + disguised
    assert verify(client, url).status_code == 401
    assert forward_auth(client, uri=disguised).status_code == 401
    assert verify(client, "http://app.example.test/prometheus/../public/x").status_code == 200  # and the reverse
    post_login(client, "carol")  # logged in, but not in monitoring: Prometheus stays closed to her
    assert verify(client, url).status_code == 403
    post_login(client, "bob")
    response = verify(client, url)
    assert response.status_code == 200 and response.headers["Remote-User"] == "bob"


@pytest.mark.parametrize("disguised", [
    "/prometheus/api/v1/%61dmin/tsdb/snapshot", "/prometheus/api/v1/admin%2Ftsdb/snapshot",
    "/prometheus//api/v1/admin/tsdb/snapshot", "/prometheus/api/v1/x/../admin/tsdb/snapshot",
    "/prometheus/api/./v1/admin/tsdb/snapshot",
])
def test_an_encoded_path_cannot_skip_the_two_factor_rule(client, disguised):
    post_login(client, "alice")  # one factor: enough for Prometheus, not for its admin API
    assert verify(client, ADMIN, "POST").status_code == 401
    assert verify(client, "http://app.example.test" + disguised, "POST").status_code == 401
    assert forward_auth(client, uri=disguised, method="POST").status_code == 401


@pytest.mark.parametrize("path", ["/../prometheus/graph", "/%2e%2e/prometheus/graph", "/public/%00/x"])
def test_a_path_above_the_root_or_with_a_nul_is_a_bad_request(client, path):
    post_login(client, "bob")
    response = verify(client, "http://app.example.test" + path)
    assert response.status_code == 400 and b"malformed original URL" in response.get_data()
    assert "Remote-User" not in response.headers


def test_bypass_needs_no_login(client):
    response = verify(client, "http://app.example.test/public/index.html")
    assert response.status_code == 200 and "Remote-User" not in response.headers


def test_forward_auth_redirects_browsers_and_refuses_scripts(client, portal_setup):
    browser = forward_auth(client, Accept="text/html,application/xhtml+xml")
    assert browser.status_code == 302
    assert browser.headers["Location"] == (f"http://auth.example.test:{portal_setup.port}/?rd="
                                           + quote("https://app.example.test/prometheus/graph", safe=""))
    script = forward_auth(client, Accept="*/*")
    assert script.status_code == 401 and script.headers["WWW-Authenticate"].startswith("Basic")
    post_to_it = forward_auth(client, method="POST", Accept="text/html")
    assert post_to_it.status_code == 401  # only GET/HEAD navigations are redirected


def test_forward_auth_allows_with_headers(client):
    post_login(client, "bob")
    response = forward_auth(client)
    assert response.status_code == 200 and response.headers["Remote-User"] == "bob"


def test_headers_from_an_untrusted_peer_are_refused(app):
    outsider = ProxiedClient(app)
    post_login(outsider, "bob")
    response = outsider.get("/api/verify", base_url=PORTAL, headers={"X-Original-Method": "GET", "X-Original-URL": PROM},
                            environ_overrides={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 400
    assert b"not in server.trusted_proxies" in response.get_data()
    assert "Remote-User" not in response.headers


@pytest.mark.parametrize("headers", [
    {},
    {"X-Original-Method": "GET", "X-Original-URL": "not a url"},
    {"X-Original-Method": "GET", "X-Original-URL": "ftp://app.example.test/"},
    {"X-Original-Method": "GET", "X-Original-URL": "http://app.example.test/a b"},
    {"X-Original-Method": "GET", "X-Original-URL": "http://evil@app.example.test/prometheus/"},
    {"X-Forwarded-Host": "app.example.test", "X-Forwarded-Uri": "relative"},
])
def test_malformed_original_requests_are_400_never_500(client, headers):
    post_login(client, "bob")
    response = client.get("/api/verify", base_url=PORTAL, headers=headers)
    assert response.status_code == 400
    assert "Remote-User" not in response.headers


def test_client_network_comes_from_trusted_forwarded_for_only(app_with):
    app = app_with(access_control={"rules": [
        {"domain": "net.example.test", "networks": ["10.0.0.0/8"], "policy": "bypass"},
        {"domain": "net.example.test", "policy": "deny"}]})
    client = ProxiedClient(app)
    url = "http://net.example.test/"
    assert verify(client, url, **{"X-Forwarded-For": "10.1.2.3"}).status_code == 200
    assert verify(client, url, **{"X-Forwarded-For": "192.0.2.1"}).status_code == 403
    # the client prepends a fake hop; the proxy appends the real address: the real one counts
    assert verify(client, url, **{"X-Forwarded-For": "10.1.2.3, 192.0.2.1"}).status_code == 403


@pytest.mark.parametrize(("headers", "status"), [
    # nginx with `$proxy_add_x_forwarded_for` appends to the client's value; a non-ASCII byte in it makes granian
    # hand over "", which used to send the portal to the client's own X-Real-IP (or to the proxy's address)
    ({"X-Forwarded-For": "", "X-Real-IP": "10.1.2.3"}, 400),
    ({"X-Forwarded-For": ""}, 400),
    # the rightmost hop a proxy added is not an address: refused, never skipped for the client's hop further left
    ({"X-Forwarded-For": "10.1.2.3, not-an-address"}, 400),
    ({"X-Forwarded-For": "10.1.2.3, "}, 400),
    # X-Real-IP is never read: behind a proxy that does not set it, it is whatever the client wrote
    ({"X-Real-IP": "10.1.2.3"}, 403),
    ({"X-Forwarded-For": "192.0.2.1", "X-Real-IP": "10.1.2.3"}, 403),
])
def test_the_client_address_is_never_guessed(app_with, headers, status):
    app = app_with(access_control={"rules": [
        {"domain": "net.example.test", "networks": ["10.0.0.0/8"], "policy": "bypass"},
        {"domain": "net.example.test", "policy": "deny"}]})
    response = verify(ProxiedClient(app), "http://net.example.test/", **headers)
    assert response.status_code == status
    if status == 400:
        assert b"X-Forwarded-For" in response.get_data()


def test_a_page_refuses_an_unreadable_client_address(app_with):
    """The login form counts failures by address: an unreadable one is a 400 page, not the proxy's address."""
    client = ProxiedClient(app_with())
    form = {"username": "bob", "password": USERS["bob"]["password"], "csrf_token": csrf(client)}
    response = client.post("/login", base_url=PORTAL, data=form, headers={"X-Forwarded-For": ""})
    assert response.status_code == 400
    assert "X-Forwarded-For" in response.get_data(as_text=True)


def test_session_cookie_is_parsed_strictly(client, app):
    post_login(client, "bob")
    sid = client.get_cookie("authportal_session", domain="example.test").value
    other = ProxiedClient(app, use_cookies=False)  # sends our raw Cookie headers as they are
    for cookie in (f"xauthportal_session={sid}", f"authportal_session={sid[:-1]}", f"authportal_session={sid}'"):
        response = other.get("/api/verify", base_url=PORTAL, headers={"X-Original-Method": "GET", "X-Original-URL": PROM, "Cookie": cookie})
        assert response.status_code == 401, cookie
    ok = other.get("/api/verify", base_url=PORTAL,
                   headers={"X-Original-Method": "GET", "X-Original-URL": PROM, "Cookie": f"a=b; authportal_session={sid}; c=d"})
    assert ok.status_code == 200


# Machine clients

def test_basic_auth_grants_like_a_session(client):
    response = verify(client, Authorization=basic_header("bob"))
    assert response.status_code == 200
    assert response.headers["Remote-User"] == "bob" and response.headers["Remote-Groups"] == "monitoring"
    assert verify(client, Authorization=basic_header("carol")).status_code == 403


@pytest.mark.parametrize("header", [basic_header("bob", "wrong"), basic_header("nobody", "x"), basic_header("dave"),
                                    "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()])
def test_bad_basic_credentials_get_a_challenge_not_a_redirect(client, header):
    response = verify(client, Authorization=header, Accept="text/html")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="authportal"'
    assert "Remote-User" not in response.headers


@pytest.mark.parametrize("foreign", ["Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "Bearer k8s-dashboard-token",
                                     "Negotiate YIIBhwYGKwYBBQUCoII=", "Digest username=\"bob\""])
def test_another_systems_credential_is_left_to_the_application(app_with, foreign):
    """A signed-in user whose browser sends the app's own token (the Kubernetes dashboard does) stays signed in,
    and the foreign token never counts as a failed guess against their address."""
    app = app_with(regulation={"max_retries": 3, "ip_max_retries": 3})
    client = ProxiedClient(app)
    anonymous = verify(client, Authorization=foreign, Accept="text/html")
    assert anonymous.status_code == 401 and "WWW-Authenticate" not in anonymous.headers  # to the login page
    post_login(client, "bob")
    for _ in range(6):  # twice the failures that would ban the address
        answer = verify(client, Authorization=foreign)
        assert answer.status_code == 200 and answer.headers["Remote-User"] == "bob"
    assert verify(ProxiedClient(app), Authorization=basic_header("bob")).status_code == 200  # address not banned


def test_proxy_authorization_is_accepted(client):
    assert verify(client, **{"Proxy-Authorization": basic_header("bob")}).headers["Remote-User"] == "bob"


def test_basic_cannot_satisfy_two_factor(client):
    response = verify(client, "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot", "POST",
                      Authorization=basic_header("alice"))
    assert response.status_code == 403


def test_basic_can_be_switched_off_per_rule(app_with):
    app = app_with(access_control={"rules": [
        {"domain": "ui.example.test", "subject": ["group:monitoring"], "policy": "one_factor", "basic_auth": False},
        {"domain": "api.example.test", "subject": ["group:monitoring"], "policy": "one_factor"}]})
    client = ProxiedClient(app)
    refused = verify(client, "http://ui.example.test/", Authorization=basic_header("bob"))
    assert refused.status_code == 401 and "WWW-Authenticate" not in refused.headers
    assert verify(client, "http://api.example.test/", Authorization=basic_header("bob")).status_code == 200
    # there the header is the application's own (its Basic login): a signed-in user's session decides
    post_login(client, "carol")
    assert verify(client, "http://ui.example.test/", Authorization=basic_header("carol")).status_code == 403
    post_login(client, "bob")
    for header in (basic_header("alice"), basic_header("bob", "the-apps-own-password")):
        answer = verify(client, "http://ui.example.test/", Authorization=header)
        assert answer.status_code == 200 and answer.headers["Remote-User"] == "bob"


def test_bearer_tokens(app, client):
    tokens = app.portal.tokens
    good, _ = tokens.create("bob", "grafana", 3600, [])
    scoped, _ = tokens.create("alice", "scoped", 3600, ["group:monitoring"])
    expired, _ = tokens.create("bob", "old", 1, [])
    revoked, info = tokens.create("bob", "gone", 3600, [])
    tokens.revoke(info.id)
    app.portal.token_credentials.clear()
    ok = verify(client, Authorization=f"Bearer {good}")
    assert ok.status_code == 200 and ok.headers["Remote-User"] == "bob"
    scoped_answer = verify(client, Authorization=f"Bearer {scoped}")
    assert scoped_answer.headers["Remote-Groups"] == "monitoring"  # admins is outside the token's scope
    assert verify(client, "http://alertmanager.example.test/", Authorization=f"Bearer {scoped}").status_code == 403
    assert verify(client, Authorization=f"Bearer {revoked}").status_code == 401
    assert verify(client, Authorization="Bearer ap_" + "x" * 43).status_code == 401
    tokens.clock = lambda: 4e9  # far in the future: the short-lived token has expired
    assert verify(client, Authorization=f"Bearer {expired}").status_code == 401


def test_revoking_a_token_on_the_page_takes_effect_at_once(app, client):
    import re

    post_login(client, "bob")
    page = client.get("/tokens", base_url=PORTAL).get_data(as_text=True)
    token = re.search(r'value="([0-9a-f]{64})"', page).group(1)
    created = client.post("/tokens", base_url=PORTAL, data={"csrf_token": token, "name": "grafana", "expires": "30d"})
    secret = re.search(r'<code id="new-token">(ap_[\w-]+)</code>', created.get_data(as_text=True)).group(1)
    machine = ProxiedClient(app)
    assert verify(machine, Authorization=f"Bearer {secret}").status_code == 200
    token_id = app.portal.tokens.list("bob")[0].id
    client.post(f"/tokens/{token_id}/revoke", base_url=PORTAL, data={"csrf_token": token})
    assert verify(machine, Authorization=f"Bearer {secret}").status_code == 401
    # the page never shows the token again
    assert secret not in client.get("/tokens", base_url=PORTAL).get_data(as_text=True)
    # nonsense is refused with a reason, never a 500 (a NUL is also something PostgreSQL cannot store)
    refused = client.post("/tokens", base_url=PORTAL, data={"csrf_token": token, "name": "a\x00b", "expires": "1d"})
    assert refused.status_code == 400 and "printable characters" in refused.get_data(as_text=True)
    assert client.post(f"/tokens/{2**64}/revoke", base_url=PORTAL, data={"csrf_token": token}).status_code == 404
    assert [t.name for t in app.portal.tokens.list("bob")] == ["grafana"]


def test_credentials_cache_holds_no_password_and_checks_once(app, client):
    hashes = []
    provider = app.portal.provider
    real = provider.check_password

    def counting(user, password):
        hashes.append(user)
        return real(user, password)

    provider.check_password = counting
    for _ in range(5):
        assert verify(client, Authorization=basic_header("bob")).status_code == 200
    assert hashes == ["bob"]
    cache = app.portal.credentials
    stored = repr(list(cache._entries.items()))
    assert USERS["bob"]["password"] not in stored and "bob:" not in stored


def test_concurrent_identical_basic_checks_hash_once(app):
    import threading
    import time

    calls = []
    real = app.portal.provider.check_password

    def slow(user, password):
        calls.append(user)
        time.sleep(0.2)
        return real(user, password)

    app.portal.provider.check_password = slow
    results = []

    def one():
        results.append(verify(ProxiedClient(app), Authorization=basic_header("bob")).status_code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
    assert calls == ["bob"]


def test_users_file_change_invalidates_the_cache_at_once(app, client, portal_setup):
    assert verify(client, Authorization=basic_header("bob")).status_code == 200
    users = {name: dict(fields) for name, fields in USERS.items()}
    users["bob"]["password"] = "a-new-password"
    portal_setup.write_users(users)
    assert app.portal.provider.reload_if_changed()
    assert verify(client, Authorization=basic_header("bob")).status_code == 401
    assert verify(client, Authorization=basic_header("bob", "a-new-password")).status_code == 200


def test_session_of_a_disabled_user_stops_working(app, client, portal_setup):
    post_login(client, "bob")
    assert verify(client).status_code == 200
    users = {name: dict(fields) for name, fields in USERS.items()}
    users["bob"]["disabled"] = True
    portal_setup.write_users(users)
    app.portal.provider.reload_if_changed()
    assert verify(client).status_code == 401


def test_a_new_password_ends_the_sessions_signed_in_with_the_old_one(app, client, portal_setup, caplog):
    """Like Django and most portals: change a stolen password and whoever used it is signed out."""
    caplog.set_level("INFO", logger="authportal.audit")
    post_login(client, "bob")
    alice = ProxiedClient(app)
    post_login(alice, "alice")
    assert verify(client).status_code == 200 and verify(alice).status_code == 200
    users = {name: dict(fields) for name, fields in USERS.items()}
    users["bob"]["password"] = "bobs-new-password"
    portal_setup.write_users(users)
    assert app.portal.provider.reload_if_changed()
    assert verify(client).status_code == 401
    assert verify(alice).status_code == 200  # her password did not change
    [revoked] = [r.audit for r in caplog.records if getattr(r, "audit", {}).get("event") == "session_revoked"]
    assert (revoked["user"], revoked["reason"]) == ("bob", "password changed")
    post_login(client, "bob", "bobs-new-password")
    assert verify(client).status_code == 200


def test_group_change_in_users_file_applies_to_live_sessions(app, client, portal_setup):
    post_login(client, "carol")
    assert verify(client).status_code == 403
    users = {name: dict(fields) for name, fields in USERS.items()}
    users["carol"]["groups"] = ["monitoring"]
    portal_setup.write_users(users)
    app.portal.provider.reload_if_changed()
    response = verify(client)
    assert response.status_code == 200 and response.headers["Remote-Groups"] == "monitoring"


def test_an_exception_on_the_verify_path_denies(app, client, caplog):
    post_login(client, "bob")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    app.portal.rules.decide = broken
    response = verify(client)
    assert response.status_code == 401 and "Remote-User" not in response.headers
    assert "verify failed; denying" in caplog.text


def test_forward_auth_never_believes_a_client_sent_x_original_url(client):
    """Caddy and Traefik pass client headers to the auth endpoint: X-Original-* must not count there."""
    smuggled = forward_auth(client, uri="/prometheus/graph", Accept="*/*",
                            **{"X-Original-URL": "http://app.example.test/public/x", "X-Original-Method": "GET"})
    assert smuggled.status_code == 401 and "Remote-User" not in smuggled.headers
    method_smuggled = forward_auth(client, uri="/prometheus/graph", method="POST", Accept="text/html",
                                   **{"X-Original-Method": "GET"})
    assert method_smuggled.status_code == 401  # a POST: no redirect, whatever X-Original-Method says


#: Bans after 3 failures of one user; no limit per address (the tests send everything from 127.0.0.1).
REGULATED = {"max_retries": 3, "ip_max_retries": 0}


def test_basic_guessing_is_regulated_like_the_login_form(app_with, caplog):
    caplog.set_level("INFO", logger="authportal.audit")
    app = app_with(regulation=REGULATED)
    client = ProxiedClient(app)
    for guess in range(3):
        assert verify(client, Authorization=basic_header("bob", f"guess-{guess}")).status_code == 401
    # banned now: the right password is refused too, without a check, and it is audited
    checks = []
    real = app.portal.provider.check_password
    app.portal.provider.check_password = lambda u, p: checks.append(u) or real(u, p)
    assert verify(client, Authorization=basic_header("bob")).status_code == 401
    assert checks == []
    events = [r.audit for r in caplog.records if getattr(r, "audit", None)]
    assert [e["reason"] for e in events if e["event"] == "login_failure"] == ["bad_credentials"] * 3 + ["banned"]
    assert any(e["event"] == "ban" and e["user"] == "bob" for e in events)
    assert all(e.get("via") == "basic" for e in events if e["event"] == "login_failure")
    exposition = app.portal.metrics.exposition().decode()
    assert 'authportal_logins_total{result="bad_credentials"} 3.0' in exposition
    assert 'authportal_bans_total{kind="user"} 1.0' in exposition


def test_a_ban_from_the_login_form_also_refuses_basic(app_with):
    app = app_with(regulation=REGULATED)
    client = ProxiedClient(app)
    for _ in range(3):
        assert post_login(client, "carol", "wrong").status_code == 401
    assert verify(client, "http://app.example.test/public/x").status_code == 200
    machine = verify(client, Authorization=basic_header("carol"))
    assert machine.status_code == 401


def test_spelling_variants_of_a_name_share_one_failure_count(app_with):
    """A directory takes ` Carol `, `CAROL` and `carol` as one account: guessing through variants still bans."""
    app = app_with(regulation=REGULATED)
    client = ProxiedClient(app)
    for variant in ("carol ", " CAROL", "Carol  "):
        assert verify(client, Authorization=basic_header(variant, "wrong")).status_code == 401
    assert verify(client, Authorization=basic_header("carol")).status_code == 401  # banned: right password refused
    assert post_login(client, "carol").status_code == 401
    assert verify(client, Authorization=basic_header("bob")).status_code == 200  # others are not affected


def test_refused_tokens_get_a_bearer_challenge(client):
    response = verify(client, Authorization="Bearer ap_" + "y" * 43)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="authportal", error="invalid_token"'


def test_uncached_basic_checks_never_take_the_threads_verifies_need(app, client):
    post_login(client, "alice")
    gate = app.portal.login_gate
    held = 0
    while gate.acquire(blocking=False):  # every password-check slot busy (a burst of logins or scrapers)
        held += 1
    try:
        machine = ProxiedClient(app)
        refused = verify(machine, Authorization=basic_header("bob"))
        assert refused.status_code == 401 and refused.headers["Retry-After"] == "1"
        assert verify(client).status_code == 200  # cookie verifies go on
    finally:
        for _ in range(held):
            gate.release()
    assert verify(ProxiedClient(app), Authorization=basic_header("bob")).status_code == 200


# One header family per endpoint, no fallback and no default (issue 14). granian hands a header value with
# non-ASCII bytes to the application as "", and joins a header sent twice with a bare comma: both are shown
# here as the environ the portal receives, and through the real server below.
PUBLIC = "http://app.example.test/public/x"
CLIENT_FORWARDED = {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "app.example.test",
                    "X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "GET"}


@pytest.mark.parametrize(("headers", "reason"), [
    # nginx's README snippet sets X-Original-URL only; the client adds the other family, pointing at a public path
    ({"X-Original-Method": "POST", **CLIENT_FORWARDED}, b"missing X-Original-URL"),
    # ?x=\xc3\xa9 made granian empty X-Original-URL: it was judged by the client's X-Forwarded-* instead
    ({"X-Original-URL": "", "X-Original-Method": "POST", **CLIENT_FORWARDED}, b"empty X-Original-URL"),
    # where the proxy set both families, both arrived empty and the request was judged as "/"
    ({"X-Original-URL": "", "X-Original-Method": "GET", "X-Forwarded-Host": "", "X-Forwarded-Uri": ""},
     b"empty X-Original-URL"),
    ({"X-Original-URL": "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"}, b"missing X-Original-Method"),
    ({"X-Original-URL": "http://app.example.test/prometheus/", "X-Original-Method": ""}, b"empty X-Original-Method"),
    ({"X-Original-URL": "http://app.example.test/prometheus/", "X-Original-Method": "GET,POST"},
     b"malformed X-Original-Method"),
    ({"X-Original-URL": f"{PUBLIC},http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot",
      "X-Original-Method": "GET"}, b"X-Original-URL was sent twice"),
])
def test_verify_never_guesses_which_request_it_judges(client, headers, reason):
    post_login(client, "bob")
    response = client.get("/api/verify", base_url=PORTAL, headers=headers)
    assert response.status_code == 400
    assert reason in response.get_data()
    assert "Remote-User" not in response.headers


@pytest.mark.parametrize(("change", "reason"), [
    ({"X-Forwarded-Proto": None}, b"missing X-Forwarded-Proto"),
    ({"X-Forwarded-Method": None}, b"missing X-Forwarded-Method"),
    ({"X-Forwarded-Uri": ""}, b"empty X-Forwarded-Uri"),
    ({"X-Forwarded-Host": ""}, b"empty X-Forwarded-Host"),
    ({"X-Forwarded-Uri": "/public/x,/prometheus/api/v1/admin/tsdb/snapshot"}, b"X-Forwarded-Uri was sent twice"),
    ({"X-Forwarded-Host": "app.example.test,evil.example"}, b"not a host name"),
    ({"X-Forwarded-Proto": "https,http"}, b"the scheme must be http or https"),
    # the nginx family is never read here: a client's X-Original-URL cannot stand in for the real request
    ({"X-Forwarded-Uri": None, "X-Original-URL": PUBLIC}, b"missing X-Forwarded-Uri"),
])
def test_forward_auth_never_guesses_which_request_it_judges(client, change, reason):
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.test",
               "X-Forwarded-Uri": "/prometheus/graph", "X-Forwarded-Method": "GET", **change}
    response = client.get("/api/forward-auth", base_url=PORTAL,
                          headers={k: v for k, v in headers.items() if v is not None})
    assert response.status_code == 400
    assert reason in response.get_data()


def test_a_refused_verify_is_logged_once_a_minute_not_per_request(client, caplog):
    for _ in range(5):
        assert client.get("/api/verify", base_url=PORTAL, headers={"X-Original-URL": PROM}).status_code == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "authportal.verify"]
    assert len(lines) == 1, lines
    assert "missing X-Original-Method" in lines[0] and "127.0.0.1" in lines[0]


def test_an_untrusted_peer_is_named_in_the_answer_and_the_log(app, caplog):
    outsider = ProxiedClient(app)
    response = outsider.get("/api/verify", base_url=PORTAL, headers=VERIFY_PROM,
                            environ_overrides={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 400
    assert b"203.0.113.9" in response.get_data() and b"server.trusted_proxies" in response.get_data()
    assert any("203.0.113.9" in r.getMessage() and "server.trusted_proxies" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")


def test_rules_see_a_non_ascii_path_decoded_as_utf8_like_nginx_uri(app_with):
    app = app_with(access_control={"default_policy": "deny", "rules": [
        {"domain": "app.example.test", "resources": ["^/café/"], "policy": "bypass"}]})
    client = ProxiedClient(app)
    assert verify(client, "http://app.example.test/caf%C3%A9/menu").status_code == 200
    assert verify(client, "http://app.example.test/caf%c3%a9/menu?q=%C3%A9").status_code == 200
    assert verify(client, "http://app.example.test/cafe/menu").status_code == 403
    assert verify(client, "http://app.example.test/caf%E9/menu").status_code == 403  # latin-1 é is not UTF-8 é


def _raw_verify(port: int, header_lines: bytes) -> tuple[int, bytes]:
    """One request with exactly these header bytes (requests and http.client would encode or refuse them)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /api/verify HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + header_lines + b"\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("original", [
    b"X-Original-URL: http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot?x=\xc3\xa9\r\n",  # raw UTF-8
    b"X-Original-URL: http://app.example.test/prometheus/\x80\xff\r\n",  # obs-text
    b"X-Original-URL: http://app.example.test/prometheus/?x=\xe9\r\n",  # latin-1
])
def test_the_real_server_refuses_a_url_it_cannot_read(served_portal, original):
    """granian empties a value with bytes >= 0x80; the portal refuses it instead of judging the other family."""
    status, body = _raw_verify(served_portal.setup.port, original + b"X-Original-Method: POST\r\n"
                               b"X-Forwarded-Host: app.example.test\r\nX-Forwarded-Uri: /public/x\r\n")
    assert (status, body) == (400, b"empty X-Original-URL: the proxy sent an empty value, or one with bytes that "
                                   b"are not ASCII (they cannot be read, so the request is refused rather than "
                                   b"guessed)\n")


@pytest.mark.parametrize("byte", [b"\x00", b"\x7f"])
def test_granian_itself_refuses_nul_and_del_in_a_header(served_portal, byte):
    """docs/architecture.md's table: these never reach the portal (an upgrade that changes this is noticed)."""
    status, _ = _raw_verify(served_portal.setup.port, b"X-Original-URL: http://app.example.test/public/" + byte
                            + b"\r\nX-Original-Method: GET\r\n")
    assert status == 400


def test_the_real_server_refuses_a_doubled_header(served_portal):
    status, body = _raw_verify(served_portal.setup.port, b"X-Original-URL: http://app.example.test/public/x\r\n"
                               b"X-Original-URL: http://app.example.test/prometheus/api/v1/admin/\r\n"
                               b"X-Original-Method: GET\r\n")
    assert status == 400 and b"sent twice" in body
