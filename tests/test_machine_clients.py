"""examples/machine-clients/: Prometheus, curl and Grafana through a REAL nginx (the seed layout) with Basic and tokens.

The stack: examples/nginx/seed-layout.conf in front of the served portal, a
real Alertmanager at /alertmanager/ and the recording stub at /prometheus/ (so
the tests see the `Remote-User` the application receives). Tokens are made and
revoked with the `authportal tokens` CLI, as an operator does, while the portal
serves.

- prometheus-scrape-alertmanager.yml runs in a real Prometheus scraping the
  protected Alertmanager; revoking its token turns the target down with a 401.
- every `curl` block of curl.md runs with the real curl.
- grafana-datasource.yml: the requests Grafana makes with each data source
  (Grafana itself has no Debian package, so it does not run here).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import free_port, require_binary, wait_until
from tests.servers.process import REPO, render
from tests.servers.prometheus import Alertmanager, ScrapingPrometheus
from tests.support.portal import USERS, login
from tests.support.stacks import NginxStack, nginx_stack

EXAMPLES = REPO / "examples" / "machine-clients"
#: A service user for Grafana, added to the test's users file (group monitoring may read both apps).
GRAFANA_USER = {"password": "grafana-Secret-5", "displayname": "Grafana", "email": "grafana@example.test",
                "groups": ["monitoring"]}
#: Users the ban test locks out (each its own, so that no other test meets their bans).
BANNED_USERS = {
    "erin": {"password": "erin-Secret-6", "displayname": "Erin", "email": "erin@example.test", "groups": ["monitoring"]},
    "frank": {"password": "frank-Secret-7", "displayname": "Frank", "email": "frank@example.test",
              "groups": ["monitoring"]},
}
#: regulation.max_retries for the stack: low, so that the ban test spends few of the client IP's
#: ip_max_retries (20): every test's requests come from 127.0.0.1, and a banned IP would fail them all.
#: bob's own wrong passwords (one in test_basic_and_token_requests_through_nginx, one in curl.md) stay below it.
MAX_RETRIES = 3
#: What the portal answers a refused token with (RFC 6750), and wrong Basic credentials with.
BEARER_CHALLENGE = 'Bearer realm="authportal", error="invalid_token"'
BASIC_CHALLENGE = 'Basic realm="authportal"'


# -- the stack and the CLI ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream) -> Iterator[NginxStack]:
    port = free_port()  # nginx's port is part of Alertmanager's external URL
    stub = f"127.0.0.1:{upstream.port}"
    with Alertmanager(f"http://app.example.test:{port}/alertmanager/") as alertmanager:
        with nginx_stack("seed-layout", tmp_path_factory.mktemp("machine-clients"), {
                "PROMETHEUS": stub, "ALERTMANAGER": f"127.0.0.1:{alertmanager.port}", "PUBLIC": stub},
                portal_overrides={"regulation": {"max_retries": MAX_RETRIES}}, port=port) as started:
            started.portal.replace_users({**USERS, "grafana": GRAFANA_USER, **BANNED_USERS})
            probe = app(started, "/prometheus/users-file-reloaded")
            assert requests.get(probe, auth=("grafana", GRAFANA_USER["password"]), allow_redirects=False,
                                timeout=5).status_code == 200
            yield started


def app(stack: NginxStack, path: str) -> str:
    return stack.url("app.example.test", path)


def authportal(*args: str) -> subprocess.CompletedProcess:
    """The `authportal` command an operator runs (the venv's console script)."""
    script = Path(sys.executable).with_name("authportal")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "authportal"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


def create_token(stack: NginxStack, user: str, name: str, *limits: str) -> tuple[str, str]:
    """(stdout exactly as printed, token id): what `authportal tokens create` gives a script."""
    config = str(stack.portal.setup.config_path)
    created = authportal("tokens", "create", user, "--name", name, *limits, "--config", config)
    assert created.returncode == 0, created.stderr
    assert re.fullmatch(r"ap_[A-Za-z0-9_-]{43}\n", created.stdout), "stdout holds the token alone"
    listed = authportal("tokens", "list", user, "--config", config)
    assert created.stdout.strip() not in listed.stdout
    [token_id] = [row.split()[0] for row in listed.stdout.splitlines()[1:] if row.split()[2] == name]
    return created.stdout, token_id


def revoke_token(stack: NginxStack, token_id: str) -> None:
    revoked = authportal("tokens", "revoke", token_id, "--config", str(stack.portal.setup.config_path))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout + revoked.stderr, revoked


def reached(upstream, path: str) -> list:
    return [seen for seen in list(upstream.requests) if seen.path == path]


# -- Prometheus scraping the protected Alertmanager -----------------------------------------------------------------

def scrape_config(stack: NginxStack, token_file: Path) -> str:
    text = render((EXAMPLES / "prometheus-scrape-alertmanager.yml").read_text(), {
        "SCHEME": "http", "TARGET": f"app.example.test:{stack.port}", "TOKEN_FILE": token_file})
    config = yaml.safe_load(text)
    [job] = config["scrape_configs"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": str(token_file)}
    assert job["metrics_path"] == "/alertmanager/metrics" and job["follow_redirects"] is False
    # Test-only changes: scrape every second (not 30 s), and reach app.example.test (no DNS here) through
    # nginx as an HTTP proxy: nginx then sees the same request line and Host as from a resolved name.
    job.update(scrape_interval="1s", scrape_timeout="1s", proxy_url=f"http://127.0.0.1:{stack.port}")
    return yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, **config})


