"""A real OpenID Provider on loopback: panva's `oidc-provider` (Node.js), installed by scripts/install-test-deps.sh.

`OpenIdProvider(users, clients)` runs tests/servers/oidc_provider.mjs (copied beside the pinned package's
node_modules, as ESM needs) with its own RSA keys. The tests change it while it runs: `set_groups`,
`remove_user`, `tamper` (the next ID token with a broken signature or another audience, signed by the
provider's own key) and `rotate_key` (a restart with a new key first in its JWKS, as a provider rotates).
`sign_in(http, url, user)` walks its development login and consent forms without a browser.
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from joserfc.jwk import RSAKey

from . import IN_CI, free_port
from .process import REPO, ServerProcess

VERSION = "9.13.3"
PACKAGE_DIR = REPO / "test-artifacts" / "cache" / f"oidc-provider-{VERSION}"
SCRIPT = Path(__file__).with_name("oidc_provider.mjs")
_FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


def require_package() -> None:
    if not (PACKAGE_DIR / "node_modules" / "oidc-provider").is_dir():
        message = f"oidc-provider {VERSION} is not installed in {PACKAGE_DIR} (scripts/install-test-deps.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _new_key() -> dict[str, Any]:
    key = RSAKey.generate_key(2048, private=True)
    return {**key.as_dict(private=True), "kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"}


class OpenIdProvider(ServerProcess):
    binary_name = "node"

    def __init__(self, users: dict[str, dict[str, Any]], clients: list[dict[str, Any]]) -> None:
        require_package()
        super().__init__()
        self.port = free_port()
        self.users = users
        self.clients = clients
        self.keys = [_new_key()]

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def kid(self) -> str:
        """The id of the key that signs now."""
        return str(self.keys[0]["kid"])

    def prepare(self) -> None:
        shutil.copy(SCRIPT, PACKAGE_DIR / SCRIPT.name)
        (self.dir / "config.json").write_text(json.dumps({
            "port": self.port, "clients": self.clients, "users": self.users, "jwks": {"keys": self.keys}}))

    def command(self) -> list[str]:
        return [self.binary, str(PACKAGE_DIR / SCRIPT.name), str(self.dir / "config.json")]

    def _control(self, path: str, document: dict[str, Any]) -> None:
        requests.post(f"{self.issuer}/control/{path}", json=document, timeout=5).raise_for_status()

    def set_groups(self, user: str, groups: list[str]) -> None:
        self.users[user]["groups"] = groups
        self._control("user", {"user": user, "groups": groups})

    def remove_user(self, user: str) -> None:
        self._control("user", {"user": user, "remove": True})

    def tamper(self, mode: str | None) -> None:
        """The next token response's ID token: "signature" (a flipped signature byte) or "aud" (another client)."""
        self._control("tamper", {"mode": mode})

    def rotate_key(self) -> None:
        """Restart with a new signing key first in the JWKS (the old one kept after it). Sessions at the provider
        are lost, as its store is in memory."""
        self.keys.insert(0, _new_key())
        self.restart()


def sign_in(http: requests.Session, url: str, user: str, password: str = "secret") -> requests.Response:
    """Follow `url` (the portal's redirect to the provider) through the provider's login and consent forms, as a
    browser would without JavaScript; returns the answer to the first redirect that leaves the provider (the
    portal's callback, not followed)."""
    response = http.get(url, allow_redirects=False, timeout=10)
    for _ in range(12):
        location = response.headers.get("Location")
        if location is not None:
            location = urljoin(response.url, location)
            if "/oidc/callback/" in location:
                return response
            response = http.get(location, allow_redirects=False, timeout=10)
            continue
        action = _FORM_ACTION.search(response.text)
        assert action, f"no form at {response.url}: {response.text[:300]}"
        form = {"prompt": "consent"} if 'value="consent"' in response.text else {
            "prompt": "login", "login": user, "password": password}
        response = http.post(urljoin(response.url, unescape(action.group(1))), data=form, allow_redirects=False,
                             timeout=10)
    raise AssertionError("the provider never sent the browser back")
