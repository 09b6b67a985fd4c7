"""Debian's real Prometheus and Alertmanager behind examples/nginx/seed-layout.conf and the served portal.

The seed article's layout: both under one host, /prometheus/ and /alertmanager/,
started with their external URL so that their own links and redirects carry the
prefix. Debian's Prometheus has only the classic UI; Debian's Alertmanager has
no web UI (a placeholder page), so it is tested through its API.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.servers import free_port
from tests.servers.prometheus import Alertmanager, Prometheus
from tests.support.portal import login
from tests.support.stacks import NginxStack, nginx_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream) -> Iterator[NginxStack]:
    port = free_port()  # nginx's port must be known first: it is part of both external URLs
    base = f"http://app.example.test:{port}"
    with Prometheus(f"{base}/prometheus/") as prometheus, Alertmanager(f"{base}/alertmanager/") as alertmanager:
        with nginx_stack("seed-layout", tmp_path_factory.mktemp("prometheus"), {
            "PROMETHEUS": f"127.0.0.1:{prometheus.port}", "ALERTMANAGER": f"127.0.0.1:{alertmanager.port}",
            "PUBLIC": f"127.0.0.1:{upstream.port}"}, port=port) as started:
            yield started


@pytest.fixture(scope="module")
def sessions(stack) -> dict[str, requests.Session]:
    """A logged-in client per user, through nginx and the login form (one login each for the module)."""
    clients = {}
    for user in ("alice", "bob", "carol"):
        http = requests.Session()
        answer = login(http, stack.portal_base, user, rd=app(stack, "/prometheus/"))
        assert answer.status_code == 302, answer.text
        clients[user] = http
    return clients


def app(stack: NginxStack, path: str) -> str:
    return stack.url("app.example.test", path)


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_monitoring_users_get_the_prometheus_ui_and_its_assets(stack, sessions, user):
    http = sessions[user]
    page = http.get(app(stack, "/prometheus/"), timeout=10)  # follows Prometheus's own redirects
    assert page.status_code == 200
    assert urlsplit(page.url).path == "/prometheus/classic/graph"  # the prefix survived every redirect
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<title>Prometheus Time Series Collection and Processing Server</title>" in page.text
    assets = re.findall(r'(?:src|href)="(/prometheus/classic/static/[^"]+)"', page.text)
    assert assets, "the classic UI links its assets under the external URL's path"
    css = next(asset for asset in assets if ".css" in asset)
    asset = http.get(app(stack, css), timeout=10)
    assert asset.status_code == 200 and asset.headers["Content-Type"].startswith("text/css")
    assert "{" in asset.text


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_monitoring_users_query_the_prometheus_api(stack, sessions, user):
    http = sessions[user]
    answer = http.get(app(stack, "/prometheus/api/v1/query"), params={"query": "up"}, timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert body["status"] == "success" and body["data"]["resultType"] == "vector"
    for sample in body["data"]["result"]:  # empty until the first self-scrape (1 s interval)
        assert sample["metric"]["job"] == "prometheus"
    arithmetic = http.get(app(stack, "/prometheus/api/v1/query"), params={"query": "6*7"}, timeout=10).json()
    assert arithmetic["status"] == "success" and arithmetic["data"]["result"][1] == "42"


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_monitoring_users_read_the_alertmanager_api(stack, sessions, user):
    answer = sessions[user].get(app(stack, "/alertmanager/api/v2/status"), timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    status = answer.json()
    assert status["cluster"]["status"] in ("disabled", "ready", "settling")
    assert "receiver: \"null\"" in status["config"]["original"]  # the test's own config, served through nginx
    assert status["versionInfo"]["version"]
    alerts = sessions[user].get(app(stack, "/alertmanager/api/v2/alerts"), timeout=10)
    assert alerts.status_code == 200 and alerts.json() == []


def test_user_outside_monitoring_is_refused(stack, sessions):
    for path in ("/prometheus/", "/prometheus/api/v1/query?query=up", "/alertmanager/api/v2/status"):
        answer = sessions["carol"].get(app(stack, path), allow_redirects=False, timeout=10)
        assert answer.status_code == 403, path
        assert "403 Forbidden" in answer.text and "Prometheus" not in answer.text and "versionInfo" not in answer.text


def test_anonymous_is_sent_to_the_portal(stack):
    for path in ("/prometheus/graph?g0.expr=up", "/alertmanager/api/v2/status"):
        answer = requests.get(app(stack, path), allow_redirects=False, timeout=10)
        assert answer.status_code == 302
        location = urlsplit(answer.headers["Location"])
        assert f"{location.scheme}://{location.netloc}" == stack.portal_base
        assert parse_qs(location.query)["rd"] == [app(stack, path)]
        assert "Prometheus" not in answer.text


def test_rules_per_path_and_method_hold_through_nginx(stack, sessions):
    """SEED_RULES: silences are written by admins only (with a second factor), admin APIs likewise."""
    silence = {"matchers": [{"name": "job", "value": "x", "isRegex": False}], "startsAt": "2030-01-01T00:00:00Z",
               "endsAt": "2030-01-02T00:00:00Z", "createdBy": "test", "comment": "test"}
    bob = sessions["bob"].post(app(stack, "/alertmanager/api/v2/silences"), json=silence, allow_redirects=False,
                               timeout=10)
    assert bob.status_code == 403 and "403 Forbidden" in bob.text
    # alice is an admin but logged in with a password only: sent back to the portal for her second factor.
    alice = sessions["alice"].post(app(stack, "/alertmanager/api/v2/silences"), json=silence,
                                   allow_redirects=False, timeout=10)
    assert alice.status_code == 302 and alice.headers["Location"].startswith(stack.portal_base + "/?rd=")
    snapshot = sessions["bob"].post(app(stack, "/prometheus/api/v1/admin/tsdb/snapshot"), allow_redirects=False,
                                    timeout=10)
    assert snapshot.status_code == 403
    # Reading silences is a GET: the monitoring rule lets bob read them.
    listed = sessions["bob"].get(app(stack, "/alertmanager/api/v2/silences"), timeout=10)
    assert listed.status_code == 200 and listed.json() == []
