"""What the OpenID Connect tests share: the provider's people and clients, the portal's provider settings, and
signing in through the provider from an in-process client.

The provider's users are not in the portal's users file: their names and groups come only from the provider.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import requests
from werkzeug.test import Client, TestResponse

from tests.servers.oidc_provider import OpenIdProvider, sign_in
from tests.support.in_process import PORTAL, csrf

#: name -> groups at the provider
PROVIDER_USERS = {"olivia": ["admins", "monitoring"], "oscar": ["monitoring"], "otto": []}
CLIENT_SECRET = "op-client-Secret-7c1e"
SECOND_SECRET = "op-second-Secret-93ab"


def provider_clients(portals: Sequence[str]) -> list[dict[str, Any]]:
    """Two clients at the provider ("portal": Basic auth, "second": secret in the form), each allowing the
    callbacks and post-logout return of every portal URL in `portals`."""

    def client(client_id: str, secret: str, provider: str, method: str) -> dict[str, Any]:
        return {"client_id": client_id, "client_secret": secret, "token_endpoint_auth_method": method,
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "redirect_uris": [f"{portal}/oidc/callback/{provider}" for portal in portals],
                "post_logout_redirect_uris": [f"{portal}/" for portal in portals]}

    return [client("portal", CLIENT_SECRET, "corp", "client_secret_basic"),
            client("second", SECOND_SECRET, "partners", "client_secret_post")]


@contextmanager
def running_provider(portals: Sequence[str]) -> Iterator[OpenIdProvider]:
    users = {name: {"groups": groups, "name": name.title()} for name, groups in PROVIDER_USERS.items()}
    with OpenIdProvider(users, provider_clients(portals)) as started:
        yield started


def corp(provider: OpenIdProvider, **settings: Any) -> dict[str, Any]:
    """The portal's `authentication.oidc.providers[]` entry for the provider's "portal" client."""
    return {"name": "corp", "display_name": "Corp SSO", "issuer": provider.issuer, "client_id": "portal",
            "client_secret": CLIENT_SECRET, **settings}


def partners(provider: OpenIdProvider, **settings: Any) -> dict[str, Any]:
    return {"name": "partners", "display_name": "Partners", "issuer": provider.issuer, "client_id": "second",
            "client_secret": SECOND_SECRET, "token_endpoint_auth_method": "client_secret_post", **settings}


def start(client: Client, provider: str = "corp", rd: str | None = None) -> TestResponse:
    """Press "Sign in with …" on the login page (with `rd` when given)."""
    form = {"csrf_token": csrf(client, f"/?rd={rd}" if rd else "/")}
    if rd:
        form["rd"] = rd
    return client.post(f"/oidc/start/{provider}", base_url=PORTAL, data=form)


def callback_path(client: Client, user: str, provider: str = "corp", rd: str | None = None) -> str:
    """Start a sign-in and sign in at the provider as `user`: the callback path + query, not yet sent."""
    started = start(client, provider, rd)
    assert started.status_code == 302, started.get_data(as_text=True)
    back = sign_in(requests.Session(), started.headers["Location"], user)
    parts = urlsplit(back.headers["Location"])
    return f"{parts.path}?{parts.query}"


def sign_in_through_provider(client: Client, user: str, provider: str = "corp",
                             rd: str | None = None) -> TestResponse:
    """The whole round trip; returns the portal's answer to the callback."""
    return client.get(callback_path(client, user, provider, rd), base_url=PORTAL)


def readme_block(section: str) -> str:
    """The one yaml block of README.md's section `section`, as a user copies it."""
    from tests.servers.process import REPO

    text = (REPO / "README.md").read_text()
    found = re.search(rf"^## {re.escape(section)}\n.*?^```yaml\n(.*?)^```$", text, re.M | re.S)
    assert found, f"README.md has no yaml block under '## {section}'"
    return found.group(1)
