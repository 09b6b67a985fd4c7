"""A served portal behind a real nginx running one of the project's examples (examples/nginx/).

`nginx_stack(layout, directory, backends)` starts the portal (its `portal_url`
is the nginx address, as a browser sees it) and nginx with the example file's
placeholders filled in, and stops both on exit. Layouts:

- `seed-layout`: app.example.test/prometheus/, /alertmanager/, /public/; portal on auth.example.test
- `subdomains`: prometheus.example.test, alertmanager.example.test; portal on auth.example.test
- `ingress-nginx`: what ingress-nginx generates from ingress.yaml; portal at the root of app.example.test
- `https`: the seed layout over TLS (https.conf), with a certificate for *.example.test from a CA made for
  the stack (`ca_file` for `requests`' verify=, `cert_file` for Chromium: tests/servers/browser.py) and
  Secure session cookies; plain http (`http_port`) only redirects
- `client-certificates`: the https layout asking app.example.test's clients for a certificate from the CA in
  the backends' CLIENT_CA, and serving it over plain http (`http_port`) too

`HAProxyExample` runs examples/haproxy (haproxy.cfg with its Lua file beside it).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import IN_CI, free_port
from tests.servers.ca import CertificateAuthority
from tests.servers.haproxy import HAProxy
from tests.servers.nginx import Nginx
from tests.servers.process import REPO
from tests.support.portal import PortalSetup, ServedPortal

EXAMPLES = REPO / "examples" / "nginx"
SET_MISC_MODULES = (Path("/usr/lib/nginx/modules/ndk_http_module.so"),
                    Path("/usr/lib/nginx/modules/ngx_http_set_misc_module.so"))


@dataclass(frozen=True)
class Layout:
    file: str
    portal_host: str
    #: The portal's session.domain (None: a host-only cookie, enough when everything is on one host).
    session_domain: str | None = "example.test"
    #: What the example's 401 redirect carries in rd: the full URL, or only the path (ingress-nginx).
    rd_is_path: bool = False
    #: Served over https (placeholders CERT, KEY, HTTP_LISTEN); the portal's cookies are Secure.
    tls: bool = False


LAYOUTS = {
    "seed-layout": Layout("seed-layout.conf", "auth.example.test"),
    "subdomains": Layout("subdomains.conf", "auth.example.test"),
    "ingress-nginx": Layout("ingress-nginx/equivalent-nginx.conf", "app.example.test", None, rd_is_path=True),
    "https": Layout("https.conf", "auth.example.test", tls=True),
    # client certificates (mTLS) on app.example.test: the backends add CLIENT_CA, the client CA's file
    "client-certificates": Layout("client-certificates.conf", "auth.example.test", tls=True),
}
#: The names the https layout's certificate carries (subjectAltName).
TLS_NAMES = ("auth.example.test", "app.example.test", "*.example.test")


@dataclass(frozen=True)
class StackTls:
    """What a TLS layout adds: a CA of its own, the server certificate nginx presents, the http redirect port."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    http_port: int

    @classmethod
    def make(cls, directory: Path) -> StackTls:
        """A new CA (ca.pem) and one server certificate for TLS_NAMES (server.pem, server.key) in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        authority = CertificateAuthority("authportal https stack CA")
        cert_file, key_file = authority.issue(directory / "server.pem", directory / "server.key", TLS_NAMES[0],
                                              dns_names=TLS_NAMES)
        return cls(authority.write_cert(directory / "ca.pem"), cert_file, key_file, free_port())

    def placeholders(self) -> dict[str, Any]:
        return {"CERT": self.cert_file, "KEY": self.key_file, "HTTP_LISTEN": f"127.0.0.1:{self.http_port}"}


@dataclass
class NginxStack:
    name: str
    layout: Layout
    port: int
    portal: ServedPortal
    nginx: Nginx
    tls: StackTls | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def ca_file(self) -> Path:
        """The CA that signed nginx's certificate (TLS layouts): `requests.get(..., verify=str(stack.ca_file))`."""
        return self._tls.ca_file

    @property
    def cert_file(self) -> Path:
        """The server certificate nginx presents (TLS layouts): what Chromium is told to trust."""
        return self._tls.cert_file

    @property
    def http_port(self) -> int:
        """Plain http (TLS layouts): every request there is redirected to https."""
        return self._tls.http_port

    @property
    def _tls(self) -> StackTls:
        if self.tls is None:
            raise AttributeError(f"layout {self.name!r} is plain http: no certificates")
        return self.tls

    @property
    def portal_base(self) -> str:
        """The portal as browsers reach it, through nginx."""
        return f"{self.scheme}://{self.layout.portal_host}:{self.port}"

    def url(self, host: str, path: str = "/") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