def test_prometheus_scrapes_the_protected_alertmanager_with_a_token_until_it_is_revoked(stack, tmp_path):
    printed, token_id = create_token(stack, "bob", "prometheus")
    token_file = tmp_path / "authportal-token"
    token_file.write_text(printed)  # as `authportal tokens create ... > file` leaves it: newline included
    token_file.chmod(0o400)

    with ScrapingPrometheus(scrape_config(stack, token_file)) as prometheus:
        wait_until(lambda: (prometheus.target("alertmanager") or {}).get("health") == "up", timeout=30,
                   what="alertmanager target up", process=prometheus.process, log=prometheus.log)
        target = prometheus.target("alertmanager")
        assert target["scrapeUrl"] == app(stack, "/alertmanager/metrics") and target["lastError"] == ""
        # What came through nginx is Alertmanager's own exposition, not a login page.
        wait_until(lambda: bool(prometheus.query('alertmanager_build_info{job="alertmanager"}')),
                   timeout=10, what="alertmanager metrics in Prometheus")

        revoke_token(stack, token_id)
        revoked_at = time.monotonic()
        wait_until(lambda: (prometheus.target("alertmanager") or {}).get("health") == "down", timeout=60,
                   what="alertmanager target down after the revocation", process=prometheus.process,
                   log=prometheus.log)
        took = time.monotonic() - revoked_at
        target = prometheus.target("alertmanager")
        assert "401" in target["lastError"], target["lastError"]  # a clear 401, not a redirect or parse error
        # token cache 1 s + scrape interval 1 s + the scrape in flight: about 2 s. 10 s is the margin of a busy
        # machine, and still fails a token that outlives its revocation in the 60 s credentials cache.
        assert took < 10, f"revocation took {took:.1f}s to stop the scrapes"

    refused = requests.get(app(stack, "/alertmanager/metrics"), headers={"Authorization": f"Bearer {printed.strip()}"},
                           allow_redirects=False, timeout=10)
    assert refused.status_code == 401 and "Location" not in refused.headers
    assert refused.headers["WWW-Authenticate"] == BEARER_CHALLENGE


# -- what curl does, request by request ----------------------------------------------------------------------------

