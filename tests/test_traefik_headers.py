"""`/api/forward-auth` asked exactly as Traefik's forwardAuth middleware asks it, configured as in examples/traefik/.

Traefik is not packaged for Debian bookworm, so it does not run here; these
requests reproduce its auth request instead (Traefik v2/v3
`pkg/middlewares/auth/forward.go`, with the example's `trustForwardHeader: true`
and `authRequestHeaders`): a GET to the middleware's `address` (Host: its host)
carrying the client's headers that the allow-list keeps (Cookie, Accept,
Authorization, User-Agent, ...), then X-Forwarded-For, -Method, -Proto, -Port,
-Host and -Uri of the original request (the entry point has already dropped
any a client sent itself), and Go's Accept-Encoding.

The answers are checked as Traefik uses them: 2xx lets the request through
with the `authResponseHeaders` copied onto it; anything else goes back to the
client with its status, Location and other headers.
"""
from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
import yaml

from tests.servers.process import REPO
from tests.support.forward_auth_flow import (
    BROWSER,
    FORGED_IDENTITY,
    SCRIPT,
    logged_in,
    portal_behind_proxy,
    smuggled_urls,
)
from tests.support.portal import USERS, ServedPortal, basic_header

DYNAMIC = REPO / "examples" / "traefik" / "dynamic.yml"
CLIENT_IP = "203.0.113.7"
APP_HOST = "app.example.test"
IDENTITY_HEADERS = ("Remote-User", "Remote-Groups", "Remote-Name", "Remote-Email")
#: What Traefik's entry point removes from a request of an untrusted client before any middleware.
ENTRY_POINT_MANAGED = {"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port",
                       "X-Forwarded-Server", "X-Forwarded-Uri", "X-Forwarded-Method", "X-Forwarded-Prefix",
                       "X-Forwarded-Tls-Client-Cert", "X-Forwarded-Tls-Client-Cert-Info", "X-Real-Ip"}


def example_forward_auth() -> dict[str, Any]:
    return yaml.safe_load(DYNAMIC.read_text())["http"]["middlewares"]["authportal"]["forwardAuth"]


#: authRequestHeaders of the example; None = Traefik's default (every client header).
ALLOWED = example_forward_auth().get("authRequestHeaders")


@dataclass
class Answer:
    status: int
    headers: Message


def canonical(name: str) -> str:
    """Go's http.CanonicalHeaderKey: first letter and letters after "-" upper case, the rest lower."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


@pytest.fixture(scope="module")
def portal(tmp_path_factory) -> Iterator[ServedPortal]:
    # The portal as clients see it through Traefik's websecure entry point.
    setup = portal_behind_proxy(tmp_path_factory.mktemp("traefik-portal"), "https://auth.example.test")
    with ServedPortal(setup) as served:
        yield served


@pytest.fixture(scope="module")
def cookie_of(portal):
    """`cookie_of("bob")`: the Cookie header bob's browser sends to app.example.test after logging in."""
    sessions: dict[str, str] = {}

    def cookie(user: str) -> str:
        if user not in sessions:
            browser = logged_in(f"http://auth.example.test:{portal.setup.port}", user)
            sent = requests.Request("GET", f"http://{APP_HOST}/prometheus/", cookies=browser.cookies).prepare()
            sessions[user] = "_ga=GA1.1.123.456; theme=dark; " + sent.headers["Cookie"]
        return sessions[user]

    return cookie


