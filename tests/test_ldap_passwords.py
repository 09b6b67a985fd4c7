"""Password change, reset and the must-change-at-sign-in answer of the LDAP provider, against real directories:
OpenLDAP slapd (Password Modify; with the ppolicy overlay: expired, changed-after-reset, policy refusals) and a
Samba AD DC over LDAPS and StartTLS (unicodePwd delete + add and replace, pwdLastSet=0, AD's policy refusal).

The session's servers are shared: every test here changes only users it added itself (unique names).
"""
from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from authportal.authentication import BackendUnavailable, PasswordChangeRequired, PasswordRejected
from authportal.authentication.ldap import LdapUserProvider
from authportal.authentication.ldap.activedirectory import POLICY_REFUSAL
from authportal.authentication.ldap.provider import NO_SUCH_ACCOUNT, PROTECTED_ACCOUNT
from authportal.config import LdapConfig, parse_config
from tests.servers import free_port
from tests.servers.samba_ad import SambaAD
from tests.servers.slapd import SlapdServer

LOGGER = "authportal.ldap"
_numbers = itertools.count(1)


def unique(prefix: str) -> str:
    """A user name no other test uses (sAMAccountName allows 20 characters)."""
    return f"{prefix}{next(_numbers)}"


def ldap_provider(server: SlapdServer | SambaAD, **overrides) -> LdapUserProvider:
    return LdapUserProvider(LdapConfig.model_validate(server.ldap_settings(**overrides)))


@pytest.fixture
def provider(slapd) -> Iterator[LdapUserProvider]:
    p = ldap_provider(slapd)
    yield p
    p.close()


def passmod_binds(server: SlapdServer, dn: str) -> list[tuple[str, str]]:
    """For each Password Modify of `dn` in slapd's log: (the DN its connection was bound as, "old new" or "new")."""
    text = server.log_text()
    bound = {conn: who for conn, who in re.findall(r'conn=(\d+) op=\d+ BIND dn="([^"]*)" mech=', text)}
    return [(bound.get(conn, ""), fields.strip())
            for conn, target, fields in re.findall(r'conn=(\d+) op=\d+ PASSMOD id="([^"]*)"((?: old)?(?: new)?)', text)
            if target == dn]


# --------------------------------------------------------------------------- OpenLDAP: Password Modify


def test_slapd_change_as_the_user(provider, slapd):
    uid = unique("change")
    dn = slapd.add_user(uid, "first-Pass-11")
    provider.change_password(uid, "first-Pass-11", "second-Pass-22")
    assert provider.check_password(uid, "second-Pass-22").username == uid
    assert provider.check_password(uid, "first-Pass-11") is None
    # RFC 3062 with the old password, on a connection bound as the user (not the service account)
    assert passmod_binds(slapd, dn) == [(dn, "old new")]


def test_slapd_wrong_current_password_is_refused(provider, slapd):
    uid = unique("wrongold")
    dn = slapd.add_user(uid, "first-Pass-11")
    with pytest.raises(PasswordRejected) as caught:
        provider.change_password(uid, "not-the-Pass-11", "second-Pass-22")
    assert str(caught.value) == "The current password is wrong."
    assert provider.check_password(uid, "first-Pass-11") is not None  # unchanged
    assert passmod_binds(slapd, dn) == []  # the bind failed: nothing was sent


@pytest.mark.parametrize("username", ["nobody", "*", "change*", "alice)(|(uid=*", ""])
def test_slapd_change_for_nobody_is_the_wrong_password_answer(provider, username):
    with pytest.raises(PasswordRejected, match="^The current password is wrong.$"):
        provider.change_password(username, "whatever-Pass-1", "new-Pass-123")


def test_slapd_reset_by_the_service_account(provider, slapd):
    uid = unique("reset")
    dn = slapd.add_user(uid, "first-Pass-11")
    provider.set_password(uid, "reset-Pass-33")
    assert provider.check_password(uid, "reset-Pass-33") is not None
    assert provider.check_password(uid, "first-Pass-11") is None
    assert passmod_binds(slapd, dn) == [(slapd.SERVICE_DN, "new")]  # no old password: the service account's right


@pytest.mark.parametrize("username", ["nobody", "reset*", "*", "ALICE)(uid=*"])
def test_slapd_reset_of_nobody(provider, username):
    with pytest.raises(PasswordRejected) as caught:
        provider.set_password(username, "reset-Pass-33")
    assert str(caught.value) == NO_SUCH_ACCOUNT