def test_basic_and_token_requests_through_nginx(stack, upstream):
    base = "/prometheus/api/v1/query?query=up&client="
    ok = requests.get(app(stack, base + "basic"), auth=("bob", USERS["bob"]["password"]), allow_redirects=False,
                      timeout=10)
    assert ok.status_code == 200 and "Set-Cookie" not in ok.headers  # no session for a machine client
    [seen] = reached(upstream, base + "basic")
    assert seen.headers["Remote-User"] == "bob" and seen.headers["Remote-Groups"] == "monitoring"

    wrong = requests.get(app(stack, base + "wrong"), auth=("bob", "wrong"), allow_redirects=False, timeout=10)
    assert wrong.status_code == 401 and "Location" not in wrong.headers
    assert wrong.headers["WWW-Authenticate"] == BASIC_CHALLENGE
    assert reached(upstream, base + "wrong") == []

    printed, token_id = create_token(stack, "bob", "curl")
    bearer = {"Authorization": f"Bearer {printed.strip()}"}
    by_token = requests.get(app(stack, base + "token"), headers=bearer, allow_redirects=False, timeout=10)
    assert by_token.status_code == 200
    [seen] = reached(upstream, base + "token")
    assert seen.headers["Remote-User"] == "bob"
    alertmanager = requests.get(app(stack, "/alertmanager/api/v2/status"), headers=bearer, timeout=10)
    assert alertmanager.status_code == 200 and alertmanager.json()["versionInfo"]["version"]

    unknown = requests.get(app(stack, base + "unknown"), headers={"Authorization": "Bearer ap_" + "A" * 43},
                           allow_redirects=False, timeout=10)
    assert unknown.status_code == 401 and "Location" not in unknown.headers
    assert unknown.headers["WWW-Authenticate"] == BEARER_CHALLENGE  # a refused token: not a Basic prompt
    revoke_token(stack, token_id)
    # Until the portal's token cache (session.cache_ttl, 1 s) lapses the token may still pass; then never. The
    # 15 s deadline is the margin of a busy machine, and still fails a token kept for the 60 s credentials cache.
    wait_until(lambda: requests.get(app(stack, base + "revoking"), headers=bearer, allow_redirects=False,
                                    timeout=10).status_code == 401, timeout=15, what="revoked token refused")
    revoked = requests.get(app(stack, base + "revoked"), headers=bearer, allow_redirects=False, timeout=10)
    assert revoked.status_code == 401 and "Location" not in revoked.headers
    assert revoked.headers["WWW-Authenticate"] == BEARER_CHALLENGE

    # Authenticated, but the rules say no (carol is not in monitoring): 403, not a login prompt.
    carol = requests.get(app(stack, base + "carol"), auth=("carol", USERS["carol"]["password"]),
                         allow_redirects=False, timeout=10)
    assert carol.status_code == 403 and reached(upstream, base + "carol") == []
    # No credentials at all: taken for a browser, sent to the login page.
    anonymous = requests.get(app(stack, base + "anonymous"), allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith(stack.portal_base + "/?rd=")
    assert all(reached(upstream, base + name) == [] for name in ("unknown", "revoked", "anonymous"))


GRAFANA_READS = r"^/prometheus/api/v1/(query|query_range|series|labels|label/)"


def test_a_token_limited_to_queries_reads_them_and_nothing_else(stack, upstream):
    """`tokens create --methods GET,HEAD --resources REGEX`: a Grafana data source that can only read queries."""
    printed, _ = create_token(stack, "alice", "grafana-read", "--methods", "GET,HEAD", "--resources", GRAFANA_READS)
    listed = authportal("tokens", "list", "alice", "--config", str(stack.portal.setup.config_path)).stdout
    assert "GET,HEAD" in listed and GRAFANA_READS in listed
    bearer = {"Authorization": f"Bearer {printed.strip()}"}
    query = "/prometheus/api/v1/query_range?query=up&client=limited"
    assert requests.get(app(stack, query), headers=bearer, allow_redirects=False, timeout=10).status_code == 200
    [seen] = reached(upstream, query)
    assert seen.headers["Remote-User"] == "alice"
    for method, path in (("POST", "/prometheus/api/v1/query?client=limited-post"),  # a method it may not use
                         ("GET", "/prometheus/api/v1/status/config?client=limited"),  # alice may, the token not
                         ("GET", "/prometheus/api/v1/admin/tsdb/snapshot?client=limited")):
        refused = requests.request(method, app(stack, path), headers=bearer, allow_redirects=False, timeout=10)
        assert refused.status_code == 403, (method, path)
        assert reached(upstream, path) == []
    audit = (stack.portal.setup.directory / "audit.log").read_text()
    assert audit.count("outside the token's methods and resources") == 3


def metric(stack: NginxStack, name: str, **labels: str) -> float:
    """One sample of the portal's own /metrics (read directly, not through nginx)."""
    text = requests.get(stack.portal.url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def test_wrong_guesses_ban_the_user_like_the_login_form(stack, upstream):
    """Basic checks are regulated like the login form, and share its bans.

    max_retries wrong passwords by Basic ban the user: the right password is then refused without a check,
    by Basic and by the form; a ban earned at the form refuses Basic too. (Neither user had a cached success:
    one would pass until credentials_cache_ttl lapses.)
    """
    base = "/prometheus/api/v1/query?query=up&client="
    failures, bans = (metric(stack, "authportal_logins_total", result=r) for r in ("bad_credentials", "banned"))
    user_bans = metric(stack, "authportal_bans_total", kind="user")

    def basic(user: str, password: str, name: str) -> requests.Response:
        return requests.get(app(stack, base + name), auth=(user, password), allow_redirects=False, timeout=10)

    for attempt in range(MAX_RETRIES):
        guess = basic("erin", f"guess-{attempt}", f"erin-guess-{attempt}")
        assert guess.status_code == 401 and guess.headers["WWW-Authenticate"] == BASIC_CHALLENGE
    right = basic("erin", BANNED_USERS["erin"]["password"], "erin-banned")
    assert right.status_code == 401 and "Location" not in right.headers  # banned: not even checked
    assert right.headers["WWW-Authenticate"] == BASIC_CHALLENGE
    form = login(requests.Session(), stack.portal_base, "erin", password=BANNED_USERS["erin"]["password"])
    assert form.status_code == 401, "a ban from Basic guesses also closes the login form"

    for attempt in range(MAX_RETRIES):
        assert login(requests.Session(), stack.portal_base, "frank", password=f"guess-{attempt}").status_code == 401
    right = basic("frank", BANNED_USERS["frank"]["password"], "frank-banned")
    assert right.status_code == 401 and right.headers["WWW-Authenticate"] == BASIC_CHALLENGE
    assert reached(upstream, base + "erin-banned") == [] and reached(upstream, base + "frank-banned") == []

    # Counted like the form's: each refused Basic check is a failed login, and both bans are there.
    assert metric(stack, "authportal_logins_total", result="bad_credentials") == failures + 2 * MAX_RETRIES
    assert metric(stack, "authportal_logins_total", result="banned") == bans + 3  # erin twice, frank by Basic
    assert metric(stack, "authportal_bans_total", kind="user") == user_bans + 2
    # ... and audited as the form's are, saying which way the credentials came.
    audited = [json.loads(line) for line in (stack.portal.setup.directory / "audit.log").read_text().splitlines()]
    erin = [(e["reason"], e.get("via")) for e in audited if e["event"] == "login_failure" and e.get("user") == "erin"]
    assert erin == [("bad_credentials", "basic")] * MAX_RETRIES + [("banned", "basic"), ("banned", "form")]


# -- curl.md, run as written ---------------------------------------------------------------------------------------

def curl_blocks() -> list[str]:
    """The ```sh blocks of curl.md that are curl commands (the others set variables or run on the portal host)."""
    blocks = re.findall(r"```sh\n(.*?)```", (EXAMPLES / "curl.md").read_text(), re.S)
    return [block for block in blocks if block.lstrip().startswith("curl ")]


def test_curl_md_commands_work_against_nginx(stack, tmp_path, upstream):
    curl = require_binary("curl")
    home = tmp_path / "home"
    (home / ".config" / "authportal").mkdir(parents=True)
    printed, _ = create_token(stack, "bob", "curl-md")
    (home / ".config" / "authportal" / "token").write_text(printed)
    host = f"app.example.test:{stack.port}"
    (home / ".netrc").write_text(f"machine app.example.test login bob password {USERS['bob']['password']}\n")
    (home / ".netrc").chmod(0o600)
    # curl resolves names itself: send every connection to nginx (the request keeps its Host and URL).
    (home / ".curlrc").write_text(f'connect-to = "::127.0.0.1:{stack.port}"\n')
    env = {"PATH": f"{Path(curl).parent}:/usr/bin:/bin", "HOME": str(home), "APP": f"http://{host}",
           "AUTHPORTAL_USER": "bob", "AUTHPORTAL_PASSWORD": USERS["bob"]["password"]}

    blocks = curl_blocks()
    assert len(blocks) >= 7 and any("--netrc" in b for b in blocks) and any("Bearer" in b for b in blocks)
    assert any(f"# prints: 401 {BASIC_CHALLENGE}" in b for b in blocks)
    assert any(f"# prints: 401 {BEARER_CHALLENGE}" in b for b in blocks)  # what a refused token gets
    for block in blocks:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], env=env, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, f"{block}\n{result.stderr}"
        if expected := re.findall(r"^# prints: (.*)$", block, re.M):
            assert result.stdout.splitlines() == expected, block
            continue
        body = json.loads(result.stdout)
        if "headers" in body:  # the stub behind /prometheus/ echoes what it received
            assert body["headers"]["Remote-User"] == "bob", block
        else:  # the real Alertmanager
            assert body["versionInfo"]["version"], block


# -- Grafana's data sources -----------------------------------------------------------------------------------------

def grafana_expand(value: str, environment: dict[str, str]) -> str:
    """Grafana expands $VAR and ${VAR} in provisioning files from its environment."""
    def one(match: re.Match) -> str:
        name = match[1] or match[2]
        assert name in environment, f"provisioning refers to ${name}, which the test does not set"
        return environment[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, value)


def test_grafana_datasources_get_through_as_their_user(stack, upstream):
    printed, _ = create_token(stack, "grafana", "grafana")
    environment = {"AUTHPORTAL_GRAFANA_PASSWORD": GRAFANA_USER["password"],
                   "AUTHPORTAL_GRAFANA_TOKEN": printed.strip()}
    document = yaml.safe_load((EXAMPLES / "grafana-datasource.yml").read_text())
    assert document["apiVersion"] == 1
    sources = {source["name"]: source for source in document["datasources"]}
    assert len(sources) == 3 and sum(bool(s.get("isDefault")) for s in sources.values()) == 1
    kinds = set()

    for name, source in sources.items():
        assert source["access"] == "proxy", name  # Grafana's server sends the credentials, not the browser
        url = urlsplit(source["url"])
        assert url.scheme == "https" and url.hostname == "app.example.com", name
        base = app(stack, url.path)
        headers, auth = {}, None
        secure = source.get("secureJsonData", {})
        if source.get("basicAuth"):
            auth = (source["basicAuthUser"], grafana_expand(secure["basicAuthPassword"], environment))
            kinds.add("basic")
        for key, header in source.get("jsonData", {}).items():
            if number := re.fullmatch(r"httpHeaderName(\d+)", key):
                headers[header] = grafana_expand(secure[f"httpHeaderValue{number[1]}"], environment)
                kinds.add(header.lower() + " " + headers[header].split()[0])
        assert auth or headers, f"{name}: no credentials"

        if source["type"] == "prometheus":  # "Save & test": an instant query, POSTed (jsonData.httpMethod)
            assert source["jsonData"]["httpMethod"] == "POST"
            path = f"{url.path}/api/v1/query"
            answer = requests.post(base + "/api/v1/query", data={"query": "1+1", "time": "1700000000"},
                                   headers=headers, auth=auth, allow_redirects=False, timeout=10)
            assert answer.status_code == 200, (name, answer.status_code, answer.text[:200])
            seen = [r for r in reached(upstream, path) if r.method == "POST"][-1]
            assert seen.headers["Remote-User"] == "grafana" and seen.body == b"query=1%2B1&time=1700000000"
        else:  # Alertmanager (implementation prometheus): its v2 status
            assert source["type"] == "alertmanager" and source["jsonData"]["implementation"] == "prometheus"
            answer = requests.get(base + "/api/v2/status", headers=headers, auth=auth, allow_redirects=False,
                                  timeout=10)
            assert answer.status_code == 200 and answer.json()["versionInfo"]["version"], name

    assert kinds == {"basic", "authorization Bearer"}
    # The same data sources with a wrong secret are refused with a 401 that Grafana shows as such.
    wrong = requests.post(app(stack, "/prometheus/api/v1/query"), data={"query": "1+1"},
                          headers={"Authorization": "Bearer ap_" + "B" * 43}, allow_redirects=False, timeout=10)
    assert wrong.status_code == 401 and "Location" not in wrong.headers
    assert wrong.headers["WWW-Authenticate"] == BEARER_CHALLENGE


def test_grafana_secrets_are_not_in_the_file():
    text = (EXAMPLES / "grafana-datasource.yml").read_text()
    assert not re.search(r"ap_[A-Za-z0-9_-]{20,}", text)
    for source in yaml.safe_load(text)["datasources"]:
        for key, value in source.get("secureJsonData", {}).items():
            assert "$AUTHPORTAL_" in value, f"{source['name']}: {key} must come from the environment"
