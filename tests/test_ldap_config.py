"""authentication.ldap as the configuration owns it: presets fill every key, filters, attributes, URLs and TLS
files are checked while validating (each problem at its key, with every other problem of the file, no
provider built), and how a filter template is expanded. The provider against real directories: test_ldap.py.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from authportal.authentication.ldap import LdapUserProvider
from authportal.authentication.ldap.activedirectory import account_problem, bind_refusal_reason
from authportal.authentication.ldap.filters import expand_filter
from authportal.cli import main
from authportal.config import LDAP_PRESETS, ConfigError, LdapConfig, parse_config
from tests.servers.ca import CertificateAuthority
from tests.support.portal import PortalSetup

MINIMAL = {"url": "ldap://127.0.0.1:1", "base_dn": "dc=example,dc=com"}
ATTRS = {"username_attribute": "uid", "mail_attribute": "mail", "display_name_attribute": "displayName",
         "group_name_attribute": "cn"}


def ldap_errors(portal_setup: PortalSetup, **ldap: Any) -> list[str]:
    """The configuration errors of the portal's config with this `authentication.ldap` section."""
    document = portal_setup.document()
    document["authentication"] = {"backend": "ldap", "ldap": {**MINIMAL, **ldap}}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, environ={}, folder=portal_setup.directory)
    return caught.value.errors


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("implementation", sorted(LDAP_PRESETS))
def test_a_preset_fills_every_filter_and_attribute(implementation):
    config = LdapConfig.model_validate({**MINIMAL, "implementation": implementation})
    for key, value in LDAP_PRESETS[implementation].items():
        assert getattr(config, key) == value
    assert "{input}" in config.users_filter


def test_explicit_settings_win_over_the_preset():
    config = LdapConfig.model_validate({**MINIMAL, "implementation": "activedirectory", "username_attribute": "cn",
                                        "groups_filter": "(member={dn})", "additional_users_dn": "ou=staff",
                                        "mail_attribute": None})
    assert (config.username_attribute, config.groups_filter, config.mail_attribute) == ("cn", "(member={dn})", "mail")
    assert "userPrincipalName" in config.users_filter and "805306368" in config.users_filter
    provider = LdapUserProvider(config)  # connects only when first used
    try:
        assert provider.users_base == "ou=staff,dc=example,dc=com"
        assert provider.groups_base == "dc=example,dc=com"
    finally:
        provider.close()


def test_an_unknown_implementation_is_the_only_error(portal_setup):
    assert ldap_errors(portal_setup, implementation="ad") == [
        "authentication.ldap.implementation: Input should be 'custom', 'openldap', 'activedirectory', 'freeipa' or "
        "'rfc2307bis'"]


# --------------------------------------------------------------------------- checks, at their key


@pytest.mark.parametrize(("settings", "expected"), [
    ({"users_filter": "(uid={nope})"}, "authentication.ldap.users_filter: unknown placeholder(s) {nope}"),
    ({"users_filter": "(uid=alice)"}, "authentication.ldap.users_filter: must contain {input}"),
    ({"users_filter": "(uid={input}"}, "authentication.ldap.users_filter: not an LDAP filter (unbalanced parentheses)"),
    ({"users_filter": "(&(uid={input})(dn={dn}))"}, "authentication.ldap.users_filter: unknown placeholder(s) {dn}"),
    ({"users_filter": "(uid={input})(cn=x)"}, "authentication.ldap.users_filter: invalid LDAP filter"),
    ({"groups_filter": "(objectClass=groupOfNames)"},
     "authentication.ldap.groups_filter: must contain {dn}, {username} or {input}"),
    ({"username_attribute": "uid)(x"}, "authentication.ldap.username_attribute: not an LDAP attribute name: 'uid)(x'"),
    ({"url": "ldap://"}, "authentication.ldap.url: no host in 'ldap://'"),
    ({"url": ["ldap://dc1.test", "ldap://dc2.test:port"]}, "authentication.ldap.url: bad port in 'ldap://dc2.test:port'"),
    ({"url": "http://dc1.test"}, "authentication.ldap.url: 'http://dc1.test' is not an ldap:// or ldaps:// URL"),
], ids=lambda v: str(v)[:40])
def test_a_bad_setting_is_a_config_error_at_its_key(portal_setup, settings, expected):
    errors = ldap_errors(portal_setup, **settings)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_a_filter_is_checked_even_when_an_attribute_it_names_is_broken(portal_setup):
    errors = ldap_errors(portal_setup, mail_attribute="mail address", users_filter="({mail_attribute}=x)")
    assert errors == ["authentication.ldap.mail_attribute: not an LDAP attribute name: 'mail address'",
                      "authentication.ldap.users_filter: must contain {input}"]


def test_tls_files_are_loaded_when_the_configuration_is_checked(portal_setup, tmp_path):
    ca = CertificateAuthority("test CA")
    ca_file = ca.write_cert(tmp_path / "ca.pem")
    cert_file, key_file = ca.issue(tmp_path / "client.pem", tmp_path / "client.key", "client", client=True)
    _, other_key = ca.issue(tmp_path / "other.pem", tmp_path / "other.key", "other", client=True)
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"

    cases = [
        ({"ca_file": str(missing)}, f"authentication.ldap.tls.ca_file: cannot read {missing}: No such file"),
        ({"ca_file": str(not_pem)}, f"authentication.ldap.tls.ca_file: {not_pem} holds no PEM certificate"),
        ({"key_file": str(key_file)}, "authentication.ldap.tls.key_file: set cert_file too"),
        ({"cert_file": str(missing), "key_file": str(key_file)},
         f"authentication.ldap.tls.cert_file: cannot read {missing}"),
        ({"cert_file": str(cert_file), "key_file": str(missing)},
         f"authentication.ldap.tls.key_file: cannot read {missing}"),
        ({"cert_file": str(cert_file), "key_file": str(other_key)},
         "authentication.ldap.tls.cert_file: not a PEM certificate with its unencrypted key (key_file)"),
    ]
    for tls, expected in cases:
        errors = ldap_errors(portal_setup, tls=tls)
        assert len(errors) == 1 and errors[0].startswith(expected), (tls, errors)
    good = LdapConfig.model_validate({**MINIMAL, "tls": {"ca_file": str(ca_file), "cert_file": str(cert_file),
                                                         "key_file": str(key_file)}})
    assert good.tls.ca_file == ca_file


