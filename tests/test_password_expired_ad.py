"""An Active Directory password that must be changed at next logon (pwdLastSet=0), changed right at the sign-in
prompt in real Chromium against real Samba AD (LDAPS): the directory's own policy refusal is shown in words,
then the new password signs the user in."""
from __future__ import annotations

import secrets

import requests

from tests.servers.browser import ARTIFACTS
from tests.servers.samba_ad import SambaAD
from tests.support.browsing import DESKTOP, PHONE
from tests.support.portal import PortalSetup, ServedPortal, login

FIRST = "First-Pass!11"


def test_a_must_change_password_is_changed_at_sign_in_then_signs_in(tmp_path, browser, samba_ad: SambaAD):
    name = f"exp{secrets.token_hex(3)}"
    samba_ad.add_user(name, FIRST, must_change=True)
    setup = PortalSetup(tmp_path, overrides={
        "authentication": {"backend": "ldap", "ldap": samba_ad.ldap_settings()}, "password_change": {"enable": True},
        "access_control": {"default_policy": "one_factor"}})
    with ServedPortal(setup):
        portal = f"http://auth.example.test:{setup.port}"
        context = browser.new_context(viewport=DESKTOP)
        try:
            page = context.new_page()
            page.goto(portal + "/")
            page.fill("#username", name)
            page.fill("#password", FIRST)
            page.click("#main form button[type=submit]")
            page.wait_for_url(portal + "/password/expired")
            assert page.locator("h1").inner_text() == "Choose a new password"
            # long enough for the portal, but AD's complexity wants three kinds of characters: AD refuses it
            for new in ("seven quiet ferries cross the bay", "Seven quiet ferries cross the bay 9"):
                page.fill("#new_password", new)
                page.fill("#confirm_password", new)
                page.click("#main form button[type=submit]")
                page.wait_for_load_state()
                if new.islower():
                    assert "does not meet the password policy" in page.locator(".alert").inner_text()
                    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                        page.set_viewport_size(viewport)
                        page.screenshot(path=str(ARTIFACTS / f"password-expired-{width}.png"), full_page=True)
                    page.set_viewport_size(DESKTOP)
            page.wait_for_url(portal + "/")
            assert page.locator("h1").inner_text() == "Your account"
            assert not [c for c in context.cookies() if "expired" in c["name"]], "the held password is gone"
        finally:
            context.close()
        assert login(requests.Session(), portal, name, FIRST).status_code == 401
        assert login(requests.Session(), portal, name, "Seven quiet ferries cross the bay 9").status_code == 302
    audit = (setup.directory / "audit.log").read_text()
    assert '"via": "expired at sign-in"' in audit and FIRST not in audit
