"""examples/grafana/ through real nginx, HAProxy and Caddy: the headers Grafana's auth proxy reads, from slapd.

For each proxy one stack for the module: the served portal with examples/grafana/authportal.yml (identity.headers,
an extra LDAP attribute, the Grafana rule's role chosen by group) on the session's real slapd, and the proxy's
example file in front of the `upstream` stub standing in for Grafana (it records what reached it). Which
headers to look at comes from examples/grafana/grafana.ini ([auth.proxy] header_name and headers). The users
and the group of this module's own (an Editor; one whose directory values hold CR/LF) are added to slapd
once; its shared entries are never changed. The same rendering in-process: tests/test_identity_headers.py.
"""
from __future__ import annotations

import base64
import configparser
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from email.message import Message
from uuid import uuid4

import pytest
import requests
import yaml

from tests.servers import free_port
from tests.servers.caddy import Caddy
from tests.servers.nginx import Nginx
from tests.servers.process import REPO
from tests.servers.slapd import SlapdServer
from tests.support.portal import PortalSetup, ServedPortal, login
from tests.support.stacks import HAProxyExample

EXAMPLE = REPO / "examples" / "grafana"
PROXIES = ("nginx", "haproxy", "caddy")

#: This module's own directory entries (added once to the session's slapd, under names no other test uses).
EDITORS_GROUP = "grafana-editors"
EDITOR, INJECTOR = "gf-editor", "gf-crlf"
OWN_PASSWORDS = {EDITOR: "gf-editor-Pass-1", INJECTOR: "gf-crlf-Pass-2"}
PASSWORDS = {**SlapdServer.PASSWORDS, **OWN_PASSWORDS}
#: What a directory value tries to smuggle in as a header line of its own.
INJECTED_NAME = "x\r\nX-WEBAUTH-USER: alice"
INJECTED_DEPARTMENT = "x\r\nX-WEBAUTH-ROLE: Admin"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,*/*;q=0.8"


def grafana_reads() -> dict[str, str]:
    """examples/grafana/grafana.ini [auth.proxy]: Grafana's field -> the header it reads it from ("Login": header_name)."""
    ini = configparser.ConfigParser()
    ini.read_string((EXAMPLE / "grafana.ini").read_text())
    proxy = ini["auth.proxy"]
    assert proxy.getboolean("enabled") and not proxy.getboolean("enable_login_token")
    fields = {"Login": proxy["header_name"]}
    fields.update(pair.split(":", 1) for pair in proxy["headers"].split())
    return fields


GRAFANA_READS = grafana_reads()
PORTAL_FRAGMENT = yaml.safe_load((EXAMPLE / "authportal.yml").read_text())
DEPARTMENT_HEADER = next(name for name, template in PORTAL_FRAGMENT["identity"]["headers"].items()
                         if template == "{attributes.departmentNumber}")
#: Every header the example passes on (the proxies' lists must name the same ones).
PASSED = sorted({*GRAFANA_READS.values(), *PORTAL_FRAGMENT["identity"]["headers"]}, key=str.lower)


def ldif_value(attribute: str, value: str) -> str:
    """An LDIF line; base64 (`::`) so that CR and LF arrive in the directory as they are."""
    return f"{attribute}:: {base64.b64encode(value.encode()).decode()}\n"


@pytest.fixture(scope="module")
def directory(slapd: SlapdServer) -> SlapdServer:
    """The session's slapd plus this module's own users: an Editor, and one whose name and department hold CR/LF."""
    values = {EDITOR: ("Erin Editor", "Design"), INJECTOR: (INJECTED_NAME, INJECTED_DEPARTMENT)}
    for uid, (name, department) in values.items():
        dn = slapd.add_user(uid, OWN_PASSWORDS[uid])
        slapd.ldapmodify_ldif(f"dn: {dn}\nchangetype: modify\nadd: displayName\n{ldif_value('displayName', name)}-\n"
                              f"add: departmentNumber\n{ldif_value('departmentNumber', department)}")
    members = "".join(f"member: {slapd.user_dn(uid)}\n" for uid in values)
    slapd.ldapadd_ldif(f"dn: cn={EDITORS_GROUP},{slapd.GROUPS_DN}\nobjectClass: groupOfNames\ncn: {EDITORS_GROUP}\n"
                       f"{members}")
    return slapd


def portal_overrides(slapd: SlapdServer, proxy_port: int) -> dict:
    """examples/grafana/authportal.yml on the test directory, the portal reached through the proxy."""
    ldap = {**slapd.ldap_settings(start_tls=True, tls={"ca_file": str(slapd.ca_file)}),
            **PORTAL_FRAGMENT["authentication"]["ldap"]}
    return {"server": {"portal_url": f"http://auth.example.test:{proxy_port}"}, "session": {"domain": "example.test"},
            "identity": PORTAL_FRAGMENT["identity"],
            "authentication": {**PORTAL_FRAGMENT["authentication"], "ldap": ldap},
            "access_control": PORTAL_FRAGMENT["access_control"]}


def example_proxy(kind: str, port: int, portal: str, grafana: str) -> Nginx | HAProxyExample | Caddy:
    """The proxy's file from examples/grafana/ with its placeholders filled (not started)."""
    if kind == "nginx":
        return Nginx.from_file(EXAMPLE / "nginx.conf", LISTEN=f"127.0.0.1:{port}", PORTAL=portal, GRAFANA=grafana)
    if kind == "haproxy":  # with examples/haproxy/auth-request.lua beside it, as the README says
        return HAProxyExample.from_file(EXAMPLE / "haproxy.cfg", LISTEN=f"127.0.0.1:{port}", PORTAL=portal,
                                        RELAY=f"127.0.0.1:{free_port()}", GRAFANA=grafana)
    return Caddy.from_file(EXAMPLE / "Caddyfile", BIND="127.0.0.1", PORT=port, PORTAL=portal, GRAFANA=grafana)


@dataclass
class GrafanaStack:
    proxy: str
    port: int
    portal: ServedPortal

    @property
    def portal_base(self) -> str:
        return f"http://auth.example.test:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"http://grafana.example.test:{self.port}{path}"


@pytest.fixture(scope="module", params=PROXIES)
def stack(request, tmp_path_factory, upstream, directory) -> Iterator[GrafanaStack]:
    port = free_port()
    setup = PortalSetup(tmp_path_factory.mktemp(f"grafana-{request.param}"),
                        overrides=portal_overrides(directory, port))
    with ExitStack() as started:
        portal = started.enter_context(ServedPortal(setup))
        started.enter_context(example_proxy(request.param, port, f"127.0.0.1:{setup.port}",
                                            f"127.0.0.1:{upstream.port}"))
        yield GrafanaStack(request.param, port, portal)


def sign_in(stack: GrafanaStack, user: str) -> requests.Session:
    """A browser's way in: Grafana's URL, the login page, back to Grafana."""
    http = requests.Session()
    http.headers["Accept"] = BROWSER_ACCEPT  # /api/forward-auth (HAProxy, Caddy) tells a browser from a script by it
    target = stack.url("/d/home")
    first = http.get(target, allow_redirects=False, timeout=10)
    assert first.status_code == 302 and first.headers["Location"].startswith(stack.portal_base + "/?rd="), \
        (first.status_code, first.headers)
    signed_in = login(http, stack.portal_base, user, PASSWORDS[user], rd=target)
    assert signed_in.status_code == 302 and signed_in.headers["Location"] == target, \
        (signed_in.status_code, signed_in.text[:300])
    return http


def reaching_grafana(stack: GrafanaStack, http: requests.Session, upstream, **headers: str) -> Message:
    """The headers of one request as they reached the app behind the proxy."""
    path = f"/d/home?via={stack.proxy}&n={uuid4().hex}"
    answer = http.get(stack.url(path), headers=headers, allow_redirects=False, timeout=10)
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    [seen] = [request for request in list(upstream.requests) if request.path == path]
    return seen.headers


def identity(seen: Message) -> dict[str, list[str] | None]:
    """Every header the example passes on, as the app got it: all its values (None: absent)."""
    return {name: seen.get_all(name) for name in PASSED}


def expected(login: str, email: str, name: str | None, role: str | None, department: str | None) -> dict:
    fields = {"Login": login, "Email": email, "Name": name, "Role": role}
    wanted = {GRAFANA_READS[field]: None if value is None else [value] for field, value in fields.items()}
    return {**wanted, DEPARTMENT_HEADER: None if department is None else [department]}


@pytest.mark.parametrize("user, role", [("alice", "Admin"), ("bob", "Viewer"), (EDITOR, "Editor"), ("carol", None)])
def test_grafana_gets_the_user_the_role_by_group_and_the_directory_attribute(stack, upstream, user, role):
    """alice is in admins and monitoring: the first mapped group wins. carol is in no group: no role header
    at all (Grafana then keeps to auto_assign_org_role), and no department in the directory: no header either."""
    http = sign_in(stack, user)
    name = "Erin Editor" if user == EDITOR else SlapdServer.USERS[user][1]
    email = f"{user}@example.com"
    department = {EDITOR: "Design", **SlapdServer.DEPARTMENTS}.get(user)
    assert identity(reaching_grafana(stack, http, upstream)) == expected(user, email, name, role, department)


def test_client_sent_identity_headers_never_reach_grafana(stack, upstream):
    forged = {"X-WEBAUTH-USER": "alice", "X-WEBAUTH-ROLE": "Admin", "X-WEBAUTH-EMAIL": "alice@example.com",
              "X-WEBAUTH-NAME": "Alice", DEPARTMENT_HEADER: "Platform",
              "X_WEBAUTH_USER": "alice", "X_WEBAUTH_ROLE": "Admin", "x-webauth_role": "Admin"}
    carol = sign_in(stack, "carol")
    seen = reaching_grafana(stack, carol, upstream, **forged)
    assert identity(seen) == expected("carol", "carol@example.com", "Carol Danvers", None, None)
    assert [name for name in seen.keys() if "_" in name] == []
    # without a session the forged headers get nobody in
    path = f"/d/home?via={stack.proxy}&anonymous={uuid4().hex}"
    anonymous = requests.get(stack.url(path), headers={**forged, "Accept": BROWSER_ACCEPT}, allow_redirects=False,
                             timeout=10)
    assert anonymous.status_code == 302
    assert [request for request in list(upstream.requests) if request.path == path] == []


def test_a_directory_value_with_a_line_break_is_not_passed_on(stack, upstream):
    """displayName and departmentNumber hold "x\\r\\nX-WEBAUTH-...: ...": those headers are left out, nothing is
    injected, and the rest of the identity arrives as usual."""
    http = sign_in(stack, INJECTOR)
    seen = reaching_grafana(stack, http, upstream)
    assert identity(seen) == expected(INJECTOR, f"{INJECTOR}@example.com", None, "Editor", None)
    assert all("\r" not in value and "\n" not in value and "alice" not in value for value in seen.values())
    logs = stack.portal.logs()
    for header in (GRAFANA_READS["Name"], DEPARTMENT_HEADER):
        assert f"header {header} not sent for {INJECTOR}: its value holds a line break or NUL" in logs
