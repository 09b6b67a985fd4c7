"""Client certificates (mTLS) through real nginx and HAProxy, and a real Prometheus presenting one.

The stack: examples/nginx/client-certificates.conf (TLS, client CA of the tests' own) in front of the served
portal with `authentication.client_certificates` on, a real Alertmanager at /alertmanager/ and the recording
stub at /prometheus/ (so the tests see the `Remote-User` the application receives); examples/haproxy with
its Lua action and a `bind ... ssl ... verify optional` line; examples/caddy, which must drop a client's
certificate headers; and
examples/machine-clients/prometheus-scrape-alertmanager-mtls.yml in a real Prometheus.
The portal's own judgement of each header and certificate is in tests/test_client_certificates.py.
"""
from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import yaml

from tests.servers import free_port, wait_until
from tests.servers.caddy import Caddy
from tests.servers.connect_proxy import ConnectProxy
from tests.servers.process import REPO, render
from tests.servers.prometheus import Alertmanager, ScrapingPrometheus
from tests.support.client_certificates import Pki, presented
from tests.support.portal import login
from tests.support.stacks import CADDY_EXAMPLE, HAProxyExample, NginxStack, nginx_stack

SCRAPE_EXAMPLE = REPO / "examples" / "machine-clients" / "prometheus-scrape-alertmanager-mtls.yml"
#: Each test's certificates: CN is the user (map: subject_cn).
PEOPLE = ("alice", "bob", "carol", "mallory")


@dataclass
class Mtls:
    stack: NginxStack
    pki: Pki

    def cert(self, name: str) -> tuple[str, str]:
        return str(self.pki.directory / f"{name}.pem"), str(self.pki.directory / f"{name}.key")

    def app(self, path: str, scheme: str = "https") -> str:
        port = self.stack.port if scheme == "https" else self.stack.http_port
        return f"{scheme}://app.example.test:{port}{path}"

    def get(self, path: str, certificate: str | None = None, **kwargs) -> requests.Response:
        """A request to app.example.test over https, presenting `certificate` (a name of PEOPLE and others)."""
        return requests.get(self.app(path), cert=self.cert(certificate) if certificate else None,
                            verify=str(self.stack.ca_file), allow_redirects=False, timeout=10, **kwargs)


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, upstream) -> Iterator[Mtls]:
    directory = tmp_path_factory.mktemp("mtls")
    pki = Pki(directory / "pki")
    for name in PEOPLE:
        pki.client(name)
    pki.client("revoked-bob", "bob")
    pki.expired("expired-bob")
    pki.stranger("stranger-bob")
    port = free_port()  # nginx's port is part of Alertmanager's external URL
    stub = f"127.0.0.1:{upstream.port}"
    settings = {"enable": True, "map": "subject_cn", "ca_file": str(pki.ca_file), "crl_file": str(pki.crl_file)}
    with Alertmanager(f"https://app.example.test:{port}/alertmanager/") as alertmanager:
        with nginx_stack("client-certificates", directory, {
                "PROMETHEUS": stub, "ALERTMANAGER": f"127.0.0.1:{alertmanager.port}", "CLIENT_CA": pki.ca_file},
                portal_overrides={"authentication": {"client_certificates": settings}}, port=port) as stack:
            yield Mtls(stack, pki)


def reached(upstream, path: str):
    return [seen for seen in list(upstream.requests) if seen.path == path]


def test_a_certificate_is_its_user_with_the_users_file_groups_through_nginx(mtls, upstream):
    for name, groups in (("alice", "admins,monitoring"), ("bob", "monitoring")):
        path = f"/prometheus/as-{name}"
        assert mtls.get(path, name).status_code == 200
        [seen] = reached(upstream, path)
        assert (seen.headers["remote-user"], seen.headers["remote-groups"]) == (name, groups)
    # carol has no group monitoring, mallory is nobody the users file knows: the rules and the portal refuse
    assert mtls.get("/prometheus/as-carol", "carol").status_code == 403
    assert mtls.get("/prometheus/as-mallory", "mallory").status_code == 401  # a 401, never the login page
    assert not reached(upstream, "/prometheus/as-carol") and not reached(upstream, "/prometheus/as-mallory")


def test_a_certificate_alone_does_not_pass_a_two_factor_rule(mtls):
    # alice is an admin, but the admin API asks for two factors; a certificate is one (counts_as_two_factor)
    assert requests.post(mtls.app("/prometheus/api/v1/admin/tsdb/snapshot"), cert=mtls.cert("alice"),
                         verify=str(mtls.stack.ca_file), allow_redirects=False, timeout=10).status_code == 403


