"""The nginx examples (examples/nginx/), run by a real nginx in front of the served portal and the stub app.

Most tests run against each layout: the seed layout (one host, /prometheus/ and
/alertmanager/), subdomains (one login for two hosts) and the nginx config
ingress-nginx generates from examples/nginx/ingress-nginx/ingress.yaml. The stub
upstream stands in for Prometheus and Alertmanager and records what reached it,
so the tests see what the application saw (Remote-* headers) and what it never saw.
"""
from __future__ import annotations

import html
import http.client
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.support.portal import USERS, csrf_from, login
from tests.support.stacks import NginxStack, nginx_stack

COOKIE = "authportal_session"


@pytest.fixture(scope="module", params=["seed-layout", "subdomains", "ingress-nginx"])
def stack(request, tmp_path_factory, upstream) -> Iterator[NginxStack]:
    backend = f"127.0.0.1:{upstream.port}"
    with nginx_stack(request.param, tmp_path_factory.mktemp(request.param),
                     {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend}) as started:
        yield started


# -- where things live in each layout -------------------------------------------------------------------

def prometheus_url(stack: NginxStack, rest: str) -> str:
    """A URL under the Prometheus location (the group monitoring may enter), `rest` without leading slash."""
    if stack.name == "subdomains":
        return stack.url("prometheus.example.test", "/" + rest)
    return stack.url("app.example.test", "/prometheus/" + rest)


def upstream_path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def reached(upstream, url: str) -> list:
    """The requests for exactly this URL's path+query that got through to the application."""
    path = upstream_path(url)
    return [seen for seen in list(upstream.requests) if seen.path == path]


def expected_rd(stack: NginxStack, url: str) -> str:
    return upstream_path(url) if stack.layout.rd_is_path else url


def browser_get(http: requests.Session, url: str, **kwargs) -> requests.Response:
    headers = {"Accept": "text/html,application/xhtml+xml", **kwargs.pop("headers", {})}
    return http.get(url, headers=headers, allow_redirects=False, timeout=10, **kwargs)


def logged_in(stack: NginxStack, user: str, url: str) -> requests.Session:
    """A client that went through the whole redirect dance for `url` and is logged in as `user`."""
    http = requests.Session()
    first = browser_get(http, url)
    assert first.status_code == 302, first.text
    rd = parse_qs(urlsplit(first.headers["Location"]).query)["rd"][0]
    done = login(http, stack.portal_base, user, rd=rd)
    assert done.status_code == 302, done.text
    return http


def assert_identity(seen_headers, user: str) -> None:
    """The headers the application received carry exactly this user's identity, once each."""
    fields = USERS[user]
    assert seen_headers.get_all("Remote-User") == [user]
    assert seen_headers.get_all("Remote-Groups") == [",".join(fields["groups"])]
    assert seen_headers.get_all("Remote-Name") == [fields["displayname"]]
    assert seen_headers.get_all("Remote-Email") == [fields["email"]]


# -- the flow -------------------------------------------------------------------------------------------

