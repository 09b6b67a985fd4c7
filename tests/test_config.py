"""Configuration: every broken config is refused with its key path; env overrides and *_file secrets work."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from authportal.cli import main
from authportal.config import ConfigError, load_config, parse_config


def check(path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    return result.exit_code, result.output


def test_valid_config_passes(portal_setup):
    code, output = check(portal_setup.config_path)
    assert code == 0, output
    assert "configuration is valid" in output


def test_users_yml_example_is_a_valid_users_file(tmp_path, portal_setup):
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "users.yml.example"
    portal_setup.write(authentication={"file": {"path": str(example)}})
    code, output = check(portal_setup.config_path)
    assert code == 0, output


@pytest.mark.parametrize("change, expected", [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"session": {"expiraton": "1h"}}, "session.expiraton: unknown key"),
    ({"session": {"expiration": "5 minutes"}}, "session.expiration: invalid duration '5 minutes'"),
    ({"server": {"workers": "many"}}, "server.workers: Input should be a valid integer"),
    ({"regulation": {"max_retries": -1}}, "regulation.max_retries: Input should be greater than or equal to 1"),
    ({"access_control": {"default_policy": "allow"}}, "access_control.default_policy: Input should be 'bypass'"),
    ({"access_control": {"rules": [{"domain": "x.test", "policy": "deny", "resources": ["(["]}]}},
     "access_control.rules[0].resources: Value error, invalid regular expression"),
    ({"access_control": {"rules": [{"domain": "x.test", "policy": "one_factor", "subject": ["admins"]}]}},
     "must be 'user:NAME' or 'group:NAME'"),
    ({"authentication": {"backend": "ldap"}},
     "authentication.ldap: required key is missing (authentication.backend is 'ldap')"),
    ({"session": {"redis": {"url": "http://localhost"}}}, "session.redis.url: Value error, must be a redis://"),
    ({"session": {"domain": "other.test"}},
     "session.domain: 'other.test' does not cover the portal host 'auth.example.test' (server.portal_url)"),
    ({"password_reset": {"enable": True}}, "notifier: required by password_reset.enable"),
    ({"notifier": {"smtp": {"host": "mail.example.com", "sender": "p@example.com", "tls": "none"}}},
     "notifier.smtp.tls: none is allowed only to a server on this machine"),
    ({"password_policy": {"min_length": 20, "max_length": 16}}, "password_policy.max_length: must be at least"),
    ({"webauthn": {"rp_id": "other.test"}},
     "webauthn.rp_id: 'other.test' does not cover the portal host 'auth.example.test' (server.portal_url)"),
    ({"webauthn": {"rp_id": "10.0.0.1"}}, "webauthn.rp_id: Value error, '10.0.0.1' is not a domain name"),
    ({"webauthn": {"user_verification": "always"}}, "webauthn.user_verification: Input should be 'preferred'"),
    ({"session": {"cookie_secure": True}},
     "server.portal_url: is http:// but session.cookie_secure is true: browsers do not send Secure cookies back"),
    ({"access_control": {"rules": [{"resources": ["^/x"], "policy": "deny"}]}},
     "access_control.rules[0].domain: a rule needs domain or domain_regex"),
    ({"access_control": {"rules": [{"domain": "x.test", "policy": "bypass", "subject": ["group:a"]}]}},
     "access_control.rules[0].subject: a bypass rule cannot have a subject"),
    ({"access_control": {"rules": [{"domain": "x.test", "policy": "deny"},
                                   {"domain": "x.test", "policy": "deny", "networks": ["office"]}]}},
     "access_control.rules[1].networks: 'office' is neither a CIDR nor a name from access_control.networks"),
    ({"authentication": {"backend": "ldap", "ldap": {"url": "ldaps://dc.test", "base_dn": "dc=test",
                                                     "start_tls": True, "user": "cn=svc"}}},
     "authentication.ldap.start_tls: cannot be combined with an ldaps:// URL (authentication.ldap.url)"),
    ({"authentication": {"backend": "ldap", "ldap": {"url": "ldap://dc.test", "base_dn": "dc=test", "user": "cn=svc"}}},
     "authentication.ldap.password: required (or password_file) when authentication.ldap.user is set"),
], ids=lambda v: str(v)[:40])
def test_broken_configs_exit_2_naming_the_key(portal_setup, change, expected):
    portal_setup.write(**change)
    code, output = check(portal_setup.config_path)
    assert code == 2
    assert expected.replace("Value error, ", "") in output
    assert "(top level)" not in output


def test_missing_secret_is_refused(portal_setup):
    document = portal_setup.document()
    del document["secret_key"]
    portal_setup.config_path.write_text(yaml.safe_dump(document))
    code, output = check(portal_setup.config_path)
    assert code == 2
    assert "secret_key: required (or secret_key_file)" in output


def test_short_secret_is_refused(portal_setup):
    portal_setup.write(secret_key="short")
    code, output = check(portal_setup.config_path)
    assert code == 2 and "secret_key: must be at least 32 characters" in output


def test_malformed_yaml_names_the_line_but_never_echoes_it(portal_setup):
    # The broken line holds an inline secret: the error must place it without quoting it.
    secret = "s3cr3t-" + "x" * 40
    portal_setup.config_path.write_text(f'server:\n  address: "127.0.0.1:9091"\nsecret_key: "{secret}" typo\n')
    code, output = check(portal_setup.config_path)
    assert code == 2 and "malformed YAML (line 3, column 63: invalid trailing content after double-quoted scalar)" in output
    assert secret not in output and "s3cr3t" not in output


def test_duplicate_keys_are_an_error_not_last_one_wins(portal_setup):
    portal_setup.config_path.write_text(portal_setup.config_path.read_text() + "log: {level: debug}\nlog: {level: info}\n")
    code, output = check(portal_setup.config_path)
    assert code == 2 and "duplicate mapping key: 'log'" in output


def test_missing_config_file(tmp_path):
    code, output = check(tmp_path / "nope.yml")
    assert code == 2 and "cannot read the configuration file" in output


def test_missing_users_file_exits_2(portal_setup):
    portal_setup.users_path.unlink()
    code, output = check(portal_setup.config_path)
    assert code == 2 and "authentication.file.path:" in output and "cannot read" in output


def test_malformed_users_file_exits_2(portal_setup):
    portal_setup.users_path.write_text("users:\n  bob:\n    password: plaintext\n")
    code, output = check(portal_setup.config_path)
    assert code == 2 and "plain-text passwords are refused" in output


def test_all_errors_are_reported_at_once(portal_setup):
    portal_setup.write(bogus=1, session={"expiration": "soon"}, server={"workers": 0})
    code, output = check(portal_setup.config_path)
    assert code == 2
    assert all(part in output for part in ("bogus: unknown key", "session.expiration", "server.workers"))


def test_schema_users_file_and_domain_errors_are_reported_in_one_run(portal_setup):
    """Issue 15: the users file was checked only once the schema was clean, the domain only on the run after."""
    portal_setup.write(regulation={"max_retries": 0}, session={"domain": "other.test"})
    portal_setup.users_path.write_text("users:\n  bob:\n    password: plaintext\n")
    code, output = check(portal_setup.config_path)
    assert code == 2
    lines = output.splitlines()
    assert lines[0] == "configuration errors:"
    assert any(line.startswith("  regulation.max_retries: Input should be greater than or equal to 1") for line in lines)
    assert any(line.startswith("  session.domain: 'other.test' does not cover the portal host") for line in lines)
    assert any(line.startswith("  authentication.file.path: ") and "plain-text passwords are refused" in line
               for line in lines)
    assert len(lines) == 4 and "(top level)" not in output


def test_a_check_between_keys_runs_beside_an_error_in_the_same_section(portal_setup):
    portal_setup.write(session={"domain": "other.test", "expiration": "soon"},
                       access_control={"rules": [{"resources": ["(["], "policy": "deny"}]})
    code, output = check(portal_setup.config_path)
    assert code == 2
    for expected in ("session.expiration: invalid duration 'soon'", "session.domain: 'other.test' does not cover",
                     "access_control.rules[0].resources: invalid regular expression",
                     "access_control.rules[0].domain: a rule needs domain or domain_regex"):
        assert expected in output


def test_a_check_between_keys_stays_quiet_when_a_key_it_reads_is_broken(portal_setup):
    # portal_url is invalid: its own error is enough, not a second one computed from the default URL.
    portal_setup.write(server={"portal_url": "auth.example.test"}, session={"cookie_secure": True})
    code, output = check(portal_setup.config_path)
    assert code == 2
    assert output.splitlines()[1:] == ["  server.portal_url: must be an absolute http(s) URL, e.g. https://auth.example.com"]


def test_durations():
    from authportal.config import parse_duration

    assert [parse_duration(v) for v in ("90s", "5m", "1h", "30d", "1h30m", 45, "120")] == \
        [90, 300, 3600, 2592000, 5400, 45, 120]
    for bad in ("5 minutes", "", "-3s", "1x", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_environment_overrides_and_secret_files(portal_setup, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-a-file-" + "x" * 40 + "\n")
    document = portal_setup.document()
    del document["secret_key"]
    document["secret_key_file"] = str(secret)
    portal_setup.config_path.write_text(yaml.safe_dump(document))
    config = load_config(portal_setup.config_path, {
        "AUTHPORTAL_SESSION__EXPIRATION": "2h",
        "AUTHPORTAL_SESSION__REDIS__URL": "redis://127.0.0.1:6390/1",
        "AUTHPORTAL_SERVER__TRUSTED_PROXIES": "[10.0.0.0/8]",
    })
    assert config.secret_key.get_secret_value() == "from-a-file-" + "x" * 40
    assert config.session.expiration == 7200
    assert config.session.redis is not None and config.session.redis.url.endswith("/1")
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.0/8"]


def test_environment_values_are_text_converted_to_the_key_type(portal_setup):
    # A secret with " #" or only digits stays exactly as given (YAML would cut a comment or make a number).
    for secret in ["k" * 40 + " #tail", "0123456789" * 4, "[not-a-list" + "z" * 32]:
        config = load_config(portal_setup.config_path, {"AUTHPORTAL_SECRET_KEY": secret})
        assert config.secret_key.get_secret_value() == secret
    config = load_config(portal_setup.config_path, {
        "AUTHPORTAL_SESSION__COOKIE_SECURE": "False", "AUTHPORTAL_SESSION__INACTIVITY": "600",
        "AUTHPORTAL_SERVER__THREADS": "7", "AUTHPORTAL_ACCESS_CONTROL__DEFAULT_POLICY": "one_factor",
    })
    assert (config.session.cookie_secure, config.session.inactivity, config.server.threads,
            config.access_control.default_policy) == (False, 600.0, 7, "one_factor")
    with pytest.raises(ConfigError) as caught:
        load_config(portal_setup.config_path, {"AUTHPORTAL_SERVER__THREADS": "many"})
    assert "server.threads: " in str(caught.value)


def test_secret_and_secret_file_together_is_an_error(portal_setup, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("y" * 40)
    with pytest.raises(ConfigError) as caught:
        load_config(portal_setup.config_path, {"AUTHPORTAL_SECRET_KEY_FILE": str(secret)})
    assert "set either secret_key or secret_key_file" in str(caught.value)


def test_env_override_of_an_unknown_key_is_an_error(portal_setup):
    with pytest.raises(ConfigError) as caught:
        load_config(portal_setup.config_path, {"AUTHPORTAL_SESSION__COLOUR": "blue"})
    assert "session.colour: unknown key" in str(caught.value)


def test_secret_values_never_appear_in_errors(portal_setup):
    with pytest.raises(ConfigError) as caught:
        parse_config(dict(portal_setup.document(), bogus=True), {})
    assert portal_setup.document()["secret_key"] not in str(caught.value)


def test_risky_settings_warn(portal_setup):
    portal_setup.write(access_control={"default_policy": "bypass", "rules": []},
                       server={"trusted_proxies": ["0.0.0.0/0"]})
    code, output = check(portal_setup.config_path)
    assert code == 0
    assert "nothing is protected" in output and "any client can forge" in output
    assert "cookie_secure is false" in output


def test_every_config_key_is_documented():
    """The configuration reference (docs/configuration.md) names every key of the schema."""
    import typing
    from pathlib import Path

    from pydantic import BaseModel

    from authportal.config import Config, _nested_models

    readme = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    missing = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            if f"`{path}`" not in readme:
                missing.append(path)
            is_list = typing.get_origin(field.annotation) is list
            for candidate in _nested_models(field.annotation):
                walk(candidate, path + ("[]." if is_list else "."))

    walk(Config, "")
    assert not missing, f"undocumented keys: {missing}"


def test_bad_ldap_filter_is_a_config_error(portal_setup):
    portal_setup.write(authentication={"backend": "ldap", "ldap": {
        "url": "ldap://127.0.0.1:1", "base_dn": "dc=example,dc=com", "users_filter": "(uid={input}"}})
    code, output = check(portal_setup.config_path)
    assert code == 2 and "authentication.ldap.users_filter" in output and "unbalanced parentheses" in output


def test_unreadable_secret_file_names_its_key(portal_setup, tmp_path):
    document = portal_setup.document()
    del document["secret_key"]
    document["secret_key_file"] = str(tmp_path / "missing-secret")
    document["authentication"] = {"backend": "ldap", "ldap": {
        "url": "ldap://127.0.0.1:1", "base_dn": "dc=x", "user": "cn=svc", "password_file": str(tmp_path / "nope")}}
    portal_setup.config_path.write_text(yaml.safe_dump(document))
    code, output = check(portal_setup.config_path)
    assert code == 2
    assert "secret_key_file: cannot read" in output and "(top level)" not in output
    assert "authentication.ldap.password_file: cannot read" in output
