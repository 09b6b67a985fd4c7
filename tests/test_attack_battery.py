"""Issue 14's attack battery: hostile raw requests through every shipped proxy config, anonymous and as alice.

granian hands the portal a header value holding non-ASCII bytes as an empty
string, joins repeated headers with a bare comma, and answers 400 itself for
NUL or DEL. When the portal then fell back to other headers (client-sent
X-Forwarded-*, or `/`), `?x=é` opened any protected path. So every config the
project ships — nginx's seed layout, the README's snippet as written, the
subdomains layout, the ingress-nginx equivalent, HAProxy and Caddy — gets the
same table of requests, written byte by byte on a raw socket: raw and
percent-encoded non-ASCII in path and query, obs-text, NUL/CR/LF in headers,
duplicated headers, both header families a client might forge pointing at
open paths, oversized URLs, and the issue's requests themselves.

Every request targets something the requester may not have: Prometheus' admin
API (two factors for admins, denied to others), or a path no rule opens. What
must hold: the app (the `upstream` stub) never sees the request, and the
portal never says 200 to it, never answers 5xx itself and never fails inside
(its `result="error"` counter, a fail-closed 401 no status shows). A
`RecordingRelay` between proxy and portal shows the portal's own status:
nginx turns a portal's 400 into a 500 of its own (fine: the request was
refused), HAProxy into a 503, Caddy passes it on.

One portal serves all six configs: what differs between their portals
(portal_url, the cookie's domain) only shapes the login redirect and a
browser's cookie jar, and a portal takes seconds to start on a busy machine.

The portal's rules add one open page, `/` on every app host: "a host whose
only public path is `/`", the page an empty URL used to be judged as.
"""
from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.servers import free_port
from tests.servers.caddy import Caddy
from tests.servers.nginx import Nginx
from tests.servers.process import REPO
from tests.servers.relay import Exchange, RecordingRelay
from tests.servers.upstream import RecordedRequest, Upstream
from tests.support.portal import SEED_RULES, PortalSetup, ServedPortal, login
from tests.support.stacks import CADDY_EXAMPLE, EXAMPLES, LAYOUTS, HAProxyExample, require_set_misc

COOKIE = "authportal_session"

#: `/` is open on every app host (a landing page): the path an unreadable URL used to be judged as.
LANDING_RULE = {"domain": ["app.example.test", "prometheus.example.test", "alertmanager.example.test"],
                "resources": [r"^/(\?|$)"], "policy": "bypass"}
RULES = [LANDING_RULE, *SEED_RULES]

#: Where the README's snippet sends the verify subrequest and the protected app; replaced by the test's own.
README_PORTAL, README_APP = "127.0.0.1:9091", "127.0.0.1:9090"

VERIFY_PATHS = ("/api/verify", "/api/forward-auth")


# -- the proxies under attack ---------------------------------------------------------------------------

@dataclass
class Proxied:
    """One shipped config running in front of the portal (seen through the relay) and the stub app."""

    name: str
    port: int  # where clients connect
    host: str  # the protected application's host
    prefix: str  # the protected application's path ("" when it has its own host)
    relay: RecordingRelay
    #: alice's session cookie (`name=value`): one factor, groups admins and monitoring.
    cookie: str
    portal: ServedPortal


@pytest.fixture(scope="module")
def portal(tmp_path_factory) -> Iterator[ServedPortal]:
    """One portal behind all six configs (see the module's docstring); the battery's rules."""
    setup = PortalSetup(tmp_path_factory.mktemp("battery-portal"), overrides={"access_control": {"rules": RULES}})
    with ServedPortal(setup) as served:
        yield served


@pytest.fixture(scope="module")
def relay(portal) -> Iterator[RecordingRelay]:
    """Where every proxy reaches the portal: it records what the portal itself answered."""
    with RecordingRelay(portal.setup.port) as recording:
        yield recording


@pytest.fixture(scope="module")
def alice_cookie(portal) -> str:
    """alice logs in with her password only (one factor) at the portal; her session cookie."""
    http = requests.Session()
    answer = login(http, f"http://auth.example.test:{portal.setup.port}", "alice")
    assert answer.status_code == 302, answer.text
    return f"{COOKIE}={http.cookies.get(COOKIE)}"


