"""`groups_from: ldap` against a real directory (slapd) and a real OpenID Provider: the provider says who signs
in, the directory what groups they have; a provider user the directory does not know is refused."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.oidc_provider import OpenIdProvider
from tests.support.in_process import PORTAL, PROM, ProxiedClient, page, session_cookie, verify
from tests.support.oidc import corp, provider_clients, sign_in_through_provider

ADMIN_API = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"


@pytest.fixture(scope="module")
def provider() -> Iterator[OpenIdProvider]:
    # The provider claims both are admins; the directory knows bob in `monitoring` only, and mallory not at all.
    users = {"bob": {"groups": ["admins"], "name": "Bob"}, "mallory": {"groups": ["admins"], "name": "Mallory"}}
    with OpenIdProvider(users, provider_clients([PORTAL])) as started:
        yield started


@pytest.fixture
def browser(app_with, provider, slapd) -> ProxiedClient:
    return ProxiedClient(app_with(server={"portal_url": PORTAL}, authentication={
        "backend": "ldap", "ldap": slapd.ldap_settings(),
        "oidc": {"providers": [corp(provider, groups_from="ldap")]}}))


def test_the_directory_decides_the_groups_of_a_provider_sign_in(browser):
    assert sign_in_through_provider(browser, "bob", rd=PROM).status_code == 302
    assert verify(browser).status_code == 200            # monitoring, from the directory
    assert verify(browser).headers["Remote-Groups"] == "monitoring"
    assert verify(browser, ADMIN_API).status_code == 403  # the provider's "admins" counts for nothing


def test_a_provider_user_the_directory_does_not_know_is_refused(browser):
    refused = sign_in_through_provider(browser, "mallory")
    assert refused.status_code == 403
    assert "mallory is not in the directory" in refused.get_data(as_text=True)
    assert session_cookie(browser) is None and verify(browser).status_code == 401
    assert page(browser).status_code == 200