def require_set_misc() -> None:
    """ingress-nginx's `set_escape_uri` needs the set-misc module (built into OpenResty, a package on Debian)."""
    missing = [str(path) for path in SET_MISC_MODULES if not path.exists()]
    if missing:
        message = (f"nginx module(s) {', '.join(missing)} missing: "
                   "apt install libnginx-mod-http-ndk libnginx-mod-http-set-misc")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def nginx_stack(name: str, directory: Path, backends: Mapping[str, str],
                portal_overrides: Mapping[str, Any] | None = None, port: int | None = None,
                users: dict[str, dict[str, Any]] | None = None) -> Iterator[NginxStack]:
    """Portal + nginx for layout `name`; `backends` fills PROMETHEUS, ALERTMANAGER, PUBLIC (host:port).

    `port` is nginx's port (a free one by default): pass it when a backend must know it beforehand.
    `users`: the users file's people (default: tests/support/portal.py USERS).
    A TLS layout gets a new CA and server certificate in `directory`/tls.
    """
    layout = LAYOUTS[name]
    if name == "ingress-nginx":
        require_set_misc()
    port = port or free_port()
    overrides: dict[str, Any] = {
        "server": {"portal_url": f"{'https' if layout.tls else 'http'}://{layout.portal_host}:{port}"},
        "session": {"domain": layout.session_domain},
    }
    tls = StackTls.make(directory / "tls") if layout.tls else None
    if tls:
        overrides["session"]["cookie_secure"] = True
    for key, value in (portal_overrides or {}).items():
        overrides[key] = {**overrides.get(key, {}), **value} if isinstance(value, dict) else value
    setup = PortalSetup(directory / "portal", overrides=overrides, users=users)
    with ExitStack() as stack:
        portal = ServedPortal(setup).start()
        stack.callback(portal.stop)
        nginx = Nginx.from_file(EXAMPLES / layout.file, {
            "LISTEN": f"127.0.0.1:{port}", "PORTAL": f"127.0.0.1:{setup.port}", **backends,
            **(tls.placeholders() if tls else {})})
        stack.callback(nginx.stop)
        nginx.start()
        yield NginxStack(name, layout, port, portal, nginx, tls)


HAPROXY_EXAMPLE = REPO / "examples" / "haproxy"
CADDY_EXAMPLE = REPO / "examples" / "caddy" / "Caddyfile"


class HAProxyExample(HAProxy):
    """examples/haproxy/haproxy.cfg with auth-request.lua beside it, where `default-path config` looks for it.

    Placeholders: LISTEN, PORTAL, RELAY, PROMETHEUS, ALERTMANAGER, PUBLIC (see the file's header).
    """

    @classmethod
    def example(cls, substitutions: Mapping[str, Any] | None = None, **more: Any) -> HAProxyExample:
        return cls.from_file(HAPROXY_EXAMPLE / "haproxy.cfg", substitutions, **more)

    def prepare(self) -> None:
        shutil.copy(HAPROXY_EXAMPLE / "auth-request.lua", self.dir / "auth-request.lua")
        super().prepare()
