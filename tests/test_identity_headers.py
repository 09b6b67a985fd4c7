"""Identity headers shaped for the application: `identity.headers` templates, users-file attributes, a rule's
own headers with a value chosen by group, and no header injection from directory data. In-process; the same
through nginx, HAProxy and Caddy with slapd is tests/test_identity_headers_proxies.py."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from authportal.cli import main
from tests.support.in_process import ProxiedClient, post_login, verify
from tests.support.portal import USERS, basic_header, users_document

GRAFANA = "http://grafana.example.test/d/home"
HEADERS = {"X-WEBAUTH-USER": "{username}", "X-WEBAUTH-EMAIL": "{email}", "X-Employee": "{attributes.employeeNumber}",
           "X-Team": "{groups}"}
RULES = [
    {"domain": "grafana.example.test", "subject": ["group:admins", "group:monitoring"], "policy": "one_factor",
     "headers": {"X-WEBAUTH-ROLE": {"from_groups": {"admins": "Admin", "monitoring": "Viewer"}, "default": None},
                 "X-Team": "team-{groups}"}},
    {"domain": "plain.example.test", "policy": "one_factor"},
]


@pytest.fixture
def app(app_with, portal_setup):
    people = {name: dict(entry) for name, entry in USERS.items()}
    people["alice"]["attributes"] = {"employeeNumber": "4711"}
    people["bob"]["displayname"] = "Bob\r\nX-WEBAUTH-USER: alice"  # a directory value trying to inject a header
    portal_setup.write_users(people)
    return app_with(identity={"headers": HEADERS}, access_control={"default_policy": "deny", "rules": RULES})


def check(path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    return result.exit_code, result.output


def answer(client, url: str, **extra: str) -> dict[str, str]:
    reply = verify(client, url, **extra)
    assert reply.status_code == 200, reply.status_code
    return {k: v for k, v in reply.headers.items() if k.startswith("X-")}


def test_templates_attributes_and_a_role_chosen_by_group(app):
    alice = ProxiedClient(app)
    assert post_login(alice, "alice").status_code == 302
    assert answer(alice, GRAFANA) == {"X-WEBAUTH-USER": "alice", "X-WEBAUTH-EMAIL": "alice@example.test",
                                      "X-Employee": "4711", "X-Team": "team-admins,monitoring",
                                      "X-WEBAUTH-ROLE": "Admin"}
    # another rule: only identity.headers (the rule adds nothing), and never the four Remote-* (replaced)
    assert answer(alice, "http://plain.example.test/") == {
        "X-WEBAUTH-USER": "alice", "X-WEBAUTH-EMAIL": "alice@example.test", "X-Employee": "4711",
        "X-Team": "admins,monitoring"}
    assert "Remote-User" not in verify(alice, "http://plain.example.test/").headers


def test_the_first_matching_group_wins_and_no_group_means_no_header(app):
    bob = ProxiedClient(app, use_cookies=False)  # Basic: machine clients get the same headers
    seen = answer(bob, GRAFANA, Authorization=basic_header("bob"))
    assert seen["X-WEBAUTH-ROLE"] == "Viewer" and seen["X-Employee"] == ""


def test_a_value_with_a_line_break_is_not_sent(app, caplog):
    bob = ProxiedClient(app)
    assert post_login(bob, "bob").status_code == 302
    reply = verify(bob, GRAFANA)
    assert reply.status_code == 200 and reply.headers.getlist("X-WEBAUTH-USER") == ["bob"]
    assert all("\n" not in value and "\r" not in value for _, value in reply.headers.items())


@pytest.mark.parametrize("headers, error", [
    ({"Host": "{username}"}, "identity.headers: Value error, 'Host' is a header the proxy or the application reads"),
    ({"X A": "{username}"}, "is not a header name"),
    ({"X-User": "{user}"}, "unknown placeholder {user}"),
    ({"X-User": "{username!r}"}, "takes no format or conversion"),
])
def test_bad_header_settings_are_refused_naming_the_key(portal_setup, headers, error):
    portal_setup.write(identity={"headers": headers})
    code, output = check(portal_setup.config_path)
    assert code == 2 and error.replace("Value error, ", "") in output, output


def test_users_file_attributes_are_validated(portal_setup):
    document = users_document()
    document["users"]["alice"]["attributes"] = {"employeeNumber": 4711}
    portal_setup.write_users(None)
    portal_setup.users_path.write_text(yaml.safe_dump(document))
    code, output = check(portal_setup.config_path)
    assert code == 2 and "attributes" in output
