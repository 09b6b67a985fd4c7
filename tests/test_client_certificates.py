"""Client certificates (mTLS) at the verify endpoint, in-process: the headers a proxy sends, judged by the portal.

The proxies themselves (nginx, HAProxy) and a real Prometheus presenting a certificate are in
tests/test_client_certificates_proxies.py; here every case the portal decides on its own: which user a
certificate names, which it refuses and why (audited, counted towards a ban), and which proxy headers it
cannot read (400 with the reason, never a guess).
"""
from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from authportal import client_certificates
from authportal.cli import main
from tests.support.client_certificates import DAY, Pki, der_base64, escaped, presented
from tests.support.in_process import PROM, ProxiedClient, forward_auth, post_login, verify
from tests.support.portal import PortalSetup

ADMIN_API = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    for name in ("alice", "bob", "carol", "dave", "mallory", "revoked-bob"):
        pki.client(name, "bob" if name == "revoked-bob" else None)
    pki.client("bob-by-email", "ignored", emails=("bob@example.test",))
    pki.client("bob-by-dns", "ignored", dns_names=("bob",))
    pki.client("two-emails", "x", emails=("bob@example.test", "alice@example.test"))
    pki.expired("expired-bob")
    pki.stranger("stranger-bob")
    pki.authority.issue(pki.directory / "server-bob.pem", pki.directory / "server-bob.key", "bob")  # serverAuth
    return pki


def certificates(pki: Pki, **settings) -> dict:
    return {"authentication": {"client_certificates": {
        "enable": True, "ca_file": str(pki.ca_file), "crl_file": str(pki.crl_file), **settings}},
        "session": {"cache_ttl": 0}}


@pytest.fixture(scope="module")
def portal(tmp_path_factory, pki):
    """One portal for the tests that leave nothing behind (refusals count towards no ban here)."""
    from authportal.app import create_app
    from authportal.config import load_config

    overrides = {**certificates(pki), "regulation": {"ip_max_retries": 0, "max_retries": 1000}}
    application = create_app(load_config(PortalSetup(tmp_path_factory.mktemp("portal"), overrides=overrides).config_path))
    yield application
    application.close()


@pytest.fixture
def client(portal):
    return ProxiedClient(portal)


def cert(pki: Pki, name: str) -> dict[str, str]:
    return presented(pki.directory / f"{name}.pem")


def user_of(response) -> str | None:
    return response.headers.get("Remote-User") if response.status_code == 200 else None


def test_a_certificate_is_its_user_with_the_groups_of_the_users_file(client, pki):
    allowed = verify(client, PROM, **cert(pki, "bob"))
    assert allowed.status_code == 200
    assert (allowed.headers["Remote-User"], allowed.headers["Remote-Groups"]) == ("bob", "monitoring")
    assert verify(client, PROM, **cert(pki, "carol")).status_code == 403  # no group monitoring: the rule denies
    # HAProxy's form of the same certificate: base64 DER
    assert user_of(verify(client, PROM, **{"X-SSL-Client-Cert": der_base64(pki.directory / "bob.pem"),
                                           "X-SSL-Client-Verify": "SUCCESS"})) == "bob"


@pytest.mark.parametrize("settings, users", [
    # an ambiguous certificate (two e-mail addresses) is refused rather than guessed, as is one without the field
    ({"map": "san_email"}, {"bob-by-email": "bob", "two-emails": None, "bob": None}),
    ({"map": "san_dns"}, {"bob-by-dns": "bob", "bob": None}),
    ({"map": "subject_regex", "regex": "^CN=(?P<user>a[a-z]+)$"}, {"alice": "alice", "bob": None}),
], ids=["san_email", "san_dns", "subject_regex"])
def test_each_map_finds_the_user(app_with, pki, settings, users):
    client = ProxiedClient(app_with(**certificates(pki, **settings)))
    assert {name: user_of(verify(client, PROM, **cert(pki, name))) for name in users} == users


@pytest.mark.parametrize("name, reason", [
    ("expired-bob", "certificate expired or not yet valid"),
    ("stranger-bob", "certificate not issued by a CA in ca_file"),
    ("server-bob", "certificate not for client authentication"),
    ("mallory", "the certificate's user 'mallory' is unknown or disabled"),
    ("dave", "the certificate's user 'dave' is unknown or disabled"),  # disabled in the users file
])
def test_a_certificate_the_portal_cannot_trust_is_refused_and_audited(client, pki, caplog, name, reason):
    caplog.set_level(logging.INFO, logger="authportal.audit")
    refused = verify(client, PROM, **cert(pki, name))
    assert refused.status_code == 401
    assert "WWW-Authenticate" not in refused.headers  # no Basic challenge for a refused certificate
    [audited] = [r.audit for r in caplog.records if r.name == "authportal.audit"]
    assert (audited["event"], audited["via"], audited["ip"]) == ("login_failure", "client_certificate", "127.0.0.1")
    assert audited["reason"].startswith(reason)


