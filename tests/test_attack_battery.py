"""Issue 14's attack battery: hostile raw requests through every shipped proxy config, anonymous and as alice.

granian hands the portal a header value holding non-ASCII bytes as an empty
string, joins repeated headers with a bare comma, and answers 400 itself for
NUL or DEL. When the portal then fell back to other headers (client-sent
X-Forwarded-*, or `/`), `?x=é` opened any protected path. So every config the
project ships gets the same table of requests, written byte by byte on a raw
socket: raw and percent-encoded non-ASCII in path and query, obs-text,
NUL/CR/LF in headers, duplicated headers, both header families a client might
forge pointing at open paths, forged client addresses, oversized URLs, and the
issue's requests themselves.

The configs (CONFIGS): nginx's seed layout, the README's snippet as written,
the subdomains layout, the ingress-nginx equivalent, HAProxy and Caddy; nginx's
two-domains.conf on both of its domains (app.example.test, and app.corp.test
with that domain's own cookie), high-availability.conf (its two portal
upstreams are two relays to the one portal), micro-cache.conf, https.conf and
client-certificates.conf over TLS (the tests' own CA; client-certificates.conf
without a client certificate, with bob's, who may not use the admin API, and
on its plain-http face), and examples/grafana/'s nginx, HAProxy and Caddy
files in front of grafana.example.test. A hole in any one is a hole in what
users copy.

Every request targets something the requester may not have: Prometheus' admin
API (two factors for admins, denied to others), or a path no rule opens. What
must hold: the app (the `upstream` stub) never sees the request, and the
portal never says 200 to it, never answers 5xx itself and never fails inside
(its `result="error"` counter, a fail-closed 401 no status shows). A
`RecordingRelay` between proxy and portal shows the portal's own status:
nginx turns a portal's 400 into a 500 of its own (fine: the request was
refused), HAProxy into a 503, Caddy passes it on.

One portal serves all the configs: what differs between their portals
(portal_url, the cookie's domain) only shapes the login redirect and a
browser's cookie jar, and a portal takes seconds to start on a busy machine.
It has two cookie domains (session.cookies: example.test, and corp.test under
its own cookie name, for two-domains.conf) and reads client certificates from
the tests' client CA (for client-certificates.conf). So through every config a
client's own X-SSL-Client-Cert/-Verify must be dropped or overwritten:
`test_client_sent_certificate_headers_open_nothing` sends bob's certificate in
them (nginx's and HAProxy's encodings), claimed verified, on a page it would
open (`test_a_certificate_the_proxy_passes_opens_prometheus`).

The portal's rules add, on every app host (app., prometheus., alertmanager.
and grafana.example.test, app.corp.test): one open page, `/`, "a host whose
only public path is `/`", the page an empty URL used to be judged as; and,
first of all, the admin API open to private networks (10/8, 172.16/12,
192.168/16) with no login at all. Every client here connects from 127.0.0.1,
outside them, so only a client address the proxy let the client write itself
(X-Forwarded-For, X-Real-IP, Forwarded, True-Client-IP, X-Client-IP, spelt
with `_`, doubled) could open it: the forged-address attacks try exactly that.
`test_a_private_client_address_opens_the_admin_api` shows the rule is live.
grafana.example.test gets the rules of examples/grafana/authportal.yml behind
an admin API like Prometheus' (two factors for admins, denied to others), and
app.corp.test the seed layout's rules of app.example.test.
"""
from __future__ import annotations

import re
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.servers import free_port
from tests.servers.caddy import Caddy
from tests.servers.nginx import Nginx
from tests.servers.process import REPO, ConfiguredServer
from tests.servers.relay import Exchange, RecordingRelay
from tests.servers.upstream import RecordedRequest, Upstream
from tests.support.client_certificates import Pki, der_base64, escaped
from tests.support.portal import SEED_RULES, PortalSetup, ServedPortal, login
from tests.support.stacks import CADDY_EXAMPLE, EXAMPLES, HAPROXY_EXAMPLE, HAProxyExample, StackTls, require_set_misc

