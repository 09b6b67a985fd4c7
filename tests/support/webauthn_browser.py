"""A virtual security key in Chromium (the DevTools WebAuthn domain), for tests of the portal's WebAuthn pages.

    cdp, authenticator = add_virtual_authenticator(context, page)
    ... the page calls navigator.credentials.create() / .get(): the virtual key answers at once ...
    [credential] = credentials(cdp, authenticator)

The page must be a secure context: https on a name Chromium trusts (`https_stack`
and `https_browser` in tests/conftest.py). Beware: while the virtual
authenticator environment is on, Chromium skips its check that the page has no
certificate error (seen with Chromium 156: create() succeeds on a page whose
certificate it does not trust). Tests with a virtual key therefore do not prove
that TLS is right; tests/test_https_browser.py proves that without one, and
`visible_security_state` shows what Chromium thinks of the page's certificate.
"""
from __future__ import annotations

import time
from typing import Any

from playwright.sync_api import BrowserContext, CDPSession, Page


def add_virtual_authenticator(context: BrowserContext, page: Page, *, resident_key: bool = True,
                              user_verified: bool = True, user_verification: bool = True, transport: str = "usb",
                              protocol: str = "ctap2") -> tuple[CDPSession, str]:
    """Plug a virtual authenticator into `page`'s browser tab; returns (the CDP session, its authenticatorId).

    It answers every request without a touch (automaticPresenceSimulation). `resident_key`: it can store
    discoverable credentials (passkeys); `user_verification`: it has a PIN or biometric at all, and
    `user_verified`: that check succeeds. `transport`: "usb", "nfc", "ble", "internal" (a platform
    authenticator, like Touch ID). It stays until the context closes, across navigations.
    """
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": protocol, "transport": transport, "hasResidentKey": resident_key,
        "hasUserVerification": user_verification, "isUserVerified": user_verified,
        "automaticPresenceSimulation": True}})
    return cdp, added["authenticatorId"]


def credentials(cdp: CDPSession, authenticator_id: str) -> list[dict[str, Any]]:
    """The credentials the virtual authenticator holds (WebAuthn.getCredentials): credentialId (base64), rpId,
    userHandle, signCount, isResidentCredential, privateKey (base64 PKCS#8)."""
    return cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})["credentials"]


def remove_virtual_authenticator(cdp: CDPSession, authenticator_id: str) -> None:
    """Unplug it: the page's next request finds no authenticator (and waits for one, until its timeout)."""
    cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": authenticator_id})


def visible_security_state(context: BrowserContext, page: Page, timeout: float = 10.0) -> dict[str, Any]:
    """Chromium's verdict on the page as the address bar shows it (CDP Security.visibleSecurityStateChanged):
    `securityState` "secure" for a trusted certificate, "insecure-broken" with a certificate error, then named
    in `certificateSecurityState.certificateNetworkError` (e.g. net::ERR_CERT_AUTHORITY_INVALID)."""
    cdp = context.new_cdp_session(page)
    seen: list[dict[str, Any]] = []
    cdp.on("Security.visibleSecurityStateChanged", lambda event: seen.append(event["visibleSecurityState"]))
    cdp.send("Security.enable")  # announces the current state at once
    deadline = time.monotonic() + timeout
    while not seen and time.monotonic() < deadline:
        page.wait_for_timeout(20)  # Playwright delivers CDP events while it waits
    cdp.detach()
    assert seen, f"Chromium announced no security state for {page.url} within {timeout}s"
    return seen[-1]