def test_the_proxys_failed_verdict_is_refused_even_for_a_good_certificate(client, pki, caplog):
    caplog.set_level(logging.INFO, logger="authportal.audit")
    failed = presented(pki.directory / "bob.pem", "FAILED:certificate has expired")
    assert verify(client, PROM, **failed).status_code == 401
    [audited] = [r.audit for r in caplog.records if r.name == "authportal.audit"]
    assert audited["reason"] == "the proxy refused the certificate: certificate has expired"
    assert user_of(verify(client, PROM, **cert(pki, "bob"))) == "bob"  # a failure is never remembered as bob


def test_a_crl_replaced_while_the_portal_runs_revokes_at_once(client, pki):
    assert user_of(verify(client, PROM, **cert(pki, "revoked-bob"))) == "bob"
    pki.revoke(pki.directory / "revoked-bob.pem")
    try:
        assert verify(client, PROM, **cert(pki, "revoked-bob")).status_code == 401
        assert user_of(verify(client, PROM, **cert(pki, "bob"))) == "bob"  # the same user's other certificate
    finally:
        pki.revoke()


def test_an_unusable_crl_refuses_every_certificate_until_it_is_fixed(client, pki):
    good = pki.crl_file.read_bytes()
    pki.crl_file.write_text("not a CRL")
    try:
        assert verify(client, PROM, **cert(pki, "bob")).status_code == 401
    finally:
        pki.crl_file.write_bytes(good)
    assert user_of(verify(client, PROM, **cert(pki, "bob"))) == "bob"


def test_an_out_of_date_crl_refuses(app_with, pki, tmp_path):
    stale = pki.authority.write_crl(tmp_path / "stale.pem", next_update=-DAY)
    client = ProxiedClient(app_with(**certificates(pki, crl_file=str(stale))))
    assert verify(client, PROM, **cert(pki, "bob")).status_code == 401


def test_a_certificate_is_one_factor_unless_configured_to_count_as_two(client, app_with, pki):
    assert verify(client, ADMIN_API, method="POST", **cert(pki, "alice")).status_code == 403
    counted = ProxiedClient(app_with(**certificates(pki, counts_as_two_factor=True)))
    assert verify(counted, ADMIN_API, method="POST", **cert(pki, "alice")).status_code == 200


@pytest.mark.parametrize("headers, reason", [
    ({"X-SSL-Client-Cert": "CERT"}, "X-SSL-Client-Cert without X-SSL-Client-Verify"),
    ({"X-SSL-Client-Cert": "CERT", "X-SSL-Client-Verify": ""}, "empty X-SSL-Client-Verify"),
    ({"X-SSL-Client-Cert": "CERT", "X-SSL-Client-Verify": "SUCCESS,SUCCESS"}, "X-SSL-Client-Verify was sent twice"),
    ({"X-SSL-Client-Cert": "CERT", "X-SSL-Client-Verify": "FAILED:x, SUCCESS"}, "X-SSL-Client-Verify was sent twice"),
    ({"X-SSL-Client-Cert": "CERT", "X-SSL-Client-Verify": "NONE"}, "says NONE beside a certificate"),
    ({"X-SSL-Client-Cert": "CERT", "X-SSL-Client-Verify": "ok"}, "malformed X-SSL-Client-Verify"),
    ({"X-SSL-Client-Cert": "CERT,CERT", "X-SSL-Client-Verify": "SUCCESS"}, "X-SSL-Client-Cert was sent twice"),
    ({"X-SSL-Client-Cert": "bm90IGEgY2VydGlmaWNhdGU=", "X-SSL-Client-Verify": "SUCCESS"}, "unreadable X-SSL-Client-Cert"),
    ({"X-SSL-Client-Cert": "%2D%2D%2D%2D%2DBEGIN%20CERTIFICATE%2D%2D%2D%2D%2D%0Agarbage%0A%2D%2D%2D%2D%2DEND%20"
                           "CERTIFICATE%2D%2D%2D%2D%2D", "X-SSL-Client-Verify": "SUCCESS"}, "unreadable X-SSL-Client-Cert"),
], ids=lambda v: str(v)[:50])
def test_headers_the_portal_cannot_read_are_a_400_with_the_reason(client, pki, headers, reason):
    headers = {name: value.replace("CERT", escaped(pki.directory / "bob.pem")) for name, value in headers.items()}
    answer = verify(client, PROM, **headers)
    assert answer.status_code == 400
    assert reason in answer.get_data(as_text=True)


