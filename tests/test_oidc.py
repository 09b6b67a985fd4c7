"""Sign in with an identity provider (OpenID Connect), in-process against a real provider (oidc-provider).

The portal runs in-process (fast); the provider is the real one, on loopback, for the whole module. The
browser, nginx and logout stories are in test_oidc_browser.py.
"""
from __future__ import annotations

import logging
import time

import pytest

from authportal.app import create_app
from authportal.config import load_config
from tests.servers import free_port
from tests.support.in_process import PORTAL, PROM, ProxiedClient, csrf, page, post_login, session_cookie, verify
from tests.support.oidc import (
    CLIENT_SECRET,
    callback_path,
    corp,
    partners,
    readme_block,
    running_provider,
    sign_in_through_provider,
    start,
)
from tests.support.portal import PortalSetup

ADMIN_API = "http://app.example.test/prometheus/api/v1/admin/tsdb/snapshot"


@pytest.fixture(scope="module")
def provider():
    with running_provider([PORTAL]) as started:
        yield started


def oidc_settings(*providers, **settings):
    return {"server": {"portal_url": PORTAL}, "authentication": {"oidc": {"providers": list(providers), **settings}}}


@pytest.fixture(scope="module")
def portal(tmp_path_factory, provider):
    """One portal for the module: corp (groups refreshed every second) and partners (admins only)."""
    setup = PortalSetup(tmp_path_factory.mktemp("oidc") / "portal", overrides=oidc_settings(
        corp(provider, refresh_interval="1s"), partners(provider, allowed_groups=["admins"])))
    application = create_app(load_config(setup.config_path))
    yield application
    application.close()


@pytest.fixture
def oidc_app(app_with):
    """`oidc_app(*providers, **oidc_settings)`: a portal of its own with these providers."""
    return lambda *providers, **settings: app_with(**oidc_settings(*providers, **settings))


@pytest.fixture
def browser(portal):
    """A new browser (no cookies) in front of the module's portal."""
    return ProxiedClient(portal)