GRAFANA_EXAMPLE = REPO / "examples" / "grafana"
#: Where every client of this module connects from: loopback, in none of PRIVATE_NETWORKS.
CLIENT_ADDRESS = "127.0.0.1"

#: Every host the configs protect.
APP_HOSTS = ["app.example.test", "prometheus.example.test", "alertmanager.example.test", "app.corp.test",
             "grafana.example.test"]
#: Prometheus' admin API, with or without the seed layout's /prometheus prefix (SEED_RULES' own pattern).
ADMIN_API = r"^/(prometheus/)?api/v1/admin/"
PRIVATE_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
#: The admin API needs no login from a private network: only a forged client address could reach it from here.
PRIVATE_NETWORKS_RULE = {"domain": APP_HOSTS, "resources": [ADMIN_API], "networks": PRIVATE_NETWORKS,
                         "policy": "bypass"}
#: `/` is open on every app host (a landing page): the path an unreadable URL used to be judged as.
LANDING_RULE = {"domain": APP_HOSTS, "resources": [r"^/(\?|$)"], "policy": "bypass"}
#: two-domains.conf's second domain: what the seed layout's rules say of app.example.test.
CORP_RULES = [{**rule, "domain": ["app.corp.test"]} for rule in SEED_RULES if "app.example.test" in rule["domain"]]
#: grafana.example.test: an admin API like Prometheus' (two factors for admins, denied to others), then the
#: example's own rules (examples/grafana/authportal.yml: anyone signed in, the role by group).
GRAFANA_RULES = [
    {"domain": ["grafana.example.test"], "resources": [ADMIN_API], "subject": ["group:admins"],
     "policy": "two_factor"},
    {"domain": ["grafana.example.test"], "resources": [ADMIN_API], "policy": "deny"},
    *yaml.safe_load((GRAFANA_EXAMPLE / "authportal.yml").read_text())["access_control"]["rules"],
]
#: A public host (a status page, say) that no shipped config serves: a request judged under its name is let through.
OPEN_HOST = "open.example.test"
OPEN_HOST_RULE = {"domain": [OPEN_HOST], "policy": "bypass"}
RULES = [PRIVATE_NETWORKS_RULE, LANDING_RULE, OPEN_HOST_RULE, *SEED_RULES, *CORP_RULES, *GRAFANA_RULES]

#: The cookie of each cookie domain (session.cookies): corp.test's has a name of its own.
COOKIES = {"example.test": "authportal_session", "corp.test": "corp_session"}

#: Where the README's snippet sends the verify subrequest and the protected app; replaced by the test's own.
README_PORTAL, README_APP = "127.0.0.1:9091", "127.0.0.1:9090"

VERIFY_PATHS = ("/api/verify", "/api/forward-auth")


# -- the proxies under attack ---------------------------------------------------------------------------

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


def readme_nginx() -> str:
    """The README's snippet as written, only its deployment values made placeholders: {{PORTAL}} and
    {{PROMETHEUS}}; for complete server blocks also plain http on {{LISTEN}} (no certificates) and example.test.
    A snippet of bare locations is put in a server block for app.example.test."""
    config = swapped(readme_nginx_snippet(), re.escape(README_PORTAL), "{{PORTAL}}")
    config = swapped(config, re.escape(README_APP), "{{PROMETHEUS}}")
    if not re.search(r"^\s*server\s*\{", config, re.MULTILINE):
        return "server {\n    listen {{LISTEN}};\n    server_name app.example.test;\n" + config + "}\n"
    config = swapped(config, r"\blisten\s+443\s+ssl\b", "listen {{LISTEN}}")
    config = swapped(config, r"^\s*ssl_\w+\s[^;]*;.*$", "")
    return swapped(config, r"\bexample\.com\b", "example.test")


