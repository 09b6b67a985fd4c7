"""Rules that cannot leak silently: `check-config` warns about fall-through, shadowed and bypassed rules,
and `authportal access check` explains which rule decides a request and why the earlier ones did not.

The story: the admins keep Prometheus' admin API behind a second factor, the monitoring group may read
Prometheus. Written as two rules, bob (monitoring, not admin) falls through the admin rule to the
monitoring rule and reaches the admin API; check-config says so, and says which rule to add.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from authportal.access_lint import lint_access_rules
from authportal.authorization import AccessRules
from authportal.cli import main
from authportal.config import AccessControlConfig
from authportal.regex_facts import covers, samples
from tests.support.portal import ServedPortal

REPO = Path(__file__).resolve().parent.parent
PROM = "prometheus.example.test"
ADMIN_API = {"domain": PROM, "resources": ["^/api/v1/admin/"]}
ADMINS_TWO_FACTOR = {**ADMIN_API, "subject": ["group:admins"], "policy": "two_factor"}
MONITORING = {"domain": PROM, "subject": ["group:monitoring"], "policy": "one_factor"}
LEAKY = [ADMINS_TWO_FACTOR, MONITORING]
FIXED = [ADMINS_TWO_FACTOR, {**ADMIN_API, "policy": "deny"}, MONITORING]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def check_config(setup, rules: list[dict], default: str = "deny") -> tuple[int, list[str]]:
    setup.write(access_control={"default_policy": default, "rules": rules})
    code, output = run("check-config", "--config", str(setup.config_path))
    return code, [line for line in output.splitlines() if line.startswith("warning: access_control")]


def access_check(setup, url: str, *options: str) -> tuple[int, str]:
    return run("access", "check", url, *options, "--config", str(setup.config_path))


def lint(rules: list[dict], default: str = "deny", networks: list[dict] | None = None) -> list[str]:
    config = AccessControlConfig.model_validate({"default_policy": default, "rules": rules, "networks": networks or []})
    return [str(finding) for finding in lint_access_rules(config)]


# check-config: the three warnings

def test_the_admin_rule_alone_lets_bob_fall_through_to_the_monitoring_rule_and_check_config_says_which_rule_to_add(
        portal_setup):
    code, warnings = check_config(portal_setup, LEAKY)
    assert code == 0  # warnings only: still valid
    assert warnings == [
        "warning: access_control.rules[0] (two_factor for group:admins) does not stop anyone else: they fall "
        "through to access_control.rules[1] (one_factor), e.g. a user in group:monitoring gets "
        f"GET https://{PROM}/api/v1/admin/. Fix: add the rule "
        f'{{domain: ["{PROM}"], resources: ["^/api/v1/admin/"], policy: deny}} right after rules[0].'
    ]
    # The example in the warning is real: bob (monitoring) is let in by rules[1].
    code, output = access_check(portal_setup, f"https://{PROM}/api/v1/admin/", "--user", "bob")
    assert code == 0
    assert "access_control.rules[0]  no match: subject (bob in monitoring is not group:admins)" in output
    assert "access_control.rules[1]  decides: policy one_factor\nanswer:   allowed (200)" in output

    code, warnings = check_config(portal_setup, FIXED)  # the rule the warning asked for
    assert (code, warnings) == (0, [])


def test_falling_through_to_a_default_policy_that_lets_users_in_warns(portal_setup):
    code, warnings = check_config(portal_setup, [ADMINS_TWO_FACTOR], default="one_factor")
    assert code == 0 and len(warnings) == 1
    assert "fall through to access_control.default_policy (one_factor), e.g. any signed-in user gets" in warnings[0]
    assert "right after rules[0]" in warnings[0]
    assert check_config(portal_setup, [ADMINS_TWO_FACTOR, {**ADMIN_API, "policy": "deny"}], "one_factor")[1] == []


def test_a_rule_behind_a_broader_one_can_never_match(portal_setup):
    broad = {"domain": "*.example.test", "policy": "one_factor"}
    code, warnings = check_config(portal_setup, [broad, ADMINS_TWO_FACTOR])
    assert code == 0
    assert warnings == [
        "warning: access_control.rules[1] can never match: access_control.rules[0] comes first and matches every "
        "request it would (its domain, resources, methods, networks and subject cover those of rules[1]). "
        "Fix: move rules[1] above rules[0], or remove it."
    ]
    # moved above it (with the admin API denied to everyone else, or the warning above would follow)
    assert check_config(portal_setup, [ADMINS_TWO_FACTOR, {**ADMIN_API, "policy": "deny"}, broad])[1] == []


@pytest.mark.parametrize("earlier, later, shadowed", [
    ({"domain_regex": r"(pub|img)-data\.example\.test"}, {"domain": "img-data.example.test"}, True),
    ({"domain": PROM, "networks": ["10.0.0.0/8"]}, {"domain": PROM, "networks": ["10.1.0.0/16"]}, True),
    ({"domain": PROM, "methods": ["GET", "HEAD"]}, {"domain": PROM, "methods": ["HEAD"]}, True),
    ({"domain": PROM, "subject": ["group:a"]}, {"domain": PROM, "subject": [["group:a", "group:b"]]}, True),
    ({"domain": PROM, "resources": ["^/api/"]}, {"domain": PROM, "resources": ["^/api/v1/", "^/api/v2/"]}, True),
    ({"domain": "*.example.test"}, {"domain": "example.test"}, False),            # a wildcard is not the apex
    ({"domain": PROM, "subject": ["group:a"]}, {"domain": PROM}, False),          # others reach the later rule
    ({"domain": PROM, "networks": ["10.1.0.0/16"]}, {"domain": PROM, "networks": ["10.0.0.0/8"]}, False),
    ({"domain": PROM, "methods": ["GET"]}, {"domain": PROM}, False),
    ({"domain": PROM, "resources": ["^/api/v1/"]}, {"domain": PROM, "resources": ["^/api/v1/", "^/x/"]}, False),
], ids=lambda v: str(v)[:50] if isinstance(v, dict) else str(v))
def test_shadowed_only_when_every_criterion_is_covered(earlier, later, shadowed):
    warnings = lint([{**earlier, "policy": "one_factor"}, {**later, "policy": "two_factor"}])
    assert any("rules[1] can never match" in w for w in warnings) is shadowed, warnings


def test_a_bypass_over_a_path_a_later_rule_protects_warns(portal_setup):
    app = "app.example.test"
    public_api = {"domain": app, "resources": ["^/api/"], "policy": "bypass"}  # meant: /api/health
    admin = {"domain": [app, PROM], "resources": ["^/api/v1/admin/"], "policy": "two_factor"}
    code, warnings = check_config(portal_setup, [public_api, admin])
    assert code == 0
    assert warnings == [
        "warning: access_control.rules[0] (bypass) lets anyone through to what access_control.rules[1] protects "
        '(two_factor): its resources cover "^/api/v1/admin/", e.g. GET https://app.example.test/api/v1/admin/ is '
        "let through by rules[0] without a login. Fix: move rules[1] above rules[0], or narrow rules[0]'s resources."
    ]
    narrowed = {**public_api, "resources": ["^/api/health$"]}
    assert check_config(portal_setup, [narrowed, admin])[1] == []
    assert check_config(portal_setup, [admin, public_api])[1] == []


@pytest.mark.parametrize("resource, request_line", [
    (r"\.css$", "GET https://app.example.test/authportal-lint?q=.css"),
    ("/public/", "GET https://app.example.test/authportal-lint?q=/public/"),
])
def test_a_bypass_that_is_not_anchored_warns_because_a_query_opens_any_path(portal_setup, resource, request_line):
    """Resources are searched in the path and the ?query: an unanchored bypass lets `/admin/?x=.css` through."""
    bypass = {"domain": "app.example.test", "resources": [resource], "policy": "bypass"}
    code, warnings = check_config(portal_setup, [bypass, {"domain": "app.example.test", "policy": "one_factor"}])
    assert code == 0
    assert warnings == [
        f"warning: access_control.rules[0] (bypass) is not anchored at the start of the path: its resource "
        f"{json.dumps(resource)} is searched in the path and the ?query, so {request_line} is let through without "
        "a login whatever its path. Fix: start it with ^/ (e.g. ^/static/.*\\.css$ or ^/public/)."
    ]
    anchored = {**bypass, "resources": ["^/" + resource.lstrip("/")]}
    assert check_config(portal_setup, [anchored, {"domain": "app.example.test", "policy": "one_factor"}])[1] == []


def test_serve_logs_the_same_warnings_at_start(portal_setup):
    """An operator who never runs check-config still reads the fall-through in the portal's log."""
    portal_setup.write(access_control={"default_policy": "deny", "rules": LEAKY})
    with ServedPortal(portal_setup) as served:
        logs = served.logs()
    assert logs.count("does not stop anyone else") == 1, logs  # once: the parent, not every worker