def wait_for(condition, timeout=15.0):
    """Poll `condition` until it is true (a deadline, not a sleep of a guessed length)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_olivia_signs_in_at_the_provider_lands_on_rd_and_her_groups_decide(browser):
    back = sign_in_through_provider(browser, "olivia", rd=PROM)
    assert back.status_code == 302
    assert page(browser, back.headers["Location"]).headers["Location"] == PROM
    allowed = verify(browser)
    assert allowed.status_code == 200
    assert allowed.headers["Remote-User"] == "olivia"
    assert allowed.headers["Remote-Groups"] == "admins,monitoring"
    # a one-factor sign-in: the admins' two_factor rule still asks for a second factor
    assert verify(browser, ADMIN_API).status_code == 401


def test_a_provider_user_without_the_group_is_forbidden_by_the_rules(browser):
    sign_in_through_provider(browser, "otto", rd=PROM)
    assert verify(browser).status_code == 403


def test_a_replayed_state_is_refused_and_starts_no_session(browser):
    path = callback_path(browser, "oscar")
    assert browser.get(path, base_url=PORTAL).status_code == 302
    browser.post("/logout", base_url=PORTAL, data={"csrf_token": csrf(browser, "/logout")})
    again = browser.get(path, base_url=PORTAL)
    assert again.status_code == 400
    assert "expired or was already used" in again.get_data(as_text=True)
    assert verify(browser).status_code == 401


def test_a_replayed_code_is_refused_by_the_provider(browser):
    used = callback_path(browser, "oscar")
    assert browser.get(used, base_url=PORTAL).status_code == 302
    browser.post("/logout", base_url=PORTAL, data={"csrf_token": csrf(browser, "/logout")})
    fresh = callback_path(browser, "oscar")
    code = used.split("code=")[1].split("&")[0]
    state = fresh.split("state=")[1].split("&")[0]
    replayed = browser.get(f"/oidc/callback/corp?code={code}&state={state}", base_url=PORTAL)
    assert replayed.status_code == 400
    assert verify(browser).status_code == 401


def test_a_callback_in_another_browser_is_refused(browser):
    path = callback_path(browser, "olivia")
    other = ProxiedClient(browser.application)
    assert other.get(path, base_url=PORTAL).status_code == 400
    assert verify(other).status_code == 401


@pytest.mark.parametrize("mode", ["signature", "aud"])
def test_a_tampered_or_foreign_id_token_is_refused(browser, provider, mode):
    provider.tamper(mode)
    try:
        refused = sign_in_through_provider(browser, "olivia", rd=PROM)
    finally:
        provider.tamper(None)
    assert refused.status_code == 400
    assert "not accepted" in refused.get_data(as_text=True)
    assert session_cookie(browser) is None
    assert verify(browser).status_code == 401


def test_a_token_signed_with_a_rotated_key_validates(browser, provider):
    assert sign_in_through_provider(browser, "oscar").status_code == 302  # the portal holds the old JWKS
    old = provider.kid
    provider.rotate_key()
    assert provider.kid != old
    other = ProxiedClient(browser.application)
    assert sign_in_through_provider(other, "oscar", rd=PROM).status_code == 302
    assert verify(other).status_code == 200


def test_two_providers_offer_two_buttons_beside_the_password_form(browser):
    html = page(browser).get_data(as_text=True)
    assert "Sign in with Corp SSO" in html and "Sign in with Partners" in html
    assert 'id="password"' in html


def test_allowed_groups_refuses_others_with_a_clear_page(browser):
    refused = sign_in_through_provider(browser, "oscar", provider="partners", rd=PROM)
    assert refused.status_code == 403
    assert "is not in a group that may sign in here" in refused.get_data(as_text=True)
    assert verify(browser).status_code == 401
    assert sign_in_through_provider(browser, "olivia", provider="partners", rd=PROM).status_code == 302
    assert verify(browser).headers["Remote-User"] == "olivia"


def test_hide_password_form_shows_only_the_buttons_and_allowed_domains_refuse(oidc_app, provider):
    browser = ProxiedClient(oidc_app(corp(provider, allowed_domains=["example.com"]), hide_password_form=True))
    html = page(browser).get_data(as_text=True)
    assert "Sign in with Corp SSO" in html
    assert 'id="password"' not in html
    assert post_login(browser, "bob").status_code == 404
    refused = sign_in_through_provider(browser, "olivia")  # olivia@example.test
    assert refused.status_code == 403
    assert "e-mail domain is not allowed" in refused.get_data(as_text=True)


def corp_settings_for_a_closed_port() -> dict:
    return {"name": "corp", "display_name": "Corp SSO", "issuer": f"http://127.0.0.1:{free_port()}",
            "client_id": "portal", "client_secret": "unused"}


def test_a_provider_that_is_down_leaves_the_portal_up_and_says_so(oidc_app):
    browser = ProxiedClient(oidc_app(corp_settings_for_a_closed_port()))
    assert page(browser).status_code == 200
    pressed = start(browser)
    assert pressed.status_code == 503
    assert "unavailable right now" in pressed.get_data(as_text=True)
    assert "Corp SSO is unavailable right now." in page(browser).get_data(as_text=True)
    assert post_login(browser, "bob").status_code == 302  # passwords still work


def test_groups_follow_the_provider_within_refresh_interval(browser, provider):
    sign_in_through_provider(browser, "oscar")
    assert verify(browser).status_code == 200
    provider.set_groups("oscar", [])
    try:
        wait_for(lambda: verify(browser).status_code == 403)
    finally:
        provider.set_groups("oscar", ["monitoring"])
    wait_for(lambda: verify(browser).status_code == 200)


def test_a_user_gone_at_the_provider_loses_the_session(browser, provider):
    sign_in_through_provider(browser, "otto")
    assert verify(browser, "http://app.example.test/public/x").status_code == 200
    assert page(browser).status_code == 200 and "otto" in page(browser).get_data(as_text=True)
    provider.remove_user("otto")
    try:
        wait_for(lambda: "Sign in with Corp SSO" in page(browser).get_data(as_text=True))
    finally:
        provider.set_groups("otto", [])


def test_the_client_secret_is_in_no_url_page_or_log_the_tokens_are_sealed_and_the_sign_in_is_audited(browser):
    records = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("authportal")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        started = start(browser, rd=PROM)
        sign_in_through_provider(browser, "olivia", rd=PROM)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert "op-client-Secret" not in started.headers["Location"]
    assert "op-client-Secret" not in page(browser).get_data(as_text=True)
    assert not [r for r in records if "op-client-Secret" in r.getMessage() + str(getattr(r, "audit", ""))]
    success = next(r.audit for r in records if getattr(r, "audit", {}).get("event") == "login_success")
    assert {"user": "olivia", "factor": "oidc", "provider": "corp"}.items() <= success.items()
    # the session record holds the provider's tokens sealed: no JWT (eyJ…) and no token in clear
    import json
    stored = json.dumps(browser.application.portal.sessions.get(session_cookie(browser).value))
    assert '"provider": "corp"' in stored and "eyJ" not in stored


def test_the_keycloak_example_is_a_valid_configuration(tmp_path):
    """examples/oidc/keycloak.yml, with its secrets and users file standing in for the target machine's."""
    import yaml

    from authportal.config import parse_config
    from tests.servers.process import REPO

    raw = yaml.safe_load((REPO / "examples" / "oidc" / "keycloak.yml").read_text())
    raw.pop("secret_key_file")
    raw["secret_key"] = "x" * 40
    raw["authentication"]["file"]["path"] = str(tmp_path / "users.yml")
    for entry in raw["authentication"]["oidc"]["providers"]:
        entry.pop("client_secret_file")
        entry["client_secret"] = "stand-in"
    config = parse_config(raw, environ={})
    assert [p.name for p in config.authentication.oidc.providers] == ["keycloak", "partners"]