@pytest.mark.parametrize("name", ["expired-bob", "stranger-bob"])
def test_nginx_refuses_an_expired_or_unknown_ca_certificate_before_the_portal(mtls, upstream, name):
    path = f"/prometheus/{name}"
    assert mtls.get(path, name).status_code == 400  # nginx's "The SSL certificate error"
    assert not reached(upstream, path)


def test_a_crl_replaced_while_the_portal_runs_refuses_the_revoked_certificate(mtls, upstream):
    assert mtls.get("/prometheus/before-revocation", "revoked-bob").status_code == 200
    mtls.pki.revoke(mtls.pki.directory / "revoked-bob.pem")
    try:
        wait_until(lambda: mtls.get("/prometheus/revoked", "revoked-bob").status_code == 401, timeout=15,
                   what="the new CRL in force")
        assert mtls.get("/prometheus/not-revoked", "bob").status_code == 200  # bob's other certificate
    finally:
        mtls.pki.revoke()


def test_client_sent_certificate_headers_count_for_nothing(mtls, upstream):
    forged = {**presented(mtls.pki.directory / "bob.pem"), "Accept": "text/html"}
    # plain http, and https without a certificate: nginx overwrites the headers; the browser goes to the login
    for answer in (requests.get(mtls.app("/prometheus/forged", "http"), headers=forged, allow_redirects=False,
                                timeout=10),
                   mtls.get("/prometheus/forged", headers=forged)):
        assert answer.status_code == 302 and "/?rd=" in answer.headers["Location"]
    assert not reached(upstream, "/prometheus/forged")
    # the verify endpoint through the portal's own server: not served
    assert requests.get(f"{mtls.stack.portal_base}/api/verify", headers=forged, verify=str(mtls.stack.ca_file),
                        timeout=10).status_code == 404
    # straight to the portal from an address outside server.trusted_proxies: not believed at all
    connection = http.client.HTTPConnection("127.0.0.1", mtls.stack.portal.setup.port, timeout=10,
                                            source_address=("127.0.0.2", 0))
    connection.request("GET", "/api/verify", headers={
        "X-Original-URL": mtls.app("/prometheus/forged"), "X-Original-Method": "GET", **forged})
    answer = connection.getresponse()
    assert answer.status == 400 and b"not in server.trusted_proxies" in answer.read()


def test_without_a_certificate_a_browser_signs_in_as_usual(mtls, upstream):
    browser = requests.Session()
    browser.trust_env = False  # else REQUESTS_CA_BUNDLE, when set, wins over the session's verify
    browser.verify = str(mtls.stack.ca_file)
    sent = browser.get(mtls.app("/prometheus/graph"), headers={"Accept": "text/html"}, allow_redirects=False)
    assert sent.status_code == 302 and sent.headers["Location"].startswith(f"{mtls.stack.portal_base}/?rd=")
    assert login(browser, mtls.stack.portal_base, "bob").status_code == 302
    assert browser.get(mtls.app("/prometheus/signed-in"), allow_redirects=False).status_code == 200
    [seen] = reached(upstream, "/prometheus/signed-in")
    assert seen.headers["remote-user"] == "bob"


# -- Prometheus scraping the protected Alertmanager with a certificate ---------------------------------------------

def scrape_config(mtls: Mtls, tunnel: ConnectProxy) -> str:
    cert_file, key_file = mtls.cert("bob")
    text = render(SCRAPE_EXAMPLE.read_text(), {"TARGET": f"app.example.test:{mtls.stack.port}",
                                               "CA_FILE": mtls.stack.ca_file, "CERT_FILE": cert_file,
                                               "KEY_FILE": key_file})
    config = yaml.safe_load(text)
    [job] = config["scrape_configs"]
    assert job["tls_config"]["cert_file"] == cert_file and job["follow_redirects"] is False
    # Test-only changes: scrape every second, reach app.example.test (no DNS here) through a CONNECT tunnel;
    # and the same job without a certificate beside it.
    job.update(scrape_interval="1s", scrape_timeout="1s", proxy_url=tunnel.url)
    anonymous = {**job, "job_name": "without-certificate", "tls_config": {"ca_file": job["tls_config"]["ca_file"]}}
    config["scrape_configs"].append(anonymous)
    return yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, **config})