def test_anonymous_login_round_trip_reaches_the_app_as_bob(stack, upstream):
    url = prometheus_url(stack, f"graph/{stack.name}-flow?g0.expr=rate(x%5B5m%5D)&g0.tab=1")
    http = requests.Session()

    # 1. Anonymous: redirected to the portal's login page, with rd = where we wanted to go.
    first = browser_get(http, url)
    assert first.status_code == 302
    location = urlsplit(first.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == stack.portal_base + "/"
    rd = parse_qs(location.query)["rd"][0]
    assert rd == expected_rd(stack, url)
    assert "%2F" in location.query and "&g0.tab" not in location.query  # rd is URL-encoded as one value
    assert reached(upstream, url) == []

    # 2. The login page, through nginx: a form with username/password, the CSRF token and rd kept.
    page = browser_get(http, first.headers["Location"])
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert '<form method="post" action="/login"' in page.text
    assert 'name="username"' in page.text and 'type="password"' in page.text
    assert f'name="rd" value="{html.escape(rd)}"' in page.text
    assert csrf_from(page.text)

    # 3. Log in: back to the original URL (absolute, query intact), with a session cookie for the right scope.
    done = login(http, stack.portal_base, "bob", rd=rd)
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == url
    set_cookie = done.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{COOKIE}=") and "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    if stack.layout.session_domain:
        assert f"Domain={stack.layout.session_domain}" in set_cookie
    else:
        assert "Domain=" not in set_cookie

    # 4. The application answers, and received bob's identity from the portal.
    final = browser_get(http, done.headers["Location"])
    assert final.status_code == 200
    echo = final.json()
    assert echo["path"] == upstream_path(url)
    assert (echo["headers"]["Remote-User"], echo["headers"]["Remote-Groups"]) == ("bob", "monitoring")
    [seen] = reached(upstream, url)
    assert_identity(seen.headers, "bob")
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"


def test_client_sent_identity_headers_never_reach_the_app(stack, upstream):
    spoofed = {"Remote-User": "alice", "Remote-Groups": "admins", "Remote-Name": "Alice Admin",
               "Remote-Email": "alice@example.test", "Remote_User": "alice", "Remote_Groups": "admins"}

    # Anonymous with forged headers: still sent to the login page, the app never sees the request.
    anonymous_url = prometheus_url(stack, f"{stack.name}-spoof-anonymous")
    forged = browser_get(requests.Session(), anonymous_url, headers=spoofed)
    assert forged.status_code == 302 and forged.headers["Location"].startswith(stack.portal_base + "/?rd=")
    assert reached(upstream, anonymous_url) == []

    # Logged in as bob with forged headers: the app sees bob, once, and no underscore variant.
    url = prometheus_url(stack, f"{stack.name}-spoof-bob")
    http = logged_in(stack, "bob", url)
    response = browser_get(http, url, headers=spoofed)
    assert response.status_code == 200
    assert response.json()["headers"]["Remote-User"] == "bob"
    [seen] = reached(upstream, url)
    assert_identity(seen.headers, "bob")
    assert seen.headers.get_all("Remote_User") is None and seen.headers.get_all("Remote_Groups") is None


def test_user_outside_the_group_is_forbidden(stack, upstream):
    url = prometheus_url(stack, f"{stack.name}-carol")
    http = logged_in(stack, "carol", url)
    assert COOKIE in http.cookies  # carol did log in: it is the rules that refuse her
    response = browser_get(http, url)
    assert response.status_code == 403
    assert "403 Forbidden" in response.text and "Remote-User" not in response.text
    assert "Location" not in response.headers
    assert reached(upstream, url) == []


def test_logout_ends_the_session_on_the_server(stack, upstream):
    url = prometheus_url(stack, f"{stack.name}-logout")
    http = logged_in(stack, "bob", url)
    assert browser_get(http, url).json()["headers"]["Remote-User"] == "bob"
    old_cookie = http.cookies[COOKIE]

    form = browser_get(http, stack.portal_base + "/logout")
    assert form.status_code == 200 and "Signed in as <strong>bob</strong>" in form.text
    out = http.post(stack.portal_base + "/logout", data={"csrf_token": csrf_from(form.text)},
                    allow_redirects=False, timeout=10)
    assert out.status_code in (302, 303)
    assert COOKIE not in http.cookies  # the browser was told to drop it

    again = browser_get(http, url)
    assert again.status_code == 302 and again.headers["Location"].startswith(stack.portal_base + "/?rd=")

    # Replaying the old cookie (as a thief who copied it would) is refused: the session is gone server-side.
    replay = requests.Session()
    replay.cookies.set(COOKIE, old_cookie, domain=stack.layout.session_domain or urlsplit(url).hostname)
    stolen = browser_get(replay, url)
    assert stolen.status_code == 302 and stolen.headers["Location"].startswith(stack.portal_base + "/?rd=")
    assert len(reached(upstream, url)) == 1  # only the request made before logging out


@pytest.mark.parametrize("stack", ["seed-layout", "ingress-nginx"], indirect=True)  # subdomains has no /public/
def test_public_path_needs_no_login_and_carries_no_identity(stack, upstream):
    url = stack.url("app.example.test", f"/public/{stack.name}-status")
    response = browser_get(requests.Session(), url, headers={"Remote-User": "alice", "Remote-Groups": "admins"})
    assert response.status_code == 200
    assert response.json()["path"] == upstream_path(url)
    [seen] = reached(upstream, url)
    assert seen.headers.get_all("Remote-User") is None and seen.headers.get_all("Remote-Groups") is None


@pytest.mark.parametrize("layout", ["seed-layout", "subdomains", "ingress-nginx"])
def test_portal_down_means_nginx_denies(layout, tmp_path, upstream):
    """On a portal and nginx of this test's own: it stops the portal, the module's stack stays up for the others."""
    backend = f"127.0.0.1:{upstream.port}"
    with nginx_stack(layout, tmp_path, {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend}) as stack:
        url = prometheus_url(stack, f"{stack.name}-portal-down")
        http = logged_in(stack, "bob", url)
        assert browser_get(http, url).status_code == 200
        stack.portal.stop()
        for client in (http, requests.Session()):  # logged in or anonymous: nothing gets through
            response = browser_get(client, url)
            assert response.status_code in (500, 502, 503), response.text
            assert "bob" not in response.text and "Location" not in response.headers
        stack.portal.start()
        assert len(reached(upstream, url)) == 1  # only the request made while the portal was up
        # Back up: sessions live in the portal's database, so bob is still logged in, without a restart of nginx.
        back = browser_get(http, url)
        assert back.status_code == 200 and back.json()["headers"]["Remote-User"] == "bob"


def test_machine_client_with_basic_credentials_gets_through(stack, upstream):
    """Grafana or curl reading Prometheus: HTTP Basic on the request itself, checked by the portal, no cookie."""
    url = prometheus_url(stack, f"api/v1/query?query=up&client={stack.name}")
    response = requests.get(url, auth=("bob", USERS["bob"]["password"]), allow_redirects=False, timeout=10)
    assert response.status_code == 200 and response.json()["headers"]["Remote-User"] == "bob"
    assert "Set-Cookie" not in response.headers
    [seen] = reached(upstream, url)
    assert_identity(seen.headers, "bob")

    wrong = prometheus_url(stack, f"api/v1/query?query=up&client={stack.name}-wrong")
    refused = requests.get(wrong, auth=("bob", "wrong"), allow_redirects=False, timeout=10)
    assert refused.status_code in (302, 401) and "Remote-User" not in refused.text
    assert reached(upstream, wrong) == []


def test_a_signed_in_user_may_carry_the_apps_own_bearer_token(stack, upstream):
    """Apps like the Kubernetes dashboard send their own `Authorization: Bearer` from the browser: not the portal's."""
    url = prometheus_url(stack, f"{stack.name}-own-token")
    http = logged_in(stack, "bob", url)
    answer = browser_get(http, url, headers={"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"})
    assert answer.status_code == 200 and answer.json()["headers"]["Remote-User"] == "bob"
    assert answer.json()["headers"]["Authorization"] == "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"  # the app gets it


def raw_request(stack: NginxStack, method: str, target: str, **headers: str) -> int:
    """Send `target` exactly as written (no client-side clean-up of `..` or `%2e`); the status nginx answers."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        conn.request(method, target, headers={"Host": f"app.example.test:{stack.port}", **headers})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("stack", ["seed-layout", "ingress-nginx"], indirect=True)  # the layouts with /public/
def test_dot_segments_and_encodings_cannot_smuggle_a_path_past_its_rule(stack, upstream):
    """nginx routes on the cleaned path; the portal must judge that path, not the raw one it is sent."""
    marker = f"smuggled-{stack.name}"
    for target in (f"/public/../prometheus/{marker}-1", f"/public/%2e%2e/prometheus/{marker}-2",
                   f"/public/..%2Fprometheus/{marker}-3", f"/public//../prometheus/{marker}-4"):
        assert raw_request(stack, "GET", target, Accept="text/html") in (302, 401), target
    # alice has one factor: Prometheus yes, its admin API (two_factor) no, however the path is spelled
    alice = logged_in(stack, "alice", prometheus_url(stack, f"{marker}-login"))
    cookie = f"{COOKIE}={alice.cookies.get(COOKIE)}"
    assert raw_request(stack, "GET", f"/prometheus/{marker}-alice", Cookie=cookie) == 200
    for target in (f"/prometheus/api/v1/admin/{marker}-5", f"/prometheus/api/v1/%61dmin/{marker}-6",
                   f"/prometheus/api/v1/x/../admin/{marker}-7", f"/prometheus/api//v1/admin/{marker}-8"):
        assert raw_request(stack, "POST", target, Cookie=cookie, Accept="text/html") in (302, 401), target
    assert [seen.path for seen in upstream.requests if marker in seen.path and "alice" not in seen.path
            and "login" not in seen.path] == []


# -- layout-specific ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["subdomains"], indirect=True)
def test_subdomains_one_login_covers_both_hosts(stack, upstream):
    prometheus = stack.url("prometheus.example.test", "/sso-alice")
    alertmanager = stack.url("alertmanager.example.test", "/api/v2/status?sso=alice")
    http = logged_in(stack, "alice", prometheus)
    cookie = next(c for c in http.cookies if c.name == COOKIE)
    assert cookie.domain in ("example.test", ".example.test")

    for url in (prometheus, alertmanager):
        response = browser_get(http, url)
        assert response.status_code == 200, url
        assert response.json()["headers"]["Remote-User"] == "alice"
        [seen] = reached(upstream, url)
        assert_identity(seen.headers, "alice")

    # bob's one login covers Prometheus too, but the rules keep Alertmanager's host for admins.
    bob = logged_in(stack, "bob", stack.url("prometheus.example.test", "/sso-bob"))
    forbidden = stack.url("alertmanager.example.test", "/api/v2/status?sso=bob")
    response = browser_get(bob, forbidden)
    assert response.status_code == 403 and "403 Forbidden" in response.text
    assert reached(upstream, forbidden) == []


@pytest.mark.parametrize("stack", ["seed-layout"], indirect=True)
def test_seed_layout_keeps_the_verify_location_internal(stack, upstream):
    http = requests.Session()
    internal = browser_get(http, stack.url("app.example.test", "/internal/authportal-verify"),
                           headers={"X-Original-Method": "GET", "X-Original-URL": stack.url("app.example.test", "/public/")})
    assert internal.status_code == 404
    home = browser_get(http, stack.url("app.example.test", "/"))
    assert home.status_code == 302 and home.headers["Location"].endswith("/prometheus/")
    unknown = browser_get(http, stack.url("other.example.test", "/prometheus/"))
    assert unknown.status_code == 404  # an unknown Host lands in the catch-all server, not in a protected one
    metrics = browser_get(http, stack.url("auth.example.test", "/metrics"))
    assert metrics.status_code == 200 and "authportal" in metrics.text  # allowed from 127.0.0.1


@pytest.mark.parametrize("stack", ["seed-layout", "subdomains"], indirect=True)  # ingress: the portal owns /
def test_the_verify_endpoints_answer_nginx_only(stack):
    """From outside, the portal's server would judge any URL with headers the client wrote: not served there."""
    forged = {"X-Original-URL": stack.url("app.example.test", "/prometheus/graph"), "X-Original-Method": "GET",
              "X-Forwarded-Proto": "http", "X-Forwarded-Host": "app.example.test", "X-Forwarded-Uri": "/prometheus/",
              "X-Forwarded-Method": "GET"}
    for path in ("/api/verify", "/api/forward-auth", "//api/verify", "/api/%76erify"):
        answer = requests.get(stack.portal_base + path, headers=forged, auth=("bob", USERS["bob"]["password"]),
                              allow_redirects=False, timeout=10)
        assert answer.status_code == 404, path


@pytest.mark.parametrize("stack", ["ingress-nginx"], indirect=True)
def test_ingress_signin_redirect_is_the_escaped_request_uri(stack):
    url = stack.url("app.example.test", "/alertmanager/api/v2/alerts?silenced=false&filter=a%20b")
    response = browser_get(requests.Session(), url)
    assert response.status_code == 302
    # set_escape_uri encodes the whole request URI as one query value (%25 for the client's own %), as
    # ingress-nginx does; the portal accepts that path because it shares the host.
    assert response.headers["Location"] == (
        f"http://app.example.test:{stack.port}/?rd="
        "%2Falertmanager%2Fapi%2Fv2%2Falerts%3Fsilenced%3Dfalse%26filter%3Da%2520b")
    page = browser_get(requests.Session(), response.headers["Location"])
    assert page.status_code == 200
    assert 'value="/alertmanager/api/v2/alerts?silenced=false&amp;filter=a%20b"' in page.text


def test_readme_return_trap_is_real(nginx_factory, upstream):
    """examples/nginx/README.md: `return` answers before auth_request runs; proxy_pass is checked."""
    nginx = nginx_factory("""
        server {
            listen 127.0.0.1:{{PORT}};
            location = /internal/verify { internal; return 401; }
            location /returned/ { auth_request /internal/verify; return 200 "unprotected"; }
            location /proxied/ { auth_request /internal/verify; proxy_pass {{UPSTREAM}}; }
        }
    """, UPSTREAM=upstream.url)
    assert requests.get(nginx.url("/returned/x"), timeout=5).text == "unprotected"
    assert requests.get(nginx.url("/proxied/x"), timeout=5).status_code == 401
    assert reached(upstream, nginx.url("/proxied/x")) == []
