"""examples/monitoring/: the Grafana dashboard, the alerting rules and the scrape snippet, against the real product.

The metric names are not written down here: they come from the `/metrics` of a
served portal after a login, failed logins (form, Basic, token), a ban and a few verifies, so a
renamed metric in authportal breaks this test, not only a typo in an example.
promtool (Debian's prometheus package) checks the rules, runs their unit tests
(examples/monitoring/alerts.test.yml) and checks the dashboard's queries; a real
Prometheus then scrapes the served portal with scrape.yml, evaluates alerts.yml
and answers every dashboard query.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import require_binary, wait_until
from tests.servers.process import REPO
from tests.servers.prometheus import Prometheus
from tests.support.portal import USERS, PortalSetup, ServedPortal, login

EXAMPLES = REPO / "examples" / "monitoring"
DASHBOARD = EXAMPLES / "grafana-dashboard.json"
ALERTS = EXAMPLES / "alerts.yml"
SCRAPE = EXAMPLES / "scrape.yml"

#: Series Prometheus itself adds to every scrape target; the only non-authportal names the examples may use.
PROMETHEUS_SYNTHETIC = {"up"}

#: What Grafana puts in place of its variables before sending a query (values only need to be valid PromQL).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$job": ".*",
                     "$instance": ".*"}

#: Histogram series; families without a sample yet get the names their TYPE implies.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count"),
            "gauge": ("",), "untyped": ("",)}


# -- the real metric names ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[ServedPortal]:
    setup = PortalSetup(tmp_path_factory.mktemp("monitoring") / "portal",
                        overrides={"regulation": {"max_retries": 2}})
    with ServedPortal(setup) as portal:
        yield portal


@pytest.fixture(scope="module")
def exposition(served) -> str:
    """/metrics after the events the examples graph: logins (good and bad), a ban, verifies (Basic, token, cookie, none)."""
    base = f"http://auth.example.test:{served.setup.port}"  # the portal_url: the session cookie's domain
    http = requests.Session()
    assert login(http, base, "bob").status_code == 302
    assert login(requests.Session(), base, "alice", password="wrong").status_code == 401
    for _ in range(2):  # max_retries: 2 -> carol is banned
        login(requests.Session(), base, "carol", password="wrong")
    original = {"X-Original-URL": "http://app.example.test/prometheus/graph", "X-Original-Method": "GET"}
    for _ in range(2):  # a cache miss, then a hit
        basic = requests.get(base + "/api/verify", headers=original, auth=("bob", USERS["bob"]["password"]),
                             timeout=10)
        assert basic.status_code == 200
    assert http.get(base + "/api/verify", headers=original, timeout=10).status_code == 200
    assert requests.get(base + "/api/verify", headers=original, timeout=10).status_code == 401
    # Failed machine checks on the verify path: failed logins too (one wrong Basic password, one unknown token).
    assert requests.get(base + "/api/verify", headers=original, auth=("bob", "wrong"), timeout=10).status_code == 401
    assert requests.get(base + "/api/verify", headers={**original, "Authorization": "Bearer ap_" + "C" * 43},
                        timeout=10).status_code == 401
    answer = requests.get(served.url + "/metrics", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    return answer.text


@pytest.fixture(scope="module")
def real_names(exposition) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(exposition):
        if family.samples:
            names |= {sample.name for sample in family.samples}
        else:
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def test_the_portal_exposes_what_the_examples_graph(real_names, exposition):
    """The scrape itself: every family the dashboard needs is there, with the histogram series."""
    for name in ("authportal_logins_total", "authportal_verify_decisions_total", "authportal_bans_total",
                 "authportal_backend_errors_total", "authportal_credentials_cache_lookups_total",
                 "authportal_config_reloads"):
        assert name in real_names
    for histogram in ("authportal_verify_duration_seconds", "authportal_login_duration_seconds"):
        assert {histogram + s for s in ("_bucket", "_sum", "_count")} <= real_names
    assert 'authportal_bans_total{kind="user"} 1.0' in exposition  # the ban really happened
    assert 'authportal_credentials_cache_lookups_total{result="hit"}' in exposition


def test_series_the_alerts_rely_on_exist_from_the_start(exposition):
    """Ban and backend-error series are there at 0 before their first event: AuthportalBans and
    AuthportalBackendErrors are plain increase()/rate(), which cannot see a series that appears at 1."""
    assert 'authportal_bans_total{kind="ip"} 0.0' in exposition  # no IP was banned, the series is there
    for backend in ("users_file", "ldap", "redis", "storage"):
        assert f'authportal_backend_errors_total{{backend="{backend}"}} 0.0' in exposition
    for result in ("success", "bad_credentials", "totp_failed", "banned", "backend_error"):
        assert f'authportal_logins_total{{result="{result}"}}' in exposition


def test_machine_client_failures_are_failed_logins(exposition):
    """Wrong Basic credentials and unknown tokens on the verify path count as failed logins (as the README
    says); machine clients' successes do not count as logins."""
    # bad_credentials: alice and carol twice at the form, bob by Basic, one token; success: bob's form login
    # only (his two Basic verifies are not logins).
    assert 'authportal_logins_total{result="bad_credentials"} 5.0' in exposition
    assert 'authportal_logins_total{result="success"} 1.0' in exposition