def test_without_a_certificate_a_browser_signs_in_as_usual(client):
    asked = verify(client, PROM, Accept="text/html", **{"X-SSL-Client-Verify": "NONE"})
    assert asked.status_code == 401 and "/?rd=" in asked.headers["Location"]  # nginx turns it into the login page
    assert forward_auth(client, Accept="text/html", **{"X-SSL-Client-Verify": "NONE"}).status_code == 302
    assert post_login(client, "bob").status_code == 302
    assert user_of(verify(client, PROM, **{"X-SSL-Client-Verify": "NONE"})) == "bob"


def test_with_certificates_off_the_headers_mean_nothing(app_with, pki):
    client = ProxiedClient(app_with(authentication={"client_certificates": {"enable": False}}))
    assert verify(client, PROM, **cert(pki, "bob")).status_code == 401
    assert verify(client, PROM, **{"X-SSL-Client-Cert": "garbage"}).status_code == 401  # not even read


def test_a_scraper_s_repeated_certificate_is_parsed_once(app_with, pki, monkeypatch):
    client = ProxiedClient(app_with(**{**certificates(pki), "session": {"cache_ttl": "10s"}}))
    parsed = []
    real = client_certificates.decode
    monkeypatch.setattr(client_certificates, "decode", lambda value: parsed.append(value) or real(value))
    for _ in range(5):
        assert user_of(verify(client, PROM, **cert(pki, "bob"))) == "bob"
    assert len(parsed) == 1


def test_refused_certificates_ban_the_client_address(app_with, pki):
    client = ProxiedClient(app_with(**certificates(pki), regulation={"ip_max_retries": 3}))
    for _ in range(3):
        assert verify(client, PROM, **cert(pki, "mallory")).status_code == 401
    assert verify(client, PROM, **cert(pki, "bob")).status_code == 401  # banned: not even checked


@pytest.mark.parametrize("settings, expected", [
    ({"map": "subject_regex"}, "authentication.client_certificates.regex: required when map is subject_regex"),
    ({"map": "subject_regex", "regex": "^CN=[a-z]+$"}, "authentication.client_certificates.regex: has no group"),
    ({"map": "subject_regex", "regex": "(a)(b)"}, "regex: has 2 groups: name the user's (?P<user>...)"),
    ({"map": "subject_regex", "regex": "(["}, "authentication.client_certificates.regex: invalid regular expression"),
    ({"regex": "CN=(.+)"}, "authentication.client_certificates.regex: only read with map: subject_regex"),
    ({"map": "cn"}, "authentication.client_certificates.map: Input should be 'subject_cn'"),
    ({"ca_file": "missing.pem"}, "authentication.client_certificates.ca_file: cannot read"),
    ({"ca_file": "users.yml"}, "authentication.client_certificates.ca_file: "),  # no PEM certificate
    ({"crl_file": "CRL"}, "authentication.client_certificates.crl_file: needs ca_file"),
    ({"ca_file": "OTHER_CA", "crl_file": "CRL"}, "crl_file: the CRL of CN=authportal test client CA is not signed by "
                                                 "a CA in ca_file"),
    ({"ca_file": "CA", "crl_file": "CA"}, "authentication.client_certificates.crl_file: "),
], ids=lambda v: str(v)[:40])
def test_check_config_says_what_is_wrong(portal_setup, pki, tmp_path, settings, expected):
    files = {"CA": str(pki.ca_file), "CRL": str(pki.crl_file),
             "OTHER_CA": str(Pki(tmp_path / "other").ca_file)}
    settings = {key: files.get(value, value) for key, value in settings.items()}
    portal_setup.write(authentication={"client_certificates": {"enable": True, **settings}})
    result = CliRunner().invoke(main, ["check-config", "--config", str(portal_setup.config_path)])
    assert result.exit_code == 2, result.output
    assert expected in result.output


def test_a_complete_setting_passes_check_config(portal_setup, pki):
    portal_setup.write(**certificates(pki, map="subject_regex", regex="^CN=(?P<user>[^,]+)"))
    result = CliRunner().invoke(main, ["check-config", "--config", str(portal_setup.config_path)])
    assert result.exit_code == 0, result.output
    assert "client_certificates" not in result.output


def test_without_ca_file_check_config_warns(portal_setup):
    portal_setup.write(authentication={"client_certificates": {"enable": True}})
    result = CliRunner().invoke(main, ["check-config", "--config", str(portal_setup.config_path)])
    assert result.exit_code == 0, result.output
    assert "client_certificates has no ca_file: whose certificate is believed rests on the proxy's verdict" in result.output