def _problems(*providers: dict, backend: str = "file", **oidc: object) -> list[str]:
    from authportal.config import ConfigError, parse_config

    raw = {"secret_key": "x" * 40, "storage": {"sqlite": {"path": "/tmp/unused.db"}},
           "authentication": {"backend": backend, "file": {"path": "/etc/hostname"},
                              "oidc": {"providers": list(providers), **oidc}}}
    try:
        parse_config(raw, environ={})
    except ConfigError as error:
        return error.errors
    return []


def _entry(**settings: object) -> dict:
    return {"name": "corp", "issuer": "https://sso.example.com/realms/corp", "client_id": "portal",
            "client_secret": "s", **settings}


@pytest.mark.parametrize(("providers", "oidc", "expected"), [
    ([_entry(issuer="http://sso.example.com/realms/corp")], {},
     "authentication.oidc.providers[0].issuer: must be https: http is allowed only on this machine"),
    ([_entry(client_secret=None)], {},
     "authentication.oidc.providers[0].client_secret: required (or client_secret_file)"),
    ([_entry(), _entry(client_id="other")], {},
     "authentication.oidc.providers: provider names must be unique: corp more than once"),
    ([_entry(groups_from="ldap")], {}, "authentication.oidc.providers[0].groups_from: ldap needs"),
    ([_entry(scopes=["profile"])], {}, "authentication.oidc.providers[0].scopes: must include openid"),
    ([], {"hide_password_form": True}, "authentication.oidc.hide_password_form: needs at least one provider"),
])
def test_config_errors_name_the_key(providers, oidc, expected):
    problems = _problems(*providers, **oidc)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_http_on_loopback_and_a_secret_file_are_accepted(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    entry = _entry(issuer="http://127.0.0.1:8080", client_secret_file=str(secret))
    del entry["client_secret"]
    assert _problems(entry) == []


def test_the_readme_block_signs_in_the_allowed_groups_only(app_with, provider, tmp_path):
    """README's "Sign in with an identity provider" block, verbatim but for what a user changes."""
    import yaml

    secret = tmp_path / "oidc-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    block = readme_block("Sign in with an identity provider")
    for theirs, ours in {"https://sso.example.com/realms/corp": provider.issuer,
                         "client_id: authportal": "client_id: portal",
                         "/etc/authportal/oidc-secret": str(secret)}.items():
        assert theirs in block
        block = block.replace(theirs, ours)
    browser = ProxiedClient(app_with(server={"portal_url": PORTAL}, **yaml.safe_load(block)))
    assert "Sign in with Corp SSO" in page(browser).get_data(as_text=True)
    assert sign_in_through_provider(browser, "otto").status_code == 403
    assert sign_in_through_provider(browser, "oscar", rd=PROM).status_code == 302
    assert verify(browser).status_code == 200


def test_failed_callbacks_count_towards_the_address_ban(app_with, provider):
    """The callback is a credential check: forged callbacks ban the address, and then even a real sign-in is
    refused."""
    browser = ProxiedClient(app_with(regulation={"ip_max_retries": 2}, **oidc_settings(corp(provider))))
    for forged in ("forged-1", "forged-2"):
        assert browser.get(f"/oidc/callback/corp?code=x&state={forged}", base_url=PORTAL).status_code == 400
    refused = sign_in_through_provider(browser, "olivia")
    assert refused.status_code == 400
    assert verify(browser).status_code == 401


class Directory:
    """A directory that knows oscar with its own groups (groups_from: ldap)."""

    def get_details(self, username):
        from authportal.authentication import UserDetails

        return UserDetails("oscar", "Oscar", "oscar@example.test", ("ldap-ops",)) if username == "oscar" else None


@pytest.mark.parametrize(("claims", "level"), [
    ({"amr": ["pwd", "otp"]}, 2), ({"acr": "mfa"}, 2), ({"amr": ["pwd"], "acr": "1"}, 1), ({}, 1)])
def test_two_factor_claims_raise_the_session_to_two_factors(portal, provider, claims, level):
    from authportal.authentication.oidc import OidcClient, Tokens

    providers = portal.portal.identity_providers
    client = OidcClient(providers.get("corp").config.model_copy(update={"two_factor_claims": ["otp", "mfa"]}))
    tokens = Tokens("id-token", {"sub": "s1", "preferred_username": "oscar", "groups": ["monitoring"], **claims},
                    None, None)
    assert providers.accept(client, tokens).level == level


def test_groups_from_ldap_takes_the_directory_groups_and_refuses_strangers(portal):
    from authportal.authentication.oidc import SignInRefused

    providers = portal.portal.identity_providers
    directory, providers.directory = providers.directory, Directory()
    try:
        settings = providers.get("corp").config.model_copy(update={"groups_from": "ldap"})
        found = providers.details(settings, {"sub": "s1", "preferred_username": "oscar", "groups": ["admins"]})
        assert found.groups == ("ldap-ops",)
        with pytest.raises(SignInRefused, match="not in the directory"):
            providers.details(settings, {"sub": "s2", "preferred_username": "olivia"})
    finally:
        providers.directory = directory