def test_check_config_reports_every_ldap_problem_with_the_others_in_one_run(portal_setup):
    """Before, check-config built the provider only once the rest of `authentication` was valid, and the
    provider stopped at its first problem: fixing one revealed the next."""
    portal_setup.write(session={"expiration": "soon"}, authentication={"backend": "ldap", "ldap": {
        "implementation": "openldap", "url": ["ldap://dc1.test", "ldaps://"], "base_dn": "dc=example,dc=com",
        "timeout": "never", "username_attribute": "u id", "users_filter": "(uid=alice)",
        "groups_filter": "(member={user})", "tls": {"ca_file": "missing-ca.pem"}}})
    result = CliRunner().invoke(main, ["check-config", "--config", str(portal_setup.config_path)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "configuration errors:",
        "  session.expiration: invalid duration 'soon' (use e.g. 90s, 5m, 1h, 30d)",
        "  authentication.ldap.url: no host in 'ldaps://'",
        f"  authentication.ldap.tls.ca_file: cannot read {portal_setup.directory / 'missing-ca.pem'}: "
        "No such file or directory",
        "  authentication.ldap.timeout: invalid duration 'never' (use e.g. 90s, 5m, 1h, 30d)",
        "  authentication.ldap.username_attribute: not an LDAP attribute name: 'u id'",
        "  authentication.ldap.users_filter: must contain {input}",
        "  authentication.ldap.groups_filter: unknown placeholder(s) {user}",
    ]


# --------------------------------------------------------------------------- filter expansion


@pytest.mark.parametrize(("value", "escaped"), [
    ("alice", "alice"),
    ("*", r"\2a"),
    ("admin*", r"admin\2a"),
    ("alice)(|(uid=*", r"alice\29\28|\28uid=\2a"),
    (")(cn=*", r"\29\28cn=\2a"),
    (r"\2a", r"\5c2a"),
    ("nul\x00byte", r"nul\00byte"),
    ("{dn}", "{dn}"),  # a value never becomes a placeholder
    ("jörg", "jörg"),
])
def test_input_is_escaped_per_rfc4515(value, escaped):
    assert expand_filter("(&({username_attribute}={input})(objectClass=person))", ATTRS, input=value) == \
        f"(&(uid={escaped})(objectClass=person))"


def test_dn_and_username_placeholders_are_escaped():
    dn = r"cn=Smith\, John (ext),ou=people,dc=example,dc=com"
    assert expand_filter("(|(member={dn})(memberUid={username}))", ATTRS, dn=dn, username="j*") == \
        r"(|(member=cn=Smith\5c, John \28ext\29,ou=people,dc=example,dc=com)(memberUid=j\2a))"


def test_attribute_and_date_placeholders():
    now = 1_700_000_000.0
    out = expand_filter(
        "({mail_attribute}={input})({display_name_attribute}=x)({group_name_attribute}=y)"
        "(a>={date-time:microsoft-nt})(b>={date-time:generalized})(c>={date-time:unix})",
        ATTRS, now=now, input="i")
    assert out == (f"(mail=i)(displayName=x)(cn=y)(a>={int((now + 11644473600) * 10**7)})"
                   "(b>=20231114221320Z)(c>=1700000000)")


def test_unknown_placeholder_is_an_error():
    with pytest.raises(ValueError, match="unknown placeholder"):
        expand_filter("(uid={nope})", ATTRS, input="x")


# --------------------------------------------------------------------------- Active Directory account state


def test_ad_account_state_reasons():
    now = time.time()
    nt_now = int((now + 11644473600) * 10**7)
    ok = {"userAccountControl": ["512"], "pwdLastSet": ["133000000000000000"], "accountExpires": ["0"],
          "msDS-User-Account-Control-Computed": ["0"]}
    assert account_problem(ok, now) is None
    assert account_problem({**ok, "accountExpires": [str(0x7FFFFFFFFFFFFFFF)]}, now) is None
    assert account_problem({**ok, "accountExpires": [str(nt_now + 10**9)]}, now) is None
    assert account_problem({**ok, "userAccountControl": ["514"]}, now) == "account disabled"
    assert account_problem({**ok, "msDS-User-Account-Control-Computed": ["16"]}, now) == "account locked out"
    assert account_problem({**ok, "accountExpires": [str(nt_now - 10**7)]}, now) == "account expired"
    assert account_problem({**ok, "pwdLastSet": ["0"]}, now) == "password must be changed at next logon"
    assert account_problem({**ok, "msDS-User-Account-Control-Computed": ["8388608"]}, now) == "password expired"
    message = "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 533, v1db1"
    assert bind_refusal_reason(message) == "account disabled"
    assert bind_refusal_reason("invalid credentials") is None


def test_every_preset_is_documented():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "ldap.md").read_text()
    for name, preset in LDAP_PRESETS.items():
        assert f"`{name}`" in docs
        for key in ("users_filter", "groups_filter"):
            assert preset[key] in docs, (name, key)