def traefik_asks(portal: ServedPortal, uri: str, client_headers: dict[str, str], method: str = "GET",
                 proto: str = "http", host: str = APP_HOST, source: str = "127.0.0.1",
                 allowed: list[str] | None = ALLOWED) -> Answer:
    """Send the auth request Traefik's forwardAuth sends for `method proto://host uri` from CLIENT_IP."""
    port = "443" if proto == "https" else "80"
    # The request as it leaves the entry point: the client's headers without X-Forwarded-*, plus Traefik's own.
    request = {canonical(name): value for name, value in client_headers.items()
               if canonical(name) not in ENTRY_POINT_MANAGED}
    request |= {"X-Forwarded-Proto": proto, "X-Forwarded-Host": host, "X-Forwarded-Port": port,
                "X-Forwarded-Server": "traefik-7d9f8", "X-Real-Ip": CLIENT_IP}
    # forwardAuth: copy it, keep only authRequestHeaders (when set), then set the forwarded headers.
    if allowed is not None:
        keep = {canonical(name) for name in allowed}
        request = {name: value for name, value in request.items() if name in keep}
    sent = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip", **request,
            "X-Forwarded-For": CLIENT_IP, "X-Forwarded-Method": method, "X-Forwarded-Proto": proto,
            "X-Forwarded-Port": port, "X-Forwarded-Host": host, "X-Forwarded-Uri": uri}
    address = urlsplit(example_forward_auth()["address"])
    connection = http.client.HTTPConnection("127.0.0.1", portal.setup.port, timeout=5, source_address=(source, 0))
    try:
        connection.putrequest("GET", address.path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", address.netloc)
        for name in sorted(sent):  # Go writes header fields sorted by name
            connection.putheader(name, sent[name])
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        return Answer(response.status, response.msg)
    finally:
        connection.close()


def login_url(portal_url: str, original: str) -> str:
    return f"{portal_url}/?rd={quote(original, safe='')}"


def assert_identity(answer: Answer, user: str) -> None:
    fields = USERS[user]
    assert answer.status == 200
    assert answer.headers.get_all("Remote-User") == [user]
    assert answer.headers.get_all("Remote-Groups") == [",".join(fields["groups"])]
    assert answer.headers.get_all("Remote-Name") == [fields["displayname"]]
    assert answer.headers.get_all("Remote-Email") == [fields["email"]]


def assert_no_identity(answer: Answer) -> None:
    assert [name for name in IDENTITY_HEADERS if name in answer.headers] == []


def test_example_middleware_is_the_one_emulated_here():
    config = yaml.safe_load(DYNAMIC.read_text())["http"]
    forward_auth = config["middlewares"]["authportal"]["forwardAuth"]
    assert forward_auth["address"] == "http://authportal:9091/api/forward-auth"
    assert forward_auth["trustForwardHeader"] is True
    assert forward_auth["authResponseHeaders"] == list(IDENTITY_HEADERS)
    assert {"Accept", "Authorization", "Cookie"} <= set(forward_auth["authRequestHeaders"])
    routers = config["routers"]
    for name in ("prometheus", "alertmanager"):
        assert routers[name]["middlewares"] == ["no-client-identity", "authportal"]
    assert routers["public"]["middlewares"] == ["no-client-identity"]


def test_anonymous_browser_is_redirected_to_login_with_rd(portal):
    answer = traefik_asks(portal, "/prometheus/graph?g0.expr=up", BROWSER, proto="https")
    assert answer.status == 302
    assert answer.headers["Location"] == login_url(
        "https://auth.example.test", "https://app.example.test/prometheus/graph?g0.expr=up")
    assert_no_identity(answer)


def test_anonymous_script_gets_401_with_basic_challenge(portal):
    answer = traefik_asks(portal, "/prometheus/api/v1/query?query=up", SCRIPT)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    assert answer.headers["Location"] == login_url(
        "https://auth.example.test", "http://app.example.test/prometheus/api/v1/query?query=up")
    assert_no_identity(answer)


def test_bob_with_session_cookie_is_allowed_with_identity(portal, cookie_of):
    answer = traefik_asks(portal, "/prometheus/graph?g0.expr=up", {**BROWSER, "Cookie": cookie_of("bob")},
                          proto="https")
    assert_identity(answer, "bob")


def test_host_port_and_method_come_from_the_forwarded_headers(portal, cookie_of):
    bob = {**BROWSER, "Cookie": cookie_of("bob")}
    assert_identity(traefik_asks(portal, "/alertmanager/api/v2/silences", bob, host="app.example.test:8443"),
                    "bob")
    assert traefik_asks(portal, "/alertmanager/api/v2/silences", {**bob, "Content-Type": "application/json"},
                        method="POST").status == 403


def test_carol_is_forbidden(portal, cookie_of):
    answer = traefik_asks(portal, "/prometheus/graph", {**BROWSER, "Cookie": cookie_of("carol")})
    assert answer.status == 403
    assert_no_identity(answer)


def test_basic_credentials_of_bob_are_allowed(portal):
    answer = traefik_asks(portal, "/prometheus/api/v1/query?query=up",
                          {**SCRIPT, "Authorization": basic_header("bob")})
    assert_identity(answer, "bob")

    wrong = traefik_asks(portal, "/prometheus/api/v1/query?query=up",
                         {**SCRIPT, "Authorization": basic_header("bob", "guess")})
    assert wrong.status == 401
    assert_no_identity(wrong)


def test_identity_headers_sent_by_the_client_are_not_believed(portal):
    """Without authRequestHeaders forwardAuth copies every client header into the auth request, Remote-User too."""
    answer = traefik_asks(portal, "/prometheus/graph", {**BROWSER, **FORGED_IDENTITY}, allowed=None)
    assert answer.status == 302
    assert_no_identity(answer)


def test_open_path_answers_200_without_identity(portal):
    """A bypass rule: 200 with no Remote-* — Traefik then deletes the listed headers from the request."""
    answer = traefik_asks(portal, "/prometheus/-/healthy", {**SCRIPT, **FORGED_IDENTITY}, allowed=None)
    assert answer.status == 200
    assert_no_identity(answer)


def test_traefik_not_in_trusted_proxies_is_refused(portal, cookie_of):
    """From an address outside server.trusted_proxies the X-Forwarded-* headers are not believed: 400, never 200."""
    answer = traefik_asks(portal, "/prometheus/graph", {**BROWSER, "Cookie": cookie_of("bob")}, source="127.0.0.2")
    assert answer.status == 400
    assert_no_identity(answer)


@pytest.mark.parametrize("smuggled", smuggled_urls(APP_HOST), ids=lambda headers: "+".join(headers))
def test_allow_listed_request_headers_keep_smuggled_urls_from_the_portal(portal, smuggled):
    """Headers naming an open URL (/public/) do not open /prometheus/ through the example's middleware."""
    answer = traefik_asks(portal, "/prometheus/api/v1/query?query=up", {**SCRIPT, **smuggled})
    assert answer.status == 401
    assert_no_identity(answer)


@pytest.mark.parametrize("smuggled", smuggled_urls(APP_HOST)[:2], ids=lambda headers: "+".join(headers))
def test_forward_auth_ignores_x_original_url(portal, smuggled):
    """Traefik's default copies every client header: the portal itself must not believe X-Original-*."""
    answer = traefik_asks(portal, "/prometheus/api/v1/query?query=up", {**SCRIPT, **smuggled}, allowed=None)
    assert answer.status == 401