# -- a small PromQL reader: which metric names does an expression select? -------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "atan2", "inf", "nan", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
            "count_values", "bottomk", "topk", "quantile"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z0-9_]*")
STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
NAME_MATCHER = re.compile(r'__name__\s*=\s*("(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\')')


def _skip_group(expr: str, i: int, opening: str, closing: str) -> int:
    """Index after the bracket group starting at expr[i] (strings inside are skipped whole)."""
    depth = 0
    while i < len(expr):
        if string := STRING.match(expr, i):
            i = string.end()
            continue
        depth += {opening: 1, closing: -1}.get(expr[i], 0)
        i += 1
        if depth == 0:
            return i
    raise ValueError(f"unbalanced {opening!r} in {expr!r}")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (bare names and `{__name__="..."}` matchers)."""
    names: set[str] = set()
    i = 0
    while i < len(expr):
        char = expr[i]
        if string := STRING.match(expr, i):
            i = string.end()
        elif char == "{":
            end = _skip_group(expr, i, "{", "}")
            names |= {m[1][1:-1] for m in NAME_MATCHER.finditer(expr[i:end])}
            i = end
        elif char == "[":
            i = _skip_group(expr, i, "[", "]")
        elif char == "$":  # a Grafana variable left in place
            i = IDENTIFIER.match(expr, i + 1).end() if IDENTIFIER.match(expr, i + 1) else i + 1
        elif number := NUMBER.match(expr, i):
            i = number.end()
        elif word := IDENTIFIER.match(expr, i):
            i = word.end()
            rest = expr[i:].lstrip()
            if word[0].lower() in LABEL_LISTS and rest.startswith("("):
                i = _skip_group(expr, len(expr) - len(rest), "(", ")")
            elif not rest.startswith("(") and word[0].lower() not in KEYWORDS:
                names.add(word[0])
        else:
            i += 1
    return names


def test_the_metric_name_reader():
    """The checks below are only as good as this reader: it must find names and must not see labels as names."""
    assert metric_names('histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{x="y}"}[5m])))') == {"a_bucket"}
    assert metric_names('sum without (instance) (b) / on (job) group_left (kind) c offset 10m > bool 0.5') == {
        "b", "c"}
    assert metric_names('{__name__="d", job=~"$job"} or topk(3, e) unless absent(f) and 1e-3 * inf') == {"d", "e",
                                                                                                       "f"}
    assert metric_names('rate(authportal_login_total{result!="success"}[$__rate_interval])') == {
        "authportal_login_total"}  # the misspelling a test below must catch


def unknown_names(expressions: dict[str, str], real: set[str]) -> dict[str, set[str]]:
    return {where: names for where, expr in expressions.items()
            if (names := metric_names(expr) - real - PROMETHEUS_SYNTHETIC)}


# -- the dashboard ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dashboard: dict) -> dict[str, str]:
    """Every PromQL expression in the dashboard: panel targets, and the metric of each label_values() variable."""
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries[f"panel {panel['id']} ({panel['title']}) {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
        assert match, f"variable {variable['name']}: unexpected query {query!r}"
        queries[f"variable ${variable['name']}"] = match[1]
    return queries


def grafana_substituted(expr: str) -> str:
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_dashboard_is_an_importable_grafana_dashboard(dashboard):
    [source] = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    assert dashboard["uid"] and dashboard["title"] and dashboard["id"] is None and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        # Every panel, query and variable reads the imported data source: nothing points at a uid of ours.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"] and all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_has_the_panels_an_operator_needs(dashboard):
    queries = "\n".join(dashboard_queries(dashboard).values())
    needed = {
        "login results": r"sum by \(result\) \(rate\(authportal_logins_total\{",
        "failed logins": r'authportal_logins_total\{result=~"bad_credentials\|totp_failed\|banned"',
        "bans": r"authportal_bans_total",
        "verify decisions by result": r"sum by \(result\) \(rate\(authportal_verify_decisions_total",
        "verify p50": r"histogram_quantile\(0\.5, sum by \(le\) \(rate\(authportal_verify_duration_seconds_bucket",
        "verify p99": r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(authportal_verify_duration_seconds_bucket",
        "login latency": r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(authportal_login_duration_seconds_bucket",
        "backend errors": r"authportal_backend_errors_total",
        "cache hit ratio": r'authportal_credentials_cache_lookups_total\{result="hit".*\n/\n.*'
                           r"authportal_credentials_cache_lookups_total",
        "instances up": r"\bup\{",
    }
    missing = [what for what, pattern in needed.items() if not re.search(pattern, queries)]
    assert not missing, f"no panel for: {missing}"


def test_dashboard_queries_use_only_metrics_authportal_exposes(dashboard, real_names):
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 16
    assert not unknown_names(queries, real_names)
    # ... and every metric authportal exposes is on the dashboard.
    used = set().union(*(metric_names(expr) for expr in queries.values()))
    family = lambda name: re.sub(r"_(bucket|sum|count)$", "", name)  # noqa: E731
    assert {family(name) for name in real_names} == {family(name) for name in used} - PROMETHEUS_SYNTHETIC


def test_dashboard_queries_are_valid_promql(dashboard, tmp_path):
    """promtool parses each query (Grafana variables filled in as Grafana would) as a recording rule."""
    promtool = require_binary("promtool")
    rules = [{"record": f"dashboard:query_{n}", "expr": grafana_substituted(expr)}
             for n, expr in enumerate(dashboard_queries(dashboard).values())]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the alerting rules and the scrape snippet ------------------------------------------------------------------

@pytest.fixture(scope="module")
def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool_run(*args: str, cwd: Path = EXAMPLES) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules():
    result = promtool_run("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    """alerts.test.yml: each alert fires on the series it is for, at the time it should, and not otherwise."""
    result = promtool_run("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (EXAMPLES / "alerts.test.yml").read_text()))
    assert tested == {rule["alert"] for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]}


def test_promtool_checks_the_scrape_snippet_with_its_rules():
    result = promtool_run("check", "config", str(SCRAPE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout  # rule_files: alerts.yml, found beside it


def test_alerts_cover_the_failure_modes(alert_rules):
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules}
    assert re.search(r'\bup\{job="authportal"\} == 0', exprs["AuthportalDown"])
    assert "authportal_logins_total" in exprs["AuthportalFailedLoginSpike"]
    assert "authportal_bans_total" in exprs["AuthportalBans"]
    assert "authportal_backend_errors_total" in exprs["AuthportalBackendErrors"]
    assert "histogram_quantile(0.99" in exprs["AuthportalVerifyLatencyHigh"]
    assert "authportal_verify_duration_seconds_bucket" in exprs["AuthportalVerifyLatencyHigh"]
    assert 'result=~"error|bad_request"' in exprs["AuthportalVerifyErrors"]
    for rule in alert_rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_alert_expressions_use_only_metrics_authportal_exposes(alert_rules, real_names):
    assert not unknown_names({rule["alert"]: rule["expr"] for rule in alert_rules}, real_names)
    snippet = yaml.safe_load(SCRAPE.read_text())
    [job] = snippet["scrape_configs"]
    assert job["job_name"] == "authportal" and job["metrics_path"] == "/metrics"


# -- all of it in a real Prometheus ---------------------------------------------------------------------------

class ExamplePrometheus(Prometheus):
    """Prometheus run from examples/monitoring/scrape.yml (target and interval changed) with alerts.yml beside it."""

    def __init__(self, target: str) -> None:
        super().__init__("http://prometheus.example.test/", route_prefix="/")
        self.target = target

    def config(self) -> str:
        config = yaml.safe_load(SCRAPE.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        [job] = config["scrape_configs"]
        job["scrape_interval"] = "1s"  # the example's 15s, shortened for the test
        job["static_configs"] = [{"targets": [self.target]}]
        return yaml.safe_dump(config)

    def prepare(self) -> None:
        super().prepare()
        shutil.copy(ALERTS, self.dir / "alerts.yml")

    def api(self, path: str, **params) -> dict:
        answer = requests.get(self.url(f"/api/v1/{path}"), params=params, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", body
        return body["data"]


def test_a_real_prometheus_scrapes_the_portal_evaluates_the_alerts_and_answers_the_dashboard(
        served, exposition, dashboard):
    with ExamplePrometheus(served.url.removeprefix("http://")) as prometheus:
        def scraped_twice() -> bool:  # rate() needs two samples
            found = prometheus.api("query", query='count_over_time(up{job="authportal"}[1m])')["result"]
            return bool(found) and float(found[0]["value"][1]) >= 2
        wait_until(scraped_twice, timeout=60, what="two scrapes of the portal", process=prometheus.process,
                   log=prometheus.log)
        [target] = prometheus.api("targets")["activeTargets"]
        assert target["health"] == "up" and target["labels"]["job"] == "authportal", target

        def evaluated() -> list[dict]:
            rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                          not r["lastEvaluation"].startswith("0001") for r in rules) else []
        wait_until(lambda: bool(evaluated()), timeout=60, what="alert rules evaluated")
        rules = evaluated()
        assert len(rules) == 7
        assert all(rule["health"] == "ok" and not rule.get("lastError") for rule in rules), rules
        firing = {rule["name"] for rule in rules if rule["state"] != "inactive"}
        assert "AuthportalDown" not in firing

        # The dashboard's variables find the job and the instance; every query runs and returns data, even
        # backend errors, which never happened (their series exist at 0 from the start).
        assert "authportal" in prometheus.api("label/job/values", **{"match[]": "authportal_logins_total"})
        empty = []
        for where, expr in dashboard_queries(dashboard).items():
            if where.startswith("variable"):
                continue
            result = prometheus.api("query", query=grafana_substituted(expr))["result"]
            if not result:
                empty.append(where)
        assert not empty, f"queries without data: {empty}"