def test_errors_still_exit_2_and_warnings_do_not_hide_them(portal_setup):
    portal_setup.write(bogus=1, access_control={"rules": LEAKY})
    code, output = run("check-config", "--config", str(portal_setup.config_path))
    assert code == 2 and "bogus: unknown key" in output


@pytest.mark.parametrize("rules, default", [
    # admins need two factors on the whole host, everyone else one: same scope, a deliberate grant
    ([{"domain": PROM, "subject": ["group:admins"], "policy": "two_factor"}, {"domain": PROM, "policy": "one_factor"}],
     "deny"),
    # a sibling rule naming the same scope for another group is deliberate too
    ([ADMINS_TWO_FACTOR, {**ADMIN_API, "methods": ["GET"], "subject": ["group:monitoring"], "policy": "one_factor"},
      {**ADMIN_API, "policy": "deny"}, MONITORING], "deny"),
    # public exceptions before the protected host; a CORS preflight bypass; trusted networks
    ([{"domain": "app.example.test", "resources": ["^/public/"], "policy": "bypass"},
      {"domain": "app.example.test", "policy": "one_factor"}], "deny"),
    ([{"domain": "app.example.test", "methods": ["OPTIONS"], "resources": ["^/api/"], "policy": "bypass"},
      {"domain": "app.example.test", "resources": ["^/api/v1/admin/"], "policy": "two_factor"}], "deny"),
    ([{"domain": "app.example.test", "networks": ["internal"], "policy": "bypass"},
      {"domain": "app.example.test", "resources": ["^/admin/"], "policy": "two_factor"}], "deny"),
    # deny a group, let the others in: a subject on a deny rule restricts nothing
    ([{"domain": PROM, "subject": ["group:contractors"], "policy": "deny"}, {"domain": PROM, "policy": "one_factor"}],
     "deny"),
    # a narrower bypass inside a protected prefix is an exception, not a leak
    ([{"domain": PROM, "resources": ["^/api/v1/status/buildinfo$"], "policy": "bypass"},
      {"domain": PROM, "resources": ["^/api/"], "policy": "one_factor"}], "deny"),
    # regexes that cannot be compared soundly give no warning (case-insensitive, alternation)
    ([{"domain": PROM, "resources": ["(?i)^/API/"], "policy": "bypass"},
      {"domain": PROM, "resources": ["^/api/v1/admin/"], "policy": "two_factor"}], "deny"),
    ([{"domain": PROM, "resources": ["^/a|/api/"], "policy": "one_factor"},
      {"domain": PROM, "resources": ["^/api/v1/"], "policy": "two_factor"}], "deny"),
    # other hosts never meet
    ([{"domain": "a.example.test", "subject": ["group:x"], "policy": "two_factor"},
      {"domain": "b.example.test", "policy": "one_factor"}], "deny"),
], ids=["same-scope 2FA for admins", "sibling rule", "public exception", "CORS preflight", "internal network",
        "deny a group", "narrow bypass", "case-insensitive regex", "top-level alternation", "other hosts"])
