"""Two cookie domains with one portal (`session.cookies`), through real nginx (examples/nginx/two-domains.conf):
each domain signs in on its own portal URL with its own cookie; a session of one is not valid on the other;
a hostile `rd` to the other domain is refused; logging out of one leaves the other."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.servers import free_port
from tests.servers.nginx import Nginx
from tests.servers.process import REPO
from tests.support.portal import PortalSetup, ServedPortal, csrf_from, login, resolve_example_test

EXAMPLE = REPO / "examples" / "nginx" / "two-domains.conf"
RULES = [{"domain": ["app.example.test", "app.corp.test"], "subject": ["group:monitoring"], "policy": "one_factor"}]


@dataclass
class TwoDomains:
    port: int
    setup: PortalSetup

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream) -> Iterator[TwoDomains]:
    resolve_example_test()
    port = free_port()
    setup = PortalSetup(tmp_path_factory.mktemp("two-domains"), overrides={
        "server": {"portal_url": None},
        "session": {"domain": None, "cookies": [
            {"domain": "example.test", "portal_url": f"http://auth.example.test:{port}"},
            {"domain": "corp.test", "portal_url": f"http://auth.corp.test:{port}", "name": "corp_session",
             "expiration": "2h"}]},
        "access_control": {"default_policy": "deny", "rules": RULES}})
    with ServedPortal(setup):
        nginx = Nginx.from_file(EXAMPLE, {"LISTEN": f"127.0.0.1:{port}", "PORTAL": f"127.0.0.1:{setup.port}",
                                          "APP": f"127.0.0.1:{upstream.port}"})
        nginx.start()
        try:
            yield TwoDomains(port, setup)
        finally:
            nginx.stop()


def sent_to_login(http: requests.Session, stack: TwoDomains, host: str) -> str:
    """The login page a request for `host` is sent to (its portal URL), after checking rd is the request."""
    url = stack.url(host, "/graph")
    answer = http.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.status_code
    location = urlsplit(answer.headers["Location"])
    assert parse_qs(location.query)["rd"] == [url]
    return f"{location.scheme}://{location.netloc}"


def test_each_domain_signs_in_on_its_own_portal_url_with_its_own_cookie(stack):
    http = requests.Session()
    assert sent_to_login(http, stack, "app.example.test") == stack.url("auth.example.test", "").rstrip("/")
    assert sent_to_login(http, stack, "app.corp.test") == stack.url("auth.corp.test", "").rstrip("/")

    example = stack.url("app.example.test", "/graph")
    done = login(http, stack.url("auth.example.test", ""), "bob", rd=example)
    assert (done.status_code, done.headers["Location"]) == (302, example)
    [cookie] = [c for c in http.cookies if c.name == "authportal_session"]
    assert cookie.domain in ("example.test", ".example.test")
    assert http.get(example, allow_redirects=False, timeout=10).status_code == 200
    sent_to_login(http, stack, "app.corp.test")  # still signed out on the other domain

    # The example.test session id presented on corp.test, under corp's cookie name: not valid there.
    stolen = requests.get(stack.url("app.corp.test", "/graph"), allow_redirects=False, timeout=10,
                          headers={"Cookie": f"corp_session={cookie.value}; authportal_session={cookie.value}"})
    assert stolen.status_code == 302

    corp = stack.url("app.corp.test", "/graph")
    assert login(http, stack.url("auth.corp.test", ""), "bob", rd=corp).headers["Location"] == corp
    assert [c.domain.lstrip(".") for c in http.cookies if c.name == "corp_session"] == ["corp.test"]
    assert http.get(corp, allow_redirects=False, timeout=10).status_code == 200

    # Logging out of example.test leaves corp.test, and says so.
    page = http.get(stack.url("auth.example.test", "/logout"), timeout=10)
    out = http.post(stack.url("auth.example.test", "/logout"), data={"csrf_token": csrf_from(page.text)},
                    allow_redirects=False, timeout=10)
    assert out.status_code == 302
    landing = http.get(stack.url("auth.example.test", "/"), timeout=10).text
    assert "Your sessions on the portal&#39;s other domains remain" in landing
    sent_to_login(http, stack, "app.example.test")
    assert http.get(corp, allow_redirects=False, timeout=10).status_code == 200


def test_a_sign_in_on_one_domain_never_sends_the_browser_to_the_other(stack):
    http = requests.Session()
    hostile = stack.url("app.corp.test", "/graph")
    done = login(http, stack.url("auth.example.test", ""), "bob", rd=hostile)
    assert done.status_code == 302 and done.headers["Location"] == "/"


def test_check_config_refuses_overlapping_domains_and_a_portal_outside_its_domain(tmp_path):
    from click.testing import CliRunner

    from authportal.cli import main

    for cookies, expected in (
            ([{"domain": "example.test", "portal_url": "http://auth.example.test"},
              {"domain": "corp.example.test", "portal_url": "http://auth.corp.example.test"}],
             "[1].domain 'corp.example.test' overlaps 'example.test'"),
            ([{"domain": "corp.test", "portal_url": "http://auth.example.test"}],
             "[0].portal_url: http://auth.example.test is not under 'corp.test'")):
        setup = PortalSetup(tmp_path / expected[:3], overrides={"server": {"portal_url": None},
                                                              "session": {"domain": None, "cookies": cookies}})
        result = CliRunner().invoke(main, ["check-config", "--config", str(setup.config_path)])
        assert result.exit_code == 2 and "session.cookies" in result.output and expected in result.output