@dataclass(frozen=True)
class Shipped:
    """One shipped config and how the battery runs it. Every config gets the same placeholder values (see
    `proxied`); what a file does not name is left unused."""

    server: type[ConfiguredServer]  # Nginx, HAProxyExample (auth-request.lua beside it) or Caddy
    config: Path | Callable[[], str]  # the file, or what makes its text (the README's snippet)
    host: str = "app.example.test"  # the protected application's host
    prefix: str = "/prometheus"  # its path ("" when it has a host of its own)
    cookie_domain: str = "example.test"  # whose session cookie alice presents
    #: Clients connect over TLS (to {{LISTEN}}, trusting the tests' CA), else plain http.
    tls: bool = False
    #: The placeholder holding the address clients connect to.
    listen: str = "LISTEN"
    #: The client certificate (a user's name, CN) presented on every TLS connection; None: none.
    certificate: str | None = None
    set_misc: bool = False  # needs nginx's set-misc module (ingress-nginx's set_escape_uri)

    def text(self) -> str:
        return self.config.read_text() if isinstance(self.config, Path) else self.config()


CONFIGS = {
    "seed-layout": Shipped(Nginx, EXAMPLES / "seed-layout.conf"),
    "readme": Shipped(Nginx, readme_nginx),
    "subdomains": Shipped(Nginx, EXAMPLES / "subdomains.conf", host="prometheus.example.test", prefix=""),
    "ingress-nginx": Shipped(Nginx, EXAMPLES / "ingress-nginx" / "equivalent-nginx.conf", set_misc=True),
    "haproxy": Shipped(HAProxyExample, HAPROXY_EXAMPLE / "haproxy.cfg"),
    "caddy": Shipped(Caddy, CADDY_EXAMPLE),
    "two-domains": Shipped(Nginx, EXAMPLES / "two-domains.conf"),
    "two-domains-corp": Shipped(Nginx, EXAMPLES / "two-domains.conf", host="app.corp.test",
                                cookie_domain="corp.test"),
    "high-availability": Shipped(Nginx, EXAMPLES / "high-availability.conf"),
    "micro-cache": Shipped(Nginx, EXAMPLES / "micro-cache.conf"),
    "https": Shipped(Nginx, EXAMPLES / "https.conf", tls=True),
    "client-certificates": Shipped(Nginx, EXAMPLES / "client-certificates.conf", tls=True),
    "client-certificates-bob-cert": Shipped(Nginx, EXAMPLES / "client-certificates.conf", tls=True,
                                            certificate="bob"),
    "client-certificates-http": Shipped(Nginx, EXAMPLES / "client-certificates.conf", listen="HTTP_LISTEN"),
    "grafana-nginx": Shipped(Nginx, GRAFANA_EXAMPLE / "nginx.conf", host="grafana.example.test", prefix=""),
    "grafana-haproxy": Shipped(HAProxyExample, GRAFANA_EXAMPLE / "haproxy.cfg", host="grafana.example.test", prefix=""),
    "grafana-caddy": Shipped(Caddy, GRAFANA_EXAMPLE / "Caddyfile", host="grafana.example.test", prefix=""),
}
PROXIES = list(CONFIGS)


@dataclass
class Proxied:
    """One shipped config running in front of the portal (seen through the relays) and the stub app."""

    name: str
    port: int  # where clients connect
    host: str  # the protected application's host
    prefix: str  # the protected application's path ("" when it has its own host)
    #: Where the proxy reaches the portal; all but high-availability.conf use only the first.
    relays: tuple[RecordingRelay, ...]
    #: alice's session cookie (`name=value`) for the app's domain: one factor, groups admins and monitoring.
    cookie: str
    portal: ServedPortal
    #: TLS (None: plain http): how every request connects, and how one without the client certificate does.
    tls: ssl.SSLContext | None = None
    tls_without_certificate: ssl.SSLContext | None = None
    certificate: str | None = None  # whose client certificate `tls` presents

    def marks(self) -> list[int]:
        """Where each relay's record stands now, for `since`."""
        return [len(relay.exchanges) for relay in self.relays]

    def since(self, marks: list[int]) -> list[Exchange]:
        """What the portal was asked, and answered, after `marks`."""
        return [exchange for relay, mark in zip(self.relays, marks, strict=True) for exchange in relay.since(mark)]

    @property
    def unreadable(self) -> int:
        return sum(relay.unreadable for relay in self.relays)