def test_deliberate_rule_orders_do_not_warn(rules, default):
    assert lint(rules, default, networks=[{"name": "internal", "networks": ["10.0.0.0/8"]}]) == []


def test_a_partial_overlap_warns_with_a_request_the_real_matcher_lets_through():
    """openldap.yml before its fix: the monitoring rule only takes GET/HEAD, but GET on the admin API leaks."""
    rules = [ADMINS_TWO_FACTOR, {"domain": [PROM, "alertmanager.example.test"], "methods": ["GET", "HEAD"],
                                 "subject": ["group:monitoring", "group:admins"], "policy": "one_factor"}]
    [warning] = lint(rules)
    assert f"a user in group:monitoring gets GET https://{PROM}/api/v1/admin/" in warning
    decision = AccessRules(AccessControlConfig.model_validate({"rules": rules})).decide(
        PROM, "/api/v1/admin/", "GET", "192.0.2.1", "bob", frozenset({"monitoring"}))
    assert (decision.rule, decision.policy) == (1, "one_factor")


def _shipped_access_sections() -> list[tuple[str, dict]]:
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "examples").rglob("*.md"))]:
        for number, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), re.S)):
            if "access_control:" in block:
                found.append((f"{doc.relative_to(REPO)} block {number}", yaml.safe_load(block)["access_control"]))
    for path in sorted((REPO / "examples").rglob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and "access_control" in document:
                found.append((str(path.relative_to(REPO)), document["access_control"]))
    return found


def test_the_shipped_examples_and_docs_give_no_warning():
    sections = _shipped_access_sections()
    names = [name for name, _ in sections]
    assert {"examples/ldap/openldap.yml", "examples/ldap/activedirectory.yml"} <= set(names)
    assert any(n.startswith("docs/configuration.md") for n in names) and any(n.startswith("README.md") for n in names)
    for name, section in sections:
        assert lint_access_rules(AccessControlConfig.model_validate(section)) == [], name


def test_the_test_suites_seed_rules_give_no_warning(portal_setup):
    code, output = run("check-config", "--config", str(portal_setup.config_path))
    assert code == 0 and "warning: access_control" not in output


# authportal access check

def test_access_check_explains_an_allowed_request(portal_setup):
    portal_setup.write(access_control={"rules": FIXED})
    code, output = access_check(portal_setup, f"https://{PROM}/graph?g0.expr=up", "--user", "bob")
    assert code == 0
    assert output == (
        f"request:  GET https://{PROM}/graph?g0.expr=up\n"
        f"          judged as host {PROM}, path /graph?g0.expr=up\n"
        "who:      bob in monitoring (from the users file), signed in with one factor\n"
        "client:   no --ip given: rules with networks do not match\n"
        "\n"
        'access_control.rules[0]  no match: resources (/graph?g0.expr=up matches none of ["^/api/v1/admin/"])\n'
        'access_control.rules[1]  no match: resources (/graph?g0.expr=up matches none of ["^/api/v1/admin/"])\n'
        "access_control.rules[2]  decides: policy one_factor\n"
        "answer:   allowed (200)\n"
    )


def test_access_check_shows_bob_stopped_by_the_deny_rule_after_the_fix(portal_setup):
    portal_setup.write(access_control={"rules": FIXED})
    # judged on the path the proxy routes: dot segments and %-encoding resolved, the port dropped
    code, output = access_check(portal_setup, f"https://{PROM.upper()}:443/graph/../api/v1/%61dmin/tsdb/snapshot",
                                "--user", "bob", "--method", "post")
    assert code == 0
    assert f"judged as host {PROM}, path /api/v1/admin/tsdb/snapshot\n" in output
    assert "access_control.rules[0]  no match: subject (bob in monitoring is not group:admins)\n" in output
    assert output.endswith("access_control.rules[1]  decides: policy deny\nanswer:   forbidden (403)\n")


def test_access_check_says_when_a_second_factor_is_needed(portal_setup):
    portal_setup.write(access_control={"rules": FIXED})
    url = f"https://{PROM}/api/v1/admin/tsdb/snapshot"
    code, output = access_check(portal_setup, url, "--user", "alice", "--method", "POST")
    assert code == 0
    assert "who:      alice in admins, monitoring (from the users file), signed in with one factor\n" in output
    assert output.endswith("access_control.rules[0]  decides: policy two_factor\n"
                           "answer:   second factor needed (401, or a redirect to the portal for the TOTP code)\n")
    code, output = access_check(portal_setup, url, "--user", "alice", "--factor", "two")
    assert output.endswith("answer:   allowed (200)\n")
    code, output = access_check(portal_setup, url)  # anonymous: the subject cannot be judged yet
    assert output.endswith("access_control.rules[0]  decides: log in first (it has a subject; its policy two_factor "
                           "applies once the user is known)\nanswer:   login needed (401, or a redirect to the portal)\n")


def test_access_check_names_the_first_criterion_each_earlier_rule_missed(portal_setup):
    portal_setup.write(access_control={
        "networks": [{"name": "office", "networks": ["10.0.0.0/8"]}],
        "rules": [
            {"domain": "other.example.test", "policy": "bypass"},
            {"domain": PROM, "methods": ["POST"], "policy": "deny"},
            {"domain": PROM, "networks": ["office"], "policy": "bypass"},
            {"domain": PROM, "subject": [["group:admins", "group:monitoring"], "user:carol"], "policy": "one_factor"},
        ]})
    code, output = access_check(portal_setup, f"https://{PROM}/", "--groups", "monitoring", "--ip", "192.0.2.7")
    assert code == 0
    assert "who:      a user in monitoring (--groups, no name), signed in with one factor\n" in output
    assert (f"access_control.rules[0]  no match: domain ({PROM} is not other.example.test)\n"
            "access_control.rules[1]  no match: methods (GET is not POST)\n"
            "access_control.rules[2]  no match: networks (192.0.2.7 is in none of office)\n"
            "access_control.rules[3]  no match: subject (a user in monitoring is not group:admins and "
            "group:monitoring or user:carol)\n"
            "no rule matches: access_control.default_policy decides: deny\n"
            "answer:   forbidden (403)\n") in output
    code, output = access_check(portal_setup, f"https://{PROM}/", "--ip", "10.1.2.3")
    assert output.endswith("access_control.rules[2]  decides: policy bypass\nanswer:   allowed (200), no login needed\n")
    code, output = access_check(portal_setup, f"https://{PROM}/", "--user", "bob", "--groups", "")
    assert "who:      bob in no group (--groups)" in output
    assert "access_control.rules[2]  no match: networks (office; no client address: give --ip)" in output


@pytest.mark.parametrize("args, message", [
    (["https://x.example.test/../etc"], "the verify endpoint would refuse its path (400): the path climbs above"),
    (["x.example.test/"], "the verify endpoint would refuse it (400)"),
    (["https://x.example.test/", "--ip", "nope"], "'nope' is not an IP address"),
    (["https://x.example.test/", "--factor", "two"], "--factor two needs --user or --groups"),
    (["https://x.example.test/", "--user", "mallory"], "'mallory' is not a known, enabled user in the users file"),
    (["https://x.example.test/", "--user", "dave"], "'dave' is not a known, enabled user"),  # disabled
], ids=["climbs above root", "not absolute", "bad ip", "factor without user", "unknown user", "disabled user"])
def test_access_check_usage_errors_exit_2(portal_setup, args, message):
    code, output = access_check(portal_setup, *args)
    assert code == 2 and message in output


def test_access_check_with_a_broken_config_exits_2(portal_setup):
    portal_setup.write(bogus=1)
    code, output = access_check(portal_setup, "https://x.example.test/")
    assert code == 2 and "bogus: unknown key" in output


def test_access_check_with_the_directory_down_exits_1_and_suggests_groups(portal_setup):
    portal_setup.write(authentication={"backend": "ldap", "file": None, "ldap": {
        "url": "ldap://127.0.0.1:1", "base_dn": "dc=example,dc=test", "timeout": "1s"}})
    code, output = access_check(portal_setup, f"https://{PROM}/", "--user", "bob")
    assert code == 1 and "cannot read bob's groups from LDAP" in output and "--groups" in output
    code, output = access_check(portal_setup, f"https://{PROM}/", "--user", "bob", "--groups", "monitoring")
    assert code == 0 and "who:      bob in monitoring (--groups)" in output


def test_access_help_reads_for_a_newcomer():
    code, output = run("access", "check", "--help")
    assert code == 0
    for part in ("Explain how the access rules answer one request to URL", "--user", "--groups", "--method", "--ip",
                 "--factor", "Examples:", "Exit codes"):
        assert part in output


# The pieces underneath

def test_explain_is_decide_plus_the_reasons():
    rules = AccessRules(AccessControlConfig.model_validate({"rules": FIXED}))
    for user, groups, method in [("bob", {"monitoring"}, "GET"), ("alice", {"admins"}, "POST"), (None, set(), "GET")]:
        for path in ("/api/v1/admin/x", "/graph"):
            explained = rules.explain(PROM, path, method, "", user, frozenset(groups))
            assert explained.decision == rules.decide(PROM, path, method, "", user, frozenset(groups))
    assert rules.explain(PROM, "/api/v1/admin/x", "GET", "", "bob", frozenset({"monitoring"})).misses == (
        (0, "subject"),)
    assert rules.explain("elsewhere.test", "/", "GET", "", None, frozenset()).misses == (
        (0, "domain"), (1, "domain"), (2, "domain"))


@pytest.mark.parametrize("general, specific, expected", [
    ("^/api/v1/admin/", "^/api/v1/admin/", True),
    ("^/api/", "^/api/v1/admin/(tsdb|status)", True),
    ("^/api/.*", "^/api/v1/", True),
    ("^/public", "^/publications/", True),                 # no trailing slash: it does cover it
    ("admin", "^/api/v1/admin/", True),                    # unanchored literal inside the prefix
    ("^/api/$", "^/api/", False),                          # `$` ends the match
    ("^/api/v1/", "^/api/", False),
    ("^/api/", "(?i)^/api/v1/", False),                    # case-insensitive: /API/v1/ too
    ("^/api/", "^/api/v1/|/other", False),                 # a top-level alternation
    ("(?m)^/api/", "^/api/v1/", False),
    ("^/(prometheus/)?api/", "^/api/v1/", False),          # not a literal prefix: don't know
])
def test_regex_covers_only_what_it_can_prove(general, specific, expected):
    assert covers(general, specific) is expected


def test_regex_samples_are_matches():
    assert samples("^/(prometheus/)?api/v1/admin/") == ["/api/v1/admin/", "/prometheus/api/v1/admin/"]
    assert samples(r"(pub|img)-data\.example\.com") == ["pub-data.example.com", "img-data.example.com"]
    assert samples(r"^/-/(reload|quit)$") == ["/-/reload", "/-/quit"]
    assert samples(r"(a)\1") == []  # back-references: no guess
