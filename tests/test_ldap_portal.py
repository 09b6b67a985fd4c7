"""The portal with directory backends: the nginx flow on slapd, AD nested groups and group refresh, outages.

The module's stack (portal + nginx on the session's slapd) is shared: a test that
bans a user, stops a directory or changes its entries runs on its own.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.servers import wait_until
from tests.servers.samba_ad import SambaAD
from tests.servers.slapd import SlapdServer
from tests.support.portal import PortalSetup, ServedPortal, csrf_from, login
from tests.support.stacks import NginxStack, nginx_stack


def slapd_backend(slapd: SlapdServer) -> dict:
    return {"backend": "ldap", "ldap": slapd.ldap_settings(start_tls=True, tls={"ca_file": str(slapd.ca_file)})}


@contextmanager
def slapd_stack(directory: Path, upstream, slapd: SlapdServer) -> Iterator[NginxStack]:
    backend = f"127.0.0.1:{upstream.port}"
    with nginx_stack("seed-layout", directory, {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend},
                     portal_overrides={"authentication": slapd_backend(slapd)}) as started:
        yield started


@pytest.fixture(scope="module")
def ldap_stack(tmp_path_factory, upstream, slapd) -> Iterator[NginxStack]:
    with slapd_stack(tmp_path_factory.mktemp("ldap-nginx"), upstream, slapd) as started:
        yield started


def test_nginx_flow_with_users_from_slapd(ldap_stack, upstream):
    http = requests.Session()
    target = ldap_stack.url("app.example.test", "/prometheus/ldap-flow")
    first = http.get(target, allow_redirects=False)
    assert first.status_code == 302 and first.headers["Location"].startswith(ldap_stack.portal_base + "/?rd=")
    signed_in = login(http, ldap_stack.portal_base, "bob", SlapdServer.PASSWORDS["bob"], rd=target)
    assert signed_in.status_code == 302 and signed_in.headers["Location"] == target
    page = http.get(target)
    assert page.status_code == 200
    seen = page.json()["headers"]
    assert (seen["Remote-User"], seen["Remote-Groups"], seen["Remote-Email"]) == \
        ("bob", "monitoring", "bob@example.com")
    carol = requests.Session()
    login(carol, ldap_stack.portal_base, "carol", SlapdServer.PASSWORDS["carol"])
    assert carol.get(target, allow_redirects=False).status_code == 403


@pytest.mark.parametrize("username", ["*", "bob)(|(uid=*", "b*", "\\2a"])
def test_filter_injection_through_the_login_form_is_refused(ldap_stack, username):
    http = requests.Session()
    page = http.get(ldap_stack.portal_base + "/")

    refused = http.post(ldap_stack.portal_base + "/login", allow_redirects=False, data={
        "username": username, "password": SlapdServer.PASSWORDS["bob"], "csrf_token": csrf_from(page.text)})
    assert refused.status_code == 401 and "Incorrect username or password." in refused.text


def test_guessing_through_spelling_variants_is_banned_like_guessing_one_name(tmp_path, upstream, slapd):
    """slapd binds ` JSMITH ` as jsmith (case and outer spaces are insignificant): the variants share one count.

    On a portal of this test's own: the ban, and the failures counted against 127.0.0.1, stay with it.
    """
    with slapd_stack(tmp_path, upstream, slapd) as stack:
        guess_until_banned(stack, upstream)


def guess_until_banned(ldap_stack: NginxStack, upstream) -> None:
    url = ldap_stack.url("app.example.test", "/prometheus/api/v1/query?query=up&who=jsmith-variants")
    for variant in ("jsmith ", " jsmith", "JSMITH", " JSmith ", "jsmith  "):  # max_retries: 5
        assert requests.get(url, auth=(variant, "wrong"), allow_redirects=False, timeout=10).status_code == 401
    refused = requests.get(url, auth=("jsmith", SlapdServer.PASSWORDS["jsmith"]), allow_redirects=False, timeout=10)
    assert refused.status_code == 401
    assert [seen for seen in upstream.requests if "jsmith-variants" in seen.path] == []


def test_directory_down_refuses_logins_but_not_existing_sessions(tmp_path, own_slapd):
    setup = PortalSetup(tmp_path, overrides={"authentication": slapd_backend(own_slapd)})
    with ServedPortal(setup):
        portal = f"http://auth.example.test:{setup.port}"
        http = requests.Session()
        assert login(http, portal, "bob", SlapdServer.PASSWORDS["bob"]).status_code == 302
        verify = {"X-Original-Method": "GET", "X-Original-URL": "http://app.example.test/prometheus/"}
        own_slapd.stop()
        try:
            # the verify path never touches the directory: the session keeps working
            assert http.get(portal + "/api/verify", headers=verify).status_code == 200
            refused = login(requests.Session(), portal, "alice", SlapdServer.PASSWORDS["alice"])
            assert refused.status_code == 503 and "unavailable" in refused.text
            wait_until(lambda: requests.get(portal + "/api/health").status_code == 503, timeout=30,
                       what="health red while slapd is down")
            assert requests.get(portal + "/api/health").json()["checks"]["ldap"]["status"] == "down"
        finally:
            own_slapd.start()
        wait_until(lambda: requests.get(portal + "/api/health").status_code == 200, timeout=30,
                   what="health green after slapd restart")
        assert login(requests.Session(), portal, "alice", SlapdServer.PASSWORDS["alice"]).status_code == 302


def ad_backend(samba: SambaAD) -> dict:
    return {"backend": "ldap", "ldap": samba.ldap_settings(refresh_interval="1s")}


def test_active_directory_nested_groups_and_refresh(tmp_path, own_samba_ad):
    samba_ad = own_samba_ad  # a DC of this test's own: its groups, users and passwords change
    rules = [{"domain": "prometheus.example.test", "subject": ["group:prom-admins"], "policy": "one_factor"}]
    setup = PortalSetup(tmp_path, overrides={"authentication": ad_backend(samba_ad),
                                             "access_control": {"rules": rules}})
    with ServedPortal(setup):
        portal = f"http://auth.example.test:{setup.port}"
        verify = {"X-Original-Method": "GET", "X-Original-URL": "http://prometheus.example.test/graph"}
        dave = requests.Session()
        assert login(dave, portal, "dave", SambaAD.PASSWORDS["dave"]).status_code == 302
        allowed = dave.get(portal + "/api/verify", headers=verify)
        assert allowed.status_code == 200 and "prom-admins" in allowed.headers["Remote-Groups"].split(",")
        by_upn = requests.Session()
        assert login(by_upn, portal, f"dave@{SambaAD.UPN_SUFFIX}", SambaAD.PASSWORDS["dave"]).status_code == 302
        assert by_upn.get(portal + "/api/verify", headers=verify).headers["Remote-User"] == "dave"
        disabled = login(requests.Session(), portal, "frank", SambaAD.PASSWORDS["frank"])
        assert disabled.status_code == 401
        erin = requests.Session()
        login(erin, portal, "erin", SambaAD.PASSWORDS["erin"])
        assert erin.get(portal + "/api/verify", headers=verify).status_code == 403
        # dave leaves ops (and so prom-admins): within refresh_interval his live session loses access
        samba_ad.samba_tool("group", "removemembers", "ops", "dave")
        try:
            wait_until(lambda: dave.get(portal + "/api/verify", headers=verify).status_code == 403,
                       timeout=30, what="group removal applied to the live session")
        finally:
            samba_ad.samba_tool("group", "addmembers", "ops", "dave")
        # A password change in AD (pwdLastSet moves) ends the live session within refresh_interval: 403 (signed
        # in, not in prom-admins) becomes 401 (signed out).
        samba_ad.samba_tool("user", "create", "pat", "Pat-Pass-1x")
        try:
            pat = requests.Session()
            assert login(pat, portal, "pat", "Pat-Pass-1x").status_code == 302
            assert pat.get(portal + "/api/verify", headers=verify).status_code == 403
            samba_ad.samba_tool("user", "setpassword", "pat", "--newpassword=Pat-New-Pass-9")
            wait_until(lambda: pat.get(portal + "/api/verify", headers=verify).status_code == 401,
                       timeout=30, what="a password change in AD ending the live session")
            assert login(requests.Session(), portal, "pat", "Pat-New-Pass-9").status_code == 302
        finally:
            samba_ad.samba_tool("user", "delete", "pat")