@dataclass
class Certificates:
    """The TLS configs' certificates: nginx's server certificate (its CA, for the clients) and the client CA the
    portal and client-certificates.conf trust, with a certificate for each of CLIENT_CERTIFICATES."""

    server: StackTls
    clients: Pki
    issued: dict[str, tuple[Path, Path]] = field(default_factory=dict)


CLIENT_CERTIFICATES = ("bob",)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    directory = tmp_path_factory.mktemp("battery-tls")
    clients = Pki(directory / "clients")
    issued = {name: clients.client(name) for name in CLIENT_CERTIFICATES}
    return Certificates(StackTls.make(directory / "server"), clients, issued)


@pytest.fixture(scope="module")
def portal(tmp_path_factory, certificates) -> Iterator[ServedPortal]:
    """One portal behind all the configs (see the module's docstring); the battery's rules."""
    port = free_port()
    setup = PortalSetup(tmp_path_factory.mktemp("battery-portal"), port=port, overrides={
        "server": {"portal_url": None},
        "session": {"domain": None, "cookies": [
            {"domain": domain, "portal_url": f"http://auth.{domain}:{port}", "name": name}
            for domain, name in COOKIES.items()]},
        "authentication": {"client_certificates": {
            "enable": True, "map": "subject_cn", "ca_file": str(certificates.clients.ca_file),
            "crl_file": str(certificates.clients.crl_file)}},
        "access_control": {"rules": RULES},
    })
    with ServedPortal(setup) as served:
        yield served


@pytest.fixture(scope="module")
def relays(portal) -> Iterator[tuple[RecordingRelay, RecordingRelay]]:
    """Where every proxy reaches the portal: they record what the portal itself answered. Two, for
    high-availability.conf's two instances; the other configs use the first."""
    with RecordingRelay(portal.setup.port) as first, RecordingRelay(portal.setup.port) as second:
        yield first, second


@pytest.fixture(scope="module")
def alice_cookies(portal) -> dict[str, str]:
    """alice logs in with her password only (one factor) at the portal, on each cookie domain: her session
    cookie (`name=value`) by domain."""
    cookies = {}
    for domain, name in COOKIES.items():
        http = requests.Session()
        answer = login(http, f"http://auth.{domain}:{portal.setup.port}", "alice")
        assert answer.status_code == 302, answer.text
        cookies[domain] = f"{name}={http.cookies.get(name)}"
    return cookies