def test_prometheus_scrapes_the_protected_alertmanager_with_its_certificate(mtls):
    with ConnectProxy() as tunnel, ScrapingPrometheus(scrape_config(mtls, tunnel)) as prometheus:
        def health(job: str) -> str:
            return (prometheus.target(job) or {}).get("health", "unknown")

        wait_until(lambda: health("alertmanager") == "up" and health("without-certificate") == "down",
                   timeout=30, what="the scrape with a certificate up, the one without down")
        assert prometheus.target("alertmanager")["lastError"] == ""
        assert "302" in prometheus.target("without-certificate")["lastError"]  # sent to the login page


# -- HAProxy: the certificate from the TLS connection, through the Lua action ---------------------------------------

@pytest.fixture(scope="module")
def haproxy(mtls, tmp_path_factory, upstream) -> Iterator[str]:
    """examples/haproxy as shipped, its bind line with TLS and client certificates; yields its https base URL."""
    tls = mtls.stack.tls
    assert tls is not None
    combined = tmp_path_factory.mktemp("haproxy-tls") / "site.pem"  # HAProxy's crt: certificate and key in one file
    combined.write_text(tls.cert_file.read_text() + tls.key_file.read_text())
    port, stub = free_port(), f"127.0.0.1:{upstream.port}"
    with HAProxyExample.example(
            LISTEN=f"127.0.0.1:{port} ssl crt {combined} ca-file {mtls.pki.ca_file} verify optional",
            PORTAL=f"127.0.0.1:{mtls.stack.portal.setup.port}", RELAY=f"127.0.0.1:{free_port()}",
            PROMETHEUS=stub, ALERTMANAGER=stub, PUBLIC=stub):
        yield f"https://app.example.test:{port}"


def through_haproxy(mtls: Mtls, base: str, path: str, certificate: str | None = None, **kwargs) -> requests.Response:
    return requests.get(base + path, cert=mtls.cert(certificate) if certificate else None,
                        verify=str(mtls.stack.ca_file), allow_redirects=False, timeout=10, **kwargs)


def test_haproxy_passes_the_connection_s_certificate(mtls, haproxy, upstream):
    assert through_haproxy(mtls, haproxy, "/prometheus/haproxy-bob", "bob").status_code == 200
    [seen] = reached(upstream, "/prometheus/haproxy-bob")
    assert (seen.headers["remote-user"], seen.headers["remote-groups"]) == ("bob", "monitoring")
    assert through_haproxy(mtls, haproxy, "/prometheus/haproxy-carol", "carol").status_code == 403
    # without a certificate: the login page; with the client's own certificate headers: still the login page
    forged = {**presented(mtls.pki.directory / "bob.pem"), "Accept": "text/html"}
    for headers in ({"Accept": "text/html"}, forged):
        answer = through_haproxy(mtls, haproxy, "/prometheus/haproxy-nobody", headers=headers)
        assert answer.status_code == 302 and "/?rd=" in answer.headers["Location"]
    assert not reached(upstream, "/prometheus/haproxy-carol") and not reached(upstream, "/prometheus/haproxy-nobody")


def test_haproxy_refuses_an_expired_certificate_in_the_handshake(mtls, haproxy, upstream):
    # TLS 1.3 may report the alert as an SSL error or as a reset connection: either way nothing got through
    with pytest.raises(requests.exceptions.ConnectionError):
        through_haproxy(mtls, haproxy, "/prometheus/haproxy-expired", "expired-bob")
    assert not reached(upstream, "/prometheus/haproxy-expired")


def test_caddy_s_forward_auth_passes_no_client_sent_certificate_headers(mtls, upstream):
    """Caddy hands every client header to forward-auth: its example removes these, for a portal that has
    client certificates on."""
    port, stub = free_port(), f"127.0.0.1:{upstream.port}"
    forged = {**presented(mtls.pki.directory / "bob.pem"), "Accept": "text/html"}
    with Caddy.from_file(CADDY_EXAMPLE, BIND="127.0.0.1", PORT=port, PORTAL=f"127.0.0.1:{mtls.stack.portal.setup.port}",
                         PROMETHEUS=stub, ALERTMANAGER=stub, PUBLIC=stub):
        answer = requests.get(f"http://app.example.test:{port}/prometheus/caddy-forged", headers=forged,
                              allow_redirects=False, timeout=10)
    assert answer.status_code == 302 and "/?rd=" in answer.headers["Location"]
    assert not reached(upstream, "/prometheus/caddy-forged")
