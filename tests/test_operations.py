"""Operations: /metrics counts, audit JSON lines, health, SIGHUP reload — on the real server."""
from __future__ import annotations

import json
import os
import re
import signal

import pytest
import requests
import yaml

from tests.servers import wait_until
from tests.support.in_process import ProxiedClient
from tests.support.portal import PortalSetup, ServedPortal, login

PROM = "http://app.example.test/prometheus/graph"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.M)
    for found_labels, value in pattern.findall(text):
        if ",".join(sorted(found_labels.split(","))) == wanted or (not wanted and not found_labels):
            return float(value)
    return 0.0


def scripted_sequence(url: str) -> None:
    """2 good logins, 3 bad ones (the third bans carol), 10 verifies."""
    sessions = []
    for user in ("alice", "bob"):
        http = requests.Session()
        assert login(http, url, user).status_code == 302
        sessions.append(http)
    for _ in range(3):
        assert login(requests.Session(), url, "carol", "wrong").status_code == 401
    for i in range(10):
        assert sessions[i % 2].get(url + "/api/verify", headers={"X-Original-Method": "GET", "X-Original-URL": PROM}).status_code == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_exactly_what_happened(tmp_path, workers, redis_server):
    overrides = {"regulation": {"max_retries": 3}}
    if workers > 1:  # bans must be shared by the workers to be counted once
        overrides["session"] = {"redis": {"url": redis_server.url.replace("/0", f"/{workers}")}}
    setup = PortalSetup(tmp_path, overrides=overrides)
    with ServedPortal(setup, "--workers", str(workers)):
        url = f"http://auth.example.test:{setup.port}"
        scripted_sequence(url)
        text = requests.get(url + "/metrics").text
    assert metric(text, "authportal_logins_total", result="success") == 2
    assert metric(text, "authportal_logins_total", result="bad_credentials") == 3
    assert metric(text, "authportal_bans_total", kind="user") == 1
    assert metric(text, "authportal_verify_decisions_total", result="allowed", policy="one_factor") == 10
    assert metric(text, "authportal_verify_duration_seconds_count") == 10
    assert metric(text, "authportal_login_duration_seconds_count") == 5


def test_audit_log_is_json_lines_with_the_facts(tmp_path):
    setup = PortalSetup(tmp_path)
    with ServedPortal(setup) as served:
        url = f"http://auth.example.test:{setup.port}"
        http = requests.Session()
        http.headers["User-Agent"] = "audit-test/1.0"
        http.headers["X-Request-ID"] = "req-login-1"
        login(http, url, "bob", "wrong-password")
        login(http, url, "bob")
        http.get(url + "/api/verify", headers={"X-Original-Method": "GET", "X-Original-URL": "http://alertmanager.example.test/",
                                               "X-Forwarded-For": "192.0.2.44", "X-Request-ID": "req-123"})
        from tests.support.portal import csrf_from

        http.post(url + "/logout", data={"csrf_token": csrf_from(http.get(url + "/logout").text)})
        audit_file = setup.directory / "audit.log"
        wait_until(lambda: audit_file.exists() and '"logout"' in audit_file.read_text(), timeout=5,
                   what="audit events")
        served_logs = served.logs()
    events = [json.loads(line) for line in audit_file.read_text().splitlines()]
    by_kind = {e["event"]: e for e in events}
    failure = by_kind["login_failure"]
    assert (failure["user"], failure["ip"], failure["reason"], failure["user_agent"], failure["request_id"]) == \
        ("bob", "127.0.0.1", "bad_credentials", "audit-test/1.0", "req-login-1")
    assert failure["logger"] == "authportal.audit" and failure["time"].endswith("Z")
    success = by_kind["login_success"]
    assert (success["user"], success["factor"], success["remember"]) == ("bob", "password", False)
    denied = by_kind["access_denied"]
    assert (denied["user"], denied["ip"], denied["url"], denied["method"], denied["rule"], denied["request_id"]) == \
        ("bob", "192.0.2.44", "http://alertmanager.example.test/", "GET", "default", "req-123")
    assert by_kind["logout"]["user"] == "bob"
    everything = audit_file.read_text() + served_logs
    assert "wrong-password" not in everything and "bob-Secret-2" not in everything
    assert "authportal_session" not in everything