@pytest.fixture(scope="module")
def cache_dir() -> Iterator[Path]:
    """micro-cache.conf's {{CACHE_DIR}}: outside pytest's private tmp tree, where nginx's workers reach it
    (nginx hands it to its worker user)."""
    directory = Path(tempfile.mkdtemp(prefix="authportal-battery-cache-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def client_tls(certificates: Certificates, certificate: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.server.ca_file))
    if certificate:
        cert_file, key_file = certificates.issued[certificate]
        context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture(scope="module", params=PROXIES)
def proxied(request, portal, relays, alice_cookies, upstream, certificates, cache_dir) -> Iterator[Proxied]:
    """Each shipped config in turn, started once, its placeholders filled: portal = the relay(s), apps = the stub."""
    shipped = CONFIGS[request.param]
    if shipped.set_misc:
        require_set_misc()
    app = f"127.0.0.1:{upstream.port}"
    listen = {"LISTEN": free_port(), "HTTP_LISTEN": free_port()}
    port = listen[shipped.listen]
    placeholders: dict[str, Any] = {
        **{name: f"127.0.0.1:{number}" for name, number in listen.items()},
        "BIND": "127.0.0.1", "PORT": listen["LISTEN"],  # Caddy's
        "PORTAL": relays[0].address, "PORTAL_1": relays[0].address, "PORTAL_2": relays[1].address,
        "RELAY": f"127.0.0.1:{free_port()}",  # HAProxy's own verify relay
        **dict.fromkeys(("PROMETHEUS", "ALERTMANAGER", "PUBLIC", "APP", "GRAFANA"), app),
        "CERT": certificates.server.cert_file, "KEY": certificates.server.key_file,
        "CLIENT_CA": certificates.clients.ca_file, "CACHE_DIR": cache_dir,
    }
    tls = client_tls(certificates, shipped.certificate) if shipped.tls else None
    with shipped.server(shipped.text(), placeholders):
        yield Proxied(request.param, port, shipped.host, shipped.prefix, relays,
                      alice_cookies[shipped.cookie_domain], portal, tls,
                      client_tls(certificates) if shipped.tls else None, shipped.certificate)


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
                    .encode()).replace(b"{H}", proxied.host.encode()).replace(b"{PORT}", str(proxied.port).encode())
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
    # -- host confusion: the proxy routes to the app, the portal must not judge another host's (public) rules
    Attack("host-confusion-absolute-form", b"http://{HP}" + ADMIN, (b"Host: open.example.test:{PORT}", *CURL)),
    Attack("host-confusion-absolute-form-no-port", b"http://{HP}" + ADMIN, (b"Host: open.example.test", *CURL)),
    Attack("host-confusion-absolute-form-post", b"http://{HP}" + ADMIN, (b"Host: open.example.test:{PORT}", *CURL),
           b"POST"),
    Attack("host-confusion-unknown-host", ADMIN, (b"Host: open.example.test:{PORT}", *CURL)),
    Attack("host-confusion-trailing-dot", ADMIN, (b"Host: {H}.:{PORT}", *CURL)),
    # -- forged client addresses: a private network opens the admin API with no login (PRIVATE_NETWORKS_RULE)
    Attack("forged-x-forwarded-for", ADMIN, (*CURL, b"X-Forwarded-For: 10.0.0.1")),
    Attack("forged-x-forwarded-for-chain", ADMIN, (*CURL, b"X-Forwarded-For: 10.0.0.1, 10.0.0.2")),
    Attack("forged-x-real-ip", ADMIN, (*CURL, b"X-Real-IP: 10.0.0.1")),
    Attack("forged-forwarded", ADMIN, (*CURL, b"Forwarded: for=10.0.0.1")),
    Attack("forged-true-client-ip", ADMIN, (*CURL, b"True-Client-IP: 10.0.0.1")),
    Attack("forged-x-client-ip", ADMIN, (*CURL, b"X-Client-IP: 10.0.0.1")),
    Attack("forged-x-forwarded-for-post", ADMIN, (*CURL, b"X-Forwarded-For: 10.0.0.1"), b"POST"),
    Attack("forged-dup-x-forwarded-for", ADMIN,
           (*CURL, b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-For: 192.168.0.1")),
    Attack("forged-underscore-x-forwarded-for", ADMIN, (*CURL, b"X_Forwarded_For: 10.0.0.1", b"X_Real_IP: 10.0.0.1")),
    Attack("forged-every-address-header", ADMIN + b"?x=" + E_ACUTE,
           (*CURL, b"X-Forwarded-For: 10.0.0.1", b"X-Real-IP: 10.0.0.1", b"Forwarded: for=10.0.0.1",
            b"True-Client-IP: 10.0.0.1", b"X-Client-IP: 10.0.0.1", b"X-Original-Forwarded-For: 10.0.0.1")),
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
                 f" (X-Original-URL={e.header('X-Original-URL')}, X-Forwarded-Uri={e.header('X-Forwarded-Uri')},"
                 f" X-Forwarded-For={e.header('X-Forwarded-For')})"
                 for e in self.portal if e.target.startswith(VERIFY_PATHS)]
        return (f"proxy answered {self.status}; portal asked {asked or 'nothing'}; "
                f"app reached by {[(r.method, r.path[:80]) for r in self.reached] or 'nothing'}")

    def verifies(self) -> list[Exchange]:
        """The portal's verify exchanges (not HAProxy's health checks)."""
        return [e for e in self.portal if e.target.startswith(VERIFY_PATHS)]


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


def send(proxied: Proxied, upstream: Upstream, request: bytes, certificate: bool = True) -> Outcome:
    """Write `request` on a fresh connection from CLIENT_ADDRESS (over TLS for the TLS configs, presenting the
    config's client certificate unless `certificate` is false) and read the whole answer; what the portal and
    the app saw of it."""
    app_before = list(upstream.requests)
    marks = proxied.marks()
    tls = proxied.tls if certificate else proxied.tls_without_certificate
    chunks = []
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=10,
                                  source_address=(CLIENT_ADDRESS, 0)) as connection:
        with tls.wrap_socket(connection, server_hostname=proxied.host) if tls else connection as sock:
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
    return Outcome(int(status[1]) if status else None, proxied.since(marks), reached)


# -- the battery ----------------------------------------------------------------------------------------

def assert_refused(proxied: Proxied, upstream: Upstream, request: bytes, what: str, certificate: bool = True) -> None:
    """Send `request`: the app must not see it, and the portal must neither allow it, nor answer 5xx or
    nothing, nor fail inside."""
    errors_before = verify_decisions(proxied.portal).get("error", 0.0)
    outcome = send(proxied, upstream, request, certificate)
    story = f"{proxied.name} {what}: {outcome.describe()}\nrequest: {request[:300]!r}"
    assert outcome.reached == [], "the app received a request it must not: " + story
    allowed = [e for e in outcome.verifies() if e.status == 200]
    assert allowed == [], "the portal allowed it: " + story
    # A verify exchange is over when the proxy has answered; others (HAProxy's health check) may be under way.
    failed = [e for e in outcome.portal
              if (e.status or 0) >= 500 or e.status is None and e.target.startswith(VERIFY_PATHS)]
    assert failed == [], "the portal answered 5xx itself, or nothing: " + story
    assert proxied.unreadable == 0, "the relay lost track of the portal's answers: " + story
    assert verify_decisions(proxied.portal).get("error", 0.0) == errors_before, "the portal failed inside: " + story


@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_attack_is_refused_and_the_portal_never_fails(proxied, upstream, attack, identity):
    """`anonymous`: no session (with client-certificates-bob-cert, bob's certificate: no admin API for him)."""
    cookie = proxied.cookie if identity == "alice-one-factor" else None
    assert_refused(proxied, upstream, attack.render(proxied, cookie), f"{attack.name} as {identity}")


#: How a proxy passes a certificate: nginx's URL-escaped PEM, HAProxy's base64 DER.
CERTIFICATE_ENCODINGS = {"nginx-pem": escaped, "haproxy-der": der_base64}


@pytest.mark.parametrize("encoding", CERTIFICATE_ENCODINGS)
def test_client_sent_certificate_headers_open_nothing(proxied, upstream, certificates, encoding):
    """The portal reads client certificates (for client-certificates.conf), so X-SSL-Client-Cert and
    X-SSL-Client-Verify are believed from a proxy: every config must set or drop a client's own. bob's real
    certificate, claimed verified, without a session and without presenting it, on a page it would open
    (`test_a_certificate_the_proxy_passes_opens_prometheus`)."""
    forged = Attack(f"forged-certificate-{encoding}", b"{P}/graph?battery=forged-certificate", (
        *CURL, b"X-SSL-Client-Cert: " + CERTIFICATE_ENCODINGS[encoding](certificates.issued["bob"][0]).encode(),
        b"X-SSL-Client-Verify: SUCCESS"))
    assert_refused(proxied, upstream, forged.render(proxied, None), f"{forged.name} as anonymous", certificate=False)


def test_the_battery_sees_what_gets_through(proxied, upstream):
    """The checks above can fail: alice's cookie opens Prometheus (app reached, portal said 200, and counted
    it), and the same request without it is refused by the portal, which the relay shows. The portal hears
    of the client as CLIENT_ADDRESS, outside the private networks. With a client certificate, the certificate
    alone opens it too, and the refused request presents none."""
    graph = Attack("control", b"{P}/graph?battery=control", CURL)
    allowed_before = verify_decisions(proxied.portal).get("allowed", 0.0)
    allowed = send(proxied, upstream, graph.render(proxied, proxied.cookie))
    assert allowed.status == 200, allowed.describe()
    assert verify_decisions(proxied.portal)["allowed"] == allowed_before + 1  # the counters read above are live
    assert [seen.path for seen in allowed.reached] == [f"{proxied.prefix}/graph?battery=control"]
    assert [e.status for e in allowed.verifies()] == [200]
    assert [e.header("X-Forwarded-For") for e in allowed.verifies()] == [[CLIENT_ADDRESS]], allowed.describe()

    if proxied.certificate:
        certified = send(proxied, upstream, graph.render(proxied, None))
        assert certified.status == 200 and len(certified.reached) == 1, certified.describe()
        assert [seen.headers["remote-user"] for seen in certified.reached] == [proxied.certificate]

    refused = send(proxied, upstream, graph.render(proxied, None), certificate=False)
    assert refused.status in (302, 401) and refused.reached == [], refused.describe()
    assert [e.status for e in refused.verifies()] == [401]


def verify_directly(portal: ServedPortal, url: str, method: str = "GET", **headers: str) -> int:
    """The portal's verify answer to a trusted proxy (this test, on loopback) that sends these headers."""
    return requests.get(portal.url + "/api/verify", allow_redirects=False, timeout=10, headers={
        "X-Original-URL": url, "X-Original-Method": method, **headers}).status_code


def test_a_private_client_address_opens_the_admin_api(portal):
    """PRIVATE_NETWORKS_RULE is live: the admin API the forged-address attacks aim at opens, without a login,
    to a client a trusted proxy says is at 10.0.0.1, and stays shut for CLIENT_ADDRESS. So the attacks are
    refused only because no proxy lets a client's own address header reach the portal as its address."""
    admin = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"
    assert verify_directly(portal, admin, "POST", **{"X-Forwarded-For": "10.0.0.1"}) == 200
    assert verify_directly(portal, admin, "POST", **{"X-Forwarded-For": CLIENT_ADDRESS}) == 401


@pytest.mark.parametrize("encoding", CERTIFICATE_ENCODINGS)
def test_a_certificate_the_proxy_passes_opens_prometheus(portal, certificates, encoding):
    """What `test_client_sent_certificate_headers_open_nothing` forges would open Prometheus if a proxy let it
    through: the portal believes a trusted proxy's certificate headers."""
    bob = CERTIFICATE_ENCODINGS[encoding](certificates.issued["bob"][0])
    graph = "http://app.example.test/prometheus/graph"
    assert verify_directly(portal, graph, **{"X-Forwarded-For": CLIENT_ADDRESS, "X-SSL-Client-Cert": bob,
                                             "X-SSL-Client-Verify": "SUCCESS"}) == 200
    assert verify_directly(portal, graph, **{"X-Forwarded-For": CLIENT_ADDRESS}) == 401