@pytest.mark.parametrize("new", ["", "x" * 2000, "nul\x00byte-Pass"])
def test_unacceptable_new_passwords_never_reach_the_directory(provider, slapd, new):
    with pytest.raises(PasswordRejected, match="empty, too long"):
        provider.change_password("alice", slapd.PASSWORDS["alice"], new)
    with pytest.raises(PasswordRejected, match="empty, too long"):
        provider.set_password("alice", new)
    assert passmod_binds(slapd, slapd.user_dn("alice")) == []


def test_slapd_down_is_a_backend_failure(slapd):
    p = ldap_provider(slapd, url=f"ldap://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendUnavailable):
            p.change_password("alice", slapd.PASSWORDS["alice"], "new-Pass-123")
        with pytest.raises(BackendUnavailable):
            p.set_password("alice", "new-Pass-123")
    finally:
        p.close()


@pytest.mark.parametrize(("email", "expected"), [
    ("alice@example.com", "alice"),
    ("ALICE@EXAMPLE.COM", "alice"),
    ("nobody@example.com", None),
    ("*@example.com", None),  # escaped: matches only a literal "*"
    ("*", None),
    ("alice@example.com)(uid=*", None),
    ("", None),
])
def test_slapd_username_for_email(provider, email, expected):
    assert provider.username_for_email(email) == expected


# --------------------------------------------------------------------------- OpenLDAP with ppolicy


@pytest.fixture(scope="module")
def ppolicy_slapd(tmp_path_factory) -> Iterator[SlapdServer]:
    server = SlapdServer(tmp_path_factory.mktemp("slapd-ppolicy"), ppolicy=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def ppolicy_provider(ppolicy_slapd) -> Iterator[LdapUserProvider]:
    p = ldap_provider(ppolicy_slapd)
    yield p
    p.close()


def test_ppolicy_expired_password_must_be_changed_at_sign_in(ppolicy_provider, ppolicy_slapd):
    uid = unique("expired")
    ppolicy_slapd.add_user(uid, "first-Pass-11", "pwdChangedTime: 20000101000000Z")  # older than pwdMaxAge
    with pytest.raises(PasswordChangeRequired) as caught:
        ppolicy_provider.check_password(uid.upper(), "first-Pass-11")
    assert (caught.value.username, caught.value.reason) == (uid, "password expired")
    assert ppolicy_provider.check_password(uid, "wrong-Pass-11") is None  # slapd says "expired" only when right
    # The user cannot bind: the service account sets the new password (the bind's answer proved the old one).
    ppolicy_provider.change_password(uid, "first-Pass-11", "second-Pass-22")
    assert ppolicy_provider.check_password(uid, "second-Pass-22").username == uid


def test_ppolicy_expired_password_with_a_wrong_current_password(ppolicy_provider, ppolicy_slapd):
    uid = unique("expwrong")
    ppolicy_slapd.add_user(uid, "first-Pass-11", "pwdChangedTime: 20000101000000Z")
    with pytest.raises(PasswordRejected, match="^The current password is wrong.$"):
        ppolicy_provider.change_password(uid, "wrong-Pass-11", "second-Pass-22")


def test_ppolicy_change_after_reset_is_required_at_sign_in(ppolicy_provider, ppolicy_slapd):
    uid = unique("pwdreset")
    ppolicy_slapd.add_user(uid, "first-Pass-11", "pwdReset: TRUE")  # as an administrator's reset leaves it
    # slapd accepts the bind (the connection may only change the password): not a sign-in
    with pytest.raises(PasswordChangeRequired) as caught:
        ppolicy_provider.check_password(uid, "first-Pass-11")
    assert (caught.value.username, caught.value.reason) == (uid, "password must be changed after a reset")
    assert ppolicy_provider.check_password(uid, "wrong-Pass-11") is None
    ppolicy_provider.change_password(uid, "first-Pass-11", "second-Pass-22")  # as the user, as slapd allows
    assert ppolicy_provider.check_password(uid, "second-Pass-22") is not None


def test_ppolicy_refusals_in_words(ppolicy_provider, ppolicy_slapd):
    uid = unique("policy")
    ppolicy_slapd.add_user(uid, "first-Pass-11")
    with pytest.raises(PasswordRejected) as short:
        ppolicy_provider.change_password(uid, "first-Pass-11", "short-1")
    assert str(short.value) == "The directory refused the new password: it is too short for the password policy."
    ppolicy_provider.change_password(uid, "first-Pass-11", "second-Pass-22")
    with pytest.raises(PasswordRejected) as reused:
        ppolicy_provider.change_password(uid, "second-Pass-22", "first-Pass-11")
    assert str(reused.value) == "The directory refused the new password: it was used before."
    with pytest.raises(PasswordRejected, match="too short"):
        ppolicy_provider.set_password(uid, "short-2")
    assert ppolicy_provider.check_password(uid, "second-Pass-22") is not None


def test_ppolicy_a_reset_by_the_portal_needs_no_second_change(ppolicy_provider, ppolicy_slapd):
    # pwdMustChange marks resets by the rootdn only (pwdReset): the user chose this password by e-mail link
    uid = unique("linkreset")
    ppolicy_slapd.add_user(uid, "first-Pass-11")
    ppolicy_provider.set_password(uid, "reset-Pass-33")
    assert ppolicy_provider.check_password(uid, "reset-Pass-33").username == uid


# --------------------------------------------------------------------------- Active Directory (Samba)


@pytest.fixture(params=["ldaps", "starttls"])
def ad(request, samba_ad) -> Iterator[LdapUserProvider]:
    overrides = {} if request.param == "ldaps" else {"url": samba_ad.url, "start_tls": True}
    p = ldap_provider(samba_ad, **overrides)
    yield p
    p.close()


@pytest.fixture
def ad_reset(samba_ad) -> Iterator[LdapUserProvider]:
    """As the service account that holds "Reset Password" on the users."""
    p = ldap_provider(samba_ad, user=samba_ad.RESET_DN, password=samba_ad.RESET_PASSWORD)
    yield p
    p.close()


def test_ad_change_password(ad, samba_ad):
    name = unique("adchg")
    samba_ad.add_user(name, "First-Pass!11")
    before = ad.check_password(name, "First-Pass!11").credential_stamp
    # by the read-only service account: AD lets any bound account change a password it proves
    ad.change_password(name, "First-Pass!11", "Second-Pass!22")
    details = ad.check_password(name, "Second-Pass!22")
    assert details.username == name and details.credential_stamp != before  # pwdLastSet moved
    assert ad.check_password(name, "First-Pass!11") is None


def test_ad_wrong_current_password(ad, samba_ad):
    name = unique("adwrong")
    samba_ad.add_user(name, "First-Pass!11")
    with pytest.raises(PasswordRejected) as caught:
        ad.change_password(name, "Not-The-Pass!11", "Second-Pass!22")
    assert str(caught.value) == "The current password is wrong."
    assert ad.check_password(name, "First-Pass!11") is not None


def test_ad_policy_violations_in_words(ad, samba_ad):
    name = unique("adpol")
    samba_ad.add_user(name, "First-Pass!11")
    with pytest.raises(PasswordRejected) as short:
        ad.change_password(name, "First-Pass!11", "Ab1!")  # shorter than the domain's 7
    assert str(short.value) == ("The directory refused the new password: it does not meet the password policy "
                                "(length, complexity, or used before, or changed too recently).")
    with pytest.raises(PasswordRejected) as simple:
        ad.change_password(name, "First-Pass!11", "alllowercase")  # complexity
    assert str(simple.value) == POLICY_REFUSAL
    ad.change_password(name, "First-Pass!11", "Second-Pass!22")
    with pytest.raises(PasswordRejected) as reused:
        ad.change_password(name, "Second-Pass!22", "First-Pass!11")  # history
    assert str(reused.value) == POLICY_REFUSAL
    assert ad.check_password(name, "Second-Pass!22") is not None


def test_ad_must_change_at_next_logon(ad, samba_ad, caplog):
    name = unique("admust")
    samba_ad.add_user(name, "First-Pass!11", must_change=True)  # pwdLastSet=0
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with pytest.raises(PasswordChangeRequired) as caught:
            ad.check_password(f"{name}@{samba_ad.UPN_SUFFIX}", "First-Pass!11")
    assert (caught.value.username, caught.value.reason) == (name, "password must be changed at next logon")
    assert "First-Pass!11" not in caplog.text
    assert ad.check_password(name, "Wrong-Pass!11") is None  # a wrong password is a wrong password
    assert ad.get_details(name) is None  # no session before the change
    with pytest.raises(PasswordRejected, match="^The current password is wrong.$"):
        ad.change_password(name, "Wrong-Pass!11", "Second-Pass!22")
    ad.change_password(name, "First-Pass!11", "Second-Pass!22")  # the user cannot bind; the service account can
    assert ad.check_password(name, "Second-Pass!22").username == name
    assert ad.get_details(name).username == name


def test_ad_reset_by_a_service_account_with_the_right(ad_reset, samba_ad):
    name = unique("adrst")
    samba_ad.add_user(name, "First-Pass!11")
    ad_reset.set_password(name, "Reset-Pass!33")
    assert ad_reset.check_password(name, "Reset-Pass!33") is not None
    assert ad_reset.check_password(name, "First-Pass!11") is None
    with pytest.raises(PasswordRejected) as short:
        ad_reset.set_password(name, "Ab1!")
    assert str(short.value) == POLICY_REFUSAL


def test_ad_reset_clears_must_change(ad_reset, samba_ad):
    name = unique("adrstmc")
    samba_ad.add_user(name, "First-Pass!11", must_change=True)
    ad_reset.set_password(name, "Reset-Pass!33")
    assert ad_reset.check_password(name, "Reset-Pass!33").username == name


def test_ad_reset_without_the_right_is_refused_in_words(samba_ad):
    name = unique("adnoright")
    samba_ad.add_user(name, "First-Pass!11")
    p = ldap_provider(samba_ad)  # the read-only service account
    try:
        with pytest.raises(PasswordRejected) as caught:
            p.set_password(name, "Reset-Pass!33")
        assert str(caught.value) == ("The directory did not let the portal reset this password: the service account "
                                     "needs the Reset Password right on this user.")
        assert p.check_password(name, "First-Pass!11") is not None
    finally:
        p.close()


def test_ad_administrators_are_never_reset(ad_reset, samba_ad, caplog):
    # The test DC grants Reset Password on all of CN=Users, Administrator included (Samba runs no AdminSDHolder
    # here): the portal itself refuses accounts with adminCount=1.
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(PasswordRejected) as caught:
        ad_reset.set_password("Administrator", "Taken-Over!99")
    assert str(caught.value) == PROTECTED_ACCOUNT
    assert "adminCount=1" in caplog.text


@pytest.mark.parametrize("user", ["frank", "hank"])  # disabled, account expired: not changed, not reset
def test_ad_refused_accounts_are_not_written(ad_reset, samba_ad, user):
    with pytest.raises(PasswordRejected, match="^The current password is wrong.$"):
        ad_reset.change_password(user, samba_ad.PASSWORDS[user], "Second-Pass!22")
    with pytest.raises(PasswordRejected) as caught:
        ad_reset.set_password(user, "Reset-Pass!33")
    assert str(caught.value) == NO_SUCH_ACCOUNT


def test_ad_username_for_email(ad_reset, samba_ad):
    name = unique("admail")
    samba_ad.add_user(name, "First-Pass!11")
    assert ad_reset.username_for_email(f"{name}@{samba_ad.UPN_SUFFIX}") == name
    assert ad_reset.username_for_email(f"frank@{samba_ad.UPN_SUFFIX}") is None  # disabled
    assert ad_reset.username_for_email(f"*@{samba_ad.UPN_SUFFIX}") is None


@pytest.fixture
def samba_ad_in_clear(samba_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaAD]:
    """A DC of this test's own that accepts simple binds over plain LDAP (`ldap server require strong auth = no`),
    as older domains do. In a short folder: see `own_samba_ad`."""
    server = SambaAD(samba_template, tmp_path_factory.mktemp("ad"))
    try:
        server._install()
        conf = server.smb_conf.read_text()
        server.smb_conf.write_text(conf.replace("[global]\n", "[global]\n\tldap server require strong auth = no\n", 1))
        server.start()
        yield server
    finally:
        server.close()


def test_ad_passwords_never_travel_in_clear(samba_ad_in_clear, caplog):
    server = samba_ad_in_clear
    p = ldap_provider(server, url=server.url, tls={})
    try:
        assert p.check_password("erin", server.PASSWORDS["erin"]) is not None  # this DC takes plain binds
        for attempt in (lambda: p.change_password("erin", server.PASSWORDS["erin"], "Second-Pass!22"),
                        lambda: p.set_password("erin", "Reset-Pass!33")):
            with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(BackendUnavailable) as caught:
                attempt()
            assert "only over TLS" in str(caught.value)
        assert p.check_password("erin", server.PASSWORDS["erin"]) is not None  # unchanged
    finally:
        p.close()
    assert "only over TLS" in caplog.text


def test_check_config_warns_about_ad_in_clear(portal_setup):
    document = portal_setup.document()
    document["authentication"] = {"backend": "ldap", "ldap": {
        "implementation": "activedirectory", "url": "ldap://dc1.example.test", "base_dn": "DC=example,DC=test"}}
    warnings = parse_config(document, environ={}, folder=portal_setup.directory).warnings()
    assert any("plain ldap:// without start_tls" in w for w in warnings), warnings
    document["authentication"]["ldap"]["start_tls"] = True
    warnings = parse_config(document, environ={}, folder=portal_setup.directory).warnings()
    assert not any("plain ldap://" in w for w in warnings)