def test_health_reports_each_backend(tmp_path):
    setup = PortalSetup(tmp_path)
    with ServedPortal(setup) as served:
        url = f"http://127.0.0.1:{setup.port}"
        ready = requests.get(url + "/api/health")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "checks": {"users_file": {"status": "ok"}, "storage": {"status": "ok"}}}
        assert requests.get(url + "/api/health/live").json() == {"status": "ok"}
        setup.users_path.write_text("users: [broken\n")

        def down() -> bool:
            answer = requests.get(url + "/api/health")
            return answer.status_code == 503 and answer.json()["checks"]["users_file"]["status"] == "down"

        wait_until(down, timeout=30, what="health to report the broken users file")
        # which backend, not why: the reason (here a path on the server) is for the log only
        assert requests.get(url + "/api/health").json() == {"status": "down", "checks": {
            "users_file": {"status": "down"}, "storage": {"status": "ok"}}}
        assert str(setup.users_path) not in requests.get(url + "/api/health").text
        wait_until(lambda: f"backend users_file is down: {setup.users_path}: malformed YAML" in served.log.read_text(),
                   timeout=30, what="the reason in the log")
        assert requests.get(url + "/api/health/live").status_code == 200  # still serving


def test_sighup_reloads_rules_and_keeps_sessions_and_refuses_a_broken_config(tmp_path):
    setup = PortalSetup(tmp_path)
    with ServedPortal(setup) as served:
        url = f"http://auth.example.test:{setup.port}"
        http = requests.Session()
        login(http, url, "bob")
        target = {"X-Original-Method": "GET", "X-Original-URL": "http://new.example.test/"}
        assert http.get(url + "/api/verify", headers=target).status_code == 403  # default deny
        rules = setup.document()["access_control"]["rules"] + [
            {"domain": "new.example.test", "subject": ["user:bob"], "policy": "one_factor"}]
        setup.write(access_control={"rules": rules})
        os.kill(served.process.pid, signal.SIGHUP)
        wait_until(lambda: http.get(url + "/api/verify", headers=target).status_code == 200, timeout=15,
                   what="new rule after SIGHUP")
        # broken config: refused, old one keeps serving, error logged, counted
        document = yaml.safe_load(setup.config_path.read_text())
        document["session"]["expiration"] = "whenever"
        setup.config_path.write_text(yaml.safe_dump(document))
        os.kill(served.process.pid, signal.SIGHUP)
        wait_until(lambda: "configuration reload refused" in served.logs(), timeout=10, what="refusal logged")
        assert "session.expiration: invalid duration 'whenever'" in served.logs()
        wait_until(lambda: metric(requests.get(url + "/metrics").text, "authportal_config_reloads",
                                  result="failure") == 1, timeout=15, what="failed reload counted")
        assert http.get(url + "/api/verify", headers=target).status_code == 200
        assert metric(requests.get(url + "/metrics").text, "authportal_config_reloads", result="success") == 1


def test_metrics_can_be_restricted_to_networks(tmp_path):
    setup = PortalSetup(tmp_path, overrides={"metrics": {"networks": ["10.0.0.0/8"]}})
    with ServedPortal(setup):
        refused = requests.get(f"http://127.0.0.1:{setup.port}/metrics")
        assert refused.status_code == 403 and "authportal_logins_total" not in refused.text


@pytest.mark.parametrize("forwarded_for, status", [
    (None, 200), ("10.1.2.3", 200), ("192.168.7.7", 200), ("fd00::5", 200),
    ("203.0.113.5", 403), ("2001:db8::1", 403), ("not-an-address", 400),
])
def test_metrics_are_for_private_networks_by_default(app, forwarded_for, status):
    """Behind the proxy the client is the X-Forwarded-For address: the internet does not read the counters."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    answer = ProxiedClient(app).get("/metrics", base_url="http://auth.example.test", headers=headers)
    assert answer.status_code == status
    assert ("authportal_logins_total" in answer.get_data(as_text=True)) == (status == 200)


def test_json_logs_and_a_debug_line_per_verify(tmp_path):
    setup = PortalSetup(tmp_path, overrides={"log": {"format": "json", "level": "debug"}})
    with ServedPortal(setup) as served:
        url = f"http://auth.example.test:{setup.port}"
        http = requests.Session()
        login(http, url, "bob")
        http.get(url + "/api/verify", headers={"X-Original-Method": "GET", "X-Original-URL": PROM, "X-Request-ID": "req-verify-9"})
        wait_until(lambda: "req-verify-9" in served.logs(), timeout=30, what="verify debug line")
        lines = [json.loads(line) for line in served.logs().splitlines() if line.startswith("{")]
    verify_lines = [line for line in lines if line["logger"] == "authportal.verify"]
    assert verify_lines and verify_lines[-1]["level"] == "debug"
    assert "-> 200 allowed policy=one_factor request_id=req-verify-9" in verify_lines[-1]["message"]
    logins = [line for line in lines if line.get("event") == "login_success"]
    assert logins and logins[0]["user"] == "bob" and logins[0]["level"] == "info"