def readme_nginx_snippet() -> str:
    """The ```nginx block of README.md's "Put it in front of Prometheus with nginx", as it stands today."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Put it in front of Prometheus with nginx", 1)[-1]
    match = re.search(r"```nginx\n(.*?)```", section, re.DOTALL)
    assert match, "README.md has no ```nginx block after 'Put it in front of Prometheus with nginx'"
    return match[1]


def swapped(text: str, pattern: str, replacement: str) -> str:
    """`text` with `pattern` (a regex) replaced; it must be there, or the README changed under this test."""
    changed, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count, f"README's nginx snippet no longer has {pattern!r}: update tests/test_attack_battery.py"
    return changed


def readme_nginx(portal: str, app: str) -> Nginx:
    """The README's snippet as written, only its deployment values replaced: the portal's and Prometheus'
    addresses; for complete server blocks also plain http on a test port (no certificates) and example.test.
    A snippet of bare locations is put in a server block for app.example.test."""
    config = swapped(readme_nginx_snippet(), re.escape(README_PORTAL), portal)
    config = swapped(config, re.escape(README_APP), app)
    if not re.search(r"^\s*server\s*\{", config, re.MULTILINE):
        return Nginx("server {\n    listen 127.0.0.1:{{PORT}};\n    server_name app.example.test;\n" + config + "}\n")
    config = swapped(config, r"\blisten\s+443\s+ssl\s*;", "listen 127.0.0.1:{{PORT}};")
    config = swapped(config, r"^\s*ssl_certificate(_key)?\s[^;]*;.*$", "")
    return Nginx(swapped(config, r"\bexample\.com\b", "example.test"))


PROXIES = ["seed-layout", "readme", "subdomains", "ingress-nginx", "haproxy", "caddy"]


@pytest.fixture(scope="module", params=PROXIES)
def proxied(request, portal, relay, alice_cookie, upstream) -> Iterator[Proxied]:
    """Each shipped config in turn, started once, its placeholders filled: portal = the relay, apps = the stub."""
    name, app, port = request.param, f"127.0.0.1:{upstream.port}", free_port()
    apps = {"PROMETHEUS": app, "ALERTMANAGER": app, "PUBLIC": app}
    if name == "readme":
        server = readme_nginx(relay.address, app)
    elif name == "haproxy":
        server = HAProxyExample.example(LISTEN=f"127.0.0.1:{port}", PORTAL=relay.address,
                                        RELAY=f"127.0.0.1:{free_port()}", **apps)
    elif name == "caddy":
        server = Caddy.from_file(CADDY_EXAMPLE, BIND="127.0.0.1", PORT=port, PORTAL=relay.address, **apps)
    else:
        if name == "ingress-nginx":
            require_set_misc()
        server = Nginx.from_file(EXAMPLES / LAYOUTS[name].file, LISTEN=f"127.0.0.1:{port}", PORTAL=relay.address,
                                 **apps)
    own_host = name == "subdomains"
    with server:
        yield Proxied(name, server.port, "prometheus.example.test" if own_host else "app.example.test",
                      "" if own_host else "/prometheus", relay, alice_cookie, portal)


# -- raw requests ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Attack:
    """One request, as bytes. In `target` and `headers`: {P} the app's path prefix, {H} its host, {HP}
    host:port as the client addresses it, {COOKIE} the requester's Cookie value (alice's, or a stranger's).
    A `Host:` line of its own replaces the default one."""

    name: str
    target: bytes
    headers: tuple[bytes, ...] = ()
    method: bytes = b"GET"

    def render(self, proxied: Proxied, cookie: str | None) -> bytes:
        def fill(text: bytes) -> bytes:
            return (text.replace(b"{P}", proxied.prefix.encode()).replace(b"{HP}", f"{proxied.host}:{proxied.port}"
                    .encode()).replace(b"{H}", proxied.host.encode())
                    .replace(b"{COOKIE}", (cookie or "theme=dark").encode()))

        headers = [fill(line) for line in self.headers]
        if not any(line.lower().startswith(b"host:") for line in headers):
            headers.insert(0, fill(b"Host: {HP}"))
        if cookie and not any(b"{COOKIE}" in line for line in self.headers):
            headers.append(f"Cookie: {cookie}".encode())
        return b"".join([self.method, b" ", fill(self.target), b" HTTP/1.1\r\n",
                         *(line + b"\r\n" for line in headers), b"Connection: close\r\n\r\n"])


ADMIN = b"{P}/api/v1/admin/tsdb/snapshot"
CURL = (b"User-Agent: curl/7.88.1", b"Accept: */*")
E_ACUTE = "é".encode()  # b"\xc3\xa9", raw UTF-8 as curl sends it
OPEN_URL = b"http://{H}/public/x"
FORWARDED_TO_PUBLIC = (b"X-Forwarded-Proto: http", b"X-Forwarded-Host: {H}", b"X-Forwarded-Uri: /public/x",
                       b"X-Forwarded-Method: GET")
ORIGINAL_TO_PUBLIC = (b"X-Original-URL: " + OPEN_URL, b"X-Original-Method: GET")

ATTACKS = [
    # -- the requests of the issue, byte for byte (curl sends é as raw UTF-8)
    Attack("issue-post-admin-e-acute-forwarded-to-public", ADMIN + b"?x=" + E_ACUTE,
           (*CURL, b"X-Forwarded-Host: app.example.test", b"X-Forwarded-Uri: /public/x"), b"POST"),
    Attack("issue-get-private-e-acute", b"/private/?q=" + E_ACUTE),
    Attack("issue-admin-e-acute", ADMIN + b"?x=" + E_ACUTE, CURL, b"POST"),
    # -- non-ASCII bytes, raw, in path and query
    Attack("raw-utf8-query", ADMIN + b"?x=" + E_ACUTE, CURL),
    Attack("raw-utf8-path", ADMIN + E_ACUTE, CURL),
    Attack("raw-obs-text-query", ADMIN + b"?x=\x80\xff", CURL),
    Attack("raw-obs-text-path", b"{P}/api/v1/admin/\x80\xff", CURL),
    Attack("raw-latin1-query", ADMIN + b"?x=\xe9", CURL),
    Attack("raw-utf8-query-browser", ADMIN + b"?x=" + E_ACUTE, (b"Accept: text/html",)),
    # -- percent-encoded non-ASCII (valid and invalid UTF-8)
    Attack("pct-utf8-query", ADMIN + b"?x=%C3%A9", CURL),
    Attack("pct-utf8-path", b"{P}/api/v1/admin/%C3%A9/snapshot", CURL),
    Attack("pct-invalid-utf8-path", b"{P}/api/v1/admin/%80%FF", CURL),
    Attack("pct-encoded-admin-raw-utf8-query", b"{P}/api/v1/%61dmin/tsdb/snapshot?x=" + E_ACUTE, CURL),
    # -- obs-text in other headers
    Attack("obs-text-user-agent", ADMIN, (b"User-Agent: curl/" + E_ACUTE, b"Accept: */*")),
    Attack("obs-text-accept", ADMIN, (b"Accept: text/html\xff",)),
    Attack("obs-text-cookie", ADMIN, (*CURL, b"Cookie: {COOKIE}; x=" + E_ACUTE)),
    Attack("obs-text-x-forwarded-for", ADMIN, (*CURL, b"X-Forwarded-For: " + E_ACUTE)),
    Attack("obs-text-host", ADMIN, (b"Host: {H}" + E_ACUTE, *CURL)),
    Attack("obs-text-x-original-url", ADMIN, (*CURL, b"X-Original-URL: http://{H}/public/" + E_ACUTE)),
    Attack("obs-text-x-forwarded-uri", ADMIN,
           (*CURL, b"X-Forwarded-Host: {H}", b"X-Forwarded-Uri: /public/" + E_ACUTE)),
    # -- NUL, CR, LF, DEL: percent-encoded, and raw where a proxy might take them
    Attack("pct-nul-path", b"{P}/api/v1/admin/%00/snapshot", CURL),
    Attack("pct-crlf-query-header-injection", ADMIN + b"?x=%0D%0AX-Original-URL:%20http://{H}/public/x", CURL),
    Attack("pct-crlf-path", b"{P}/api/v1/admin/%0D%0A/snapshot", CURL),
    Attack("raw-nul-query", ADMIN + b"?x=\x00", CURL),
    Attack("raw-del-query", ADMIN + b"?x=\x7f", CURL),
    Attack("raw-nul-header", ADMIN, (b"User-Agent: a\x00b", b"Accept: */*")),
    Attack("raw-del-header", ADMIN, (b"User-Agent: a\x7fb", b"Accept: */*")),
    Attack("raw-bare-cr-header", ADMIN, (*CURL, b"X-Note: a\rX-Original-URL: " + OPEN_URL)),
    Attack("raw-bare-lf-header", ADMIN, (*CURL, b"X-Note: a\nX-Forwarded-Host: {H}\nX-Forwarded-Uri: /public/x")),
    Attack("obs-fold-header", ADMIN, (*CURL, b"X-Forwarded-Uri: /", b" /public/x")),
    # -- the header families a client may forge, pointing at open URLs, and duplicates
    Attack("client-x-original", ADMIN, (*CURL, *ORIGINAL_TO_PUBLIC)),
    Attack("client-x-original-root", ADMIN, (*CURL, b"X-Original-URL: http://{H}/", b"X-Original-Method: GET")),
    Attack("client-x-forwarded", ADMIN, (*CURL, *FORWARDED_TO_PUBLIC)),
    Attack("client-x-forwarded-root", ADMIN, (*CURL, b"X-Forwarded-Host: {H}", b"X-Forwarded-Uri: /")),
    Attack("client-both-families", ADMIN, (*CURL, *ORIGINAL_TO_PUBLIC, *FORWARDED_TO_PUBLIC)),
    Attack("client-both-families-e-acute", ADMIN + b"?x=" + E_ACUTE,
           (*CURL, *ORIGINAL_TO_PUBLIC, *FORWARDED_TO_PUBLIC)),
    Attack("client-x-forwarded-root-e-acute", ADMIN + b"?x=" + E_ACUTE,
           (*CURL, b"X-Forwarded-Host: {H}", b"X-Forwarded-Uri: /")),
    Attack("client-underscore-families", ADMIN + b"?x=" + E_ACUTE,
           (*CURL, b"X_Original_URL: " + OPEN_URL, b"X_Forwarded_Host: {H}", b"X_Forwarded_Uri: /public/x")),
    Attack("dup-x-original-url", ADMIN, (*CURL, b"X-Original-URL: " + OPEN_URL, b"X-Original-URL: " + OPEN_URL)),
    Attack("dup-x-forwarded-uri", ADMIN + b"?x=" + E_ACUTE,
           (*CURL, b"X-Forwarded-Host: {H}", b"X-Forwarded-Uri: /", b"X-Forwarded-Uri: /public/x")),
    Attack("dup-x-forwarded-host", ADMIN + b"?x=" + E_ACUTE,
           (*CURL, b"X-Forwarded-Host: {H}", b"X-Forwarded-Host: {H}", b"X-Forwarded-Uri: /public/x")),
    Attack("dup-cookie", ADMIN, (*CURL, b"Cookie: {COOKIE}", b"Cookie: {COOKIE}")),
    Attack("dup-host", ADMIN, (b"Host: {HP}", b"Host: {HP}", *CURL)),
    Attack("absolute-form-e-acute", b"http://{HP}" + ADMIN + b"?x=" + E_ACUTE, CURL),
    # -- long and oversized URLs (nginx's request line buffer is 8 KB: 7 KB reaches the portal twice over,
    #    in X-Original-URL and X-Forwarded-Uri)
    Attack("long-7k-query", ADMIN + b"?x=" + b"a" * 7 * 1024, CURL),
    Attack("long-7k-utf8-query", ADMIN + b"?x=" + E_ACUTE * (7 * 512), CURL),
    Attack("oversize-9k-query", ADMIN + b"?x=" + b"a" * 9 * 1024, CURL),
    Attack("oversize-70k-query", ADMIN + b"?x=" + b"a" * 70 * 1024, CURL),
    Attack("oversize-9k-utf8-query", ADMIN + b"?x=" + E_ACUTE * (9 * 512), CURL),
    Attack("oversize-9k-client-x-forwarded", ADMIN,
           (*CURL, b"X-Forwarded-Host: {H}", b"X-Forwarded-Uri: /public/" + b"a" * 9 * 1024)),
]

IDENTITIES = ["anonymous", "alice-one-factor"]


@dataclass
class Outcome:
    """What one raw request did: the proxy's answer, the portal's answers, what reached the app."""

    status: int | None  # the proxy's status line (None: it closed without one)
    portal: list[Exchange]
    reached: list[RecordedRequest]

    def describe(self) -> str:
        asked = [f"{e.method} {e.target[:80]} -> {e.status}"
                 f" (X-Original-URL={e.header('X-Original-URL')}, X-Forwarded-Uri={e.header('X-Forwarded-Uri')})"
                 for e in self.portal if e.target.startswith(VERIFY_PATHS)]
        return (f"proxy answered {self.status}; portal asked {asked or 'nothing'}; "
                f"app reached by {[(r.method, r.path[:80]) for r in self.reached] or 'nothing'}")


def verify_decisions(portal: ServedPortal) -> dict[str, float]:
    """The portal's own count of verify answers by result (its /metrics, asked directly, not through a proxy).

    `error` counts the requests the verify code failed on: answered 401 (fail closed), so no status shows it.
    """
    text = requests.get(portal.url + "/metrics", timeout=5).text
    counts: dict[str, float] = {}
    series = r'^authportal_verify_decisions_total\{[^}]*result="(\w+)"[^}]*\} (\S+)$'
    for result, value in re.findall(series, text, re.MULTILINE):
        counts[result] = counts.get(result, 0.0) + float(value)
    return counts


def send(proxied: Proxied, upstream: Upstream, request: bytes) -> Outcome:
    """Write `request` on a fresh connection and read the whole answer; what the portal and the app saw of it."""
    app_before = list(upstream.requests)
    portal_mark = len(proxied.relay.exchanges)
    chunks = []
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # refused before the end of the request (too long): read what it said
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    answer = b"".join(chunks)
    status = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    reached = [seen for seen in list(upstream.requests) if not any(seen is old for old in app_before)]
    return Outcome(int(status[1]) if status else None, proxied.relay.since(portal_mark), reached)


# -- the battery ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_attack_is_refused_and_the_portal_never_fails(proxied, upstream, attack, identity):
    cookie = proxied.cookie if identity == "alice-one-factor" else None
    request = attack.render(proxied, cookie)
    errors_before = verify_decisions(proxied.portal).get("error", 0.0)
    outcome = send(proxied, upstream, request)
    story = f"{proxied.name} {attack.name} as {identity}: {outcome.describe()}\nrequest: {request[:300]!r}"
    assert outcome.reached == [], "the app received a request it must not: " + story
    allowed = [e for e in outcome.portal if e.target.startswith(VERIFY_PATHS) and e.status == 200]
    assert allowed == [], "the portal allowed it: " + story
    # A verify exchange is over when the proxy has answered; others (HAProxy's health check) may be under way.
    failed = [e for e in outcome.portal
              if (e.status or 0) >= 500 or e.status is None and e.target.startswith(VERIFY_PATHS)]
    assert failed == [], "the portal answered 5xx itself, or nothing: " + story
    assert proxied.relay.unreadable == 0, "the relay lost track of the portal's answers: " + story
    assert verify_decisions(proxied.portal).get("error", 0.0) == errors_before, "the portal failed inside: " + story


def test_the_battery_sees_what_gets_through(proxied, upstream):
    """The checks above can fail: alice's cookie opens Prometheus (app reached, portal said 200, and counted
    it), and the same request without it is refused by the portal, which the relay shows."""
    graph = Attack("control", b"{P}/graph?battery=control", CURL)
    allowed_before = verify_decisions(proxied.portal).get("allowed", 0.0)
    allowed = send(proxied, upstream, graph.render(proxied, proxied.cookie))
    assert allowed.status == 200, allowed.describe()
    assert verify_decisions(proxied.portal)["allowed"] == allowed_before + 1  # the counters read above are live
    assert [seen.path for seen in allowed.reached] == [f"{proxied.prefix}/graph?battery=control"]
    assert [e.status for e in allowed.portal if e.target.startswith(VERIFY_PATHS)] == [200]

    refused = send(proxied, upstream, graph.render(proxied, None))
    assert refused.status in (302, 401) and refused.reached == [], refused.describe()
    assert [e.status for e in refused.portal if e.target.startswith(VERIFY_PATHS)] == [401]
