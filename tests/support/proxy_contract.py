"""What every forward-auth proxy example must do: `ProxyContract`, which each proxy's test class subclasses.

    class TestCaddy(ProxyContract):
        tag = "caddy"              # keeps this proxy's requests apart in the shared upstream's records
        portal_down_status = 502   # what the proxy answers when the portal does not

        @pytest.fixture(scope="class")
        @classmethod
        def example_proxy(cls, upstream): ...

`example_proxy(listen_port, portal_address)` returns the example's proxy in
front of that portal, not started yet (a context manager that starts and stops
it). The contract starts one portal and one proxy for the class (`portal`,
`proxy`, reached at `app` and `portal_url`); a subclass's own tests share them.

A test that stops the portal runs on a portal and proxy of its own
(`own_stack`), so that no other test meets a portal that is down, or one a
proxy's health check still takes for down.
"""
from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import pytest
import requests

from tests.servers import free_port
from tests.support.forward_auth_flow import (
    BROWSER,
    FORGED_ADDRESS,
    FORGED_IDENTITY,
    SCRIPT,
    assert_identity,
    assert_no_identity,
    audit_events,
    logged_in,
    portal_behind_proxy,
    rd_of,
    reached,
    smuggled_urls,
)
from tests.support.portal import USERS, ServedPortal, basic, login


@dataclass
class OwnStack:
    """A portal and the example's proxy in front of it, for one test alone."""

    portal: ServedPortal
    app: str
    portal_url: str


class ProxyContract:
    """The tests and the class-scoped stack every proxy example's test class inherits."""

    #: A word unique to the proxy, in every path its tests send, so records of the shared upstream stay apart.
    tag: str
    #: The proxy's answer when the portal is down: never 200, never the app.
    portal_down_status: int

    @pytest.fixture(scope="class")
    @classmethod
    def example_proxy(cls) -> Callable[[int, str], AbstractContextManager]:
        raise NotImplementedError("a proxy's test class provides example_proxy(listen_port, portal_address)")

    @pytest.fixture(scope="class")
    @classmethod
    def listen_port(cls) -> int:
        return free_port()

    @pytest.fixture(scope="class")
    @classmethod
    def portal(cls, tmp_path_factory, listen_port) -> Iterator[ServedPortal]:
        setup = portal_behind_proxy(tmp_path_factory.mktemp(f"{cls.tag}-portal"),
                                    f"http://auth.example.test:{listen_port}")
        with ServedPortal(setup) as served:
            yield served

    @pytest.fixture(scope="class")
    @classmethod
    def proxy(cls, portal, listen_port, example_proxy) -> Iterator:
        """The example in front of the class's portal, listening on `listen_port`."""
        with example_proxy(listen_port, f"127.0.0.1:{portal.setup.port}") as started:
            yield started

    @pytest.fixture(scope="class")
    @classmethod
    def app(cls, proxy, listen_port) -> str:
        return f"http://app.example.test:{listen_port}"

    @pytest.fixture(scope="class")
    @classmethod
    def portal_url(cls, proxy, listen_port) -> str:
        """The portal as browsers reach it, through the proxy."""
        return f"http://auth.example.test:{listen_port}"

    @pytest.fixture(scope="class")
    @classmethod
    def bob(cls, portal_url) -> requests.Session:
        return logged_in(portal_url, "bob")

    @pytest.fixture
    def own_stack(self, tmp_path, example_proxy) -> Iterator[OwnStack]:
        """For a test that stops the portal: the class's one stays up for every other test."""
        listen_port = free_port()
        setup = portal_behind_proxy(tmp_path / "portal", f"http://auth.example.test:{listen_port}")
        with ServedPortal(setup) as portal, example_proxy(listen_port, f"127.0.0.1:{setup.port}"):
            yield OwnStack(portal, f"http://app.example.test:{listen_port}", f"http://auth.example.test:{listen_port}")

    def test_browser_goes_to_login_and_comes_back_as_bob(self, app, portal_url, upstream):
        http = requests.Session()
        http.headers.update(BROWSER)
        target = f"{app}/prometheus/graph?g0.expr=up&from={self.tag}"

        sent_away = http.get(target, allow_redirects=False, timeout=5)
        assert sent_away.status_code == 302
        assert sent_away.headers["Location"].startswith(f"{portal_url}/?rd=")
        assert rd_of(sent_away.headers["Location"]) == target
        assert reached(upstream, f"/prometheus/graph?g0.expr=up&from={self.tag}") == []

        logged = login(http, portal_url, "bob", rd=rd_of(sent_away.headers["Location"]))  # through the proxy's portal site
        assert logged.status_code == 302
        assert logged.headers["Location"] == target

        back = http.get(logged.headers["Location"], allow_redirects=False, timeout=5)
        assert back.status_code == 200
        [seen] = reached(upstream, f"/prometheus/graph?g0.expr=up&from={self.tag}")
        assert_identity(seen, "bob")

    def test_client_cannot_forge_identity_headers(self, app, bob, upstream):
        # Logged in as bob, claiming to be alice: the app sees bob.
        assert bob.get(f"{app}/prometheus/api/v1/query?query=up&forged={self.tag}1", headers=FORGED_IDENTITY,
                       timeout=5).status_code == 200
        [seen] = reached(upstream, f"/prometheus/api/v1/query?query=up&forged={self.tag}1")
        assert_identity(seen, "bob")

        # Anonymous on an open (bypass) path: the portal's 200 carries no identity; the app sees none
        # (neither the forged one nor Caddy 2.6's literal "{http.reverse_proxy.header.Remote-User}").
        assert requests.get(f"{app}/prometheus/-/healthy?{self.tag}", headers={**SCRIPT, **FORGED_IDENTITY},
                            timeout=5).status_code == 200
        [seen] = reached(upstream, f"/prometheus/-/healthy?{self.tag}")
        assert_no_identity(seen)

        # Anonymous on a protected path: refused, nothing reaches the app.
        refused = requests.get(f"{app}/prometheus/api/v1/query?forged={self.tag}2", headers={**SCRIPT, **FORGED_IDENTITY},
                               timeout=5)
        assert refused.status_code == 401
        assert reached(upstream, f"/prometheus/api/v1/query?forged={self.tag}2") == []

    @pytest.mark.parametrize("smuggled", smuggled_urls("app.example.test"), ids=lambda headers: "+".join(headers))
    def test_client_cannot_make_the_portal_check_another_url(self, app, upstream, smuggled):
        """Headers naming an open URL (/public/) must not open /prometheus/: the portal checks what was requested."""
        path = f"/prometheus/api/v1/query?query=up&smuggled={'+'.join(smuggled)}-{self.tag}"
        answer = requests.get(app + path, headers={**SCRIPT, **smuggled}, timeout=5)
        assert answer.status_code == 401
        assert reached(upstream, path) == []

    def test_carol_without_group_is_forbidden(self, app, portal_url, upstream):
        carol = logged_in(portal_url, "carol")
        answer = carol.get(f"{app}/prometheus/graph?who=carol-{self.tag}", allow_redirects=False, timeout=5)
        assert answer.status_code == 403
        assert reached(upstream, f"/prometheus/graph?who=carol-{self.tag}") == []

    def test_an_encoded_path_gets_the_rule_of_the_path_it_means(self, app, portal_url, upstream):
        """`%61dmin` is `admin` to the application: alice's one factor must not open the two-factor admin API."""
        alice = logged_in(portal_url, "alice")
        assert alice.get(f"{app}/prometheus/graph?who=alice-{self.tag}", allow_redirects=False, timeout=5).status_code == 200
        for path in (f"/prometheus/api/v1/admin/tsdb/snapshot?m={self.tag}", f"/prometheus/api/v1/%61dmin/tsdb/snapshot?m={self.tag}",
                     f"/prometheus/api/v1/admin%2Ftsdb/snapshot?m={self.tag}"):
            answer = alice.post(app + path, allow_redirects=False, timeout=5)
            assert answer.status_code in (302, 400, 401), path  # HAProxy refuses %2F outright (400)
            assert reached(upstream, path) == []

    def test_dot_segments_cannot_route_a_protected_path_past_the_check(self, proxy, listen_port, upstream):
        """`/public/../prometheus/x` must not reach an application unchecked, when one app serves both paths."""
        for n, target in enumerate(("/public/../prometheus/", "/public/%2e%2e/prometheus/", "/public/..%2Fprometheus/",
                                    "/public//../prometheus/", "/public/./../prometheus/")):
            marker = f"dots-{self.tag}-{n}"
            conn = http.client.HTTPConnection("127.0.0.1", listen_port, timeout=5)
            try:
                conn.request("GET", target + marker, headers={"Host": f"app.example.test:{listen_port}", **BROWSER})
                status = conn.getresponse().status
            finally:
                conn.close()
            assert status in (302, 400), target  # to the login page, or refused outright
            assert [seen.path for seen in upstream.requests if marker in seen.path] == [], target

    def test_audit_log_has_the_real_client_address(self, app, portal_url, portal):
        """Login (through the portal host) and denial (through the check) are logged with the peer's address."""
        carol = requests.Session()
        carol.headers.update({**BROWSER, **FORGED_ADDRESS})
        assert login(carol, portal_url, "carol").status_code == 302
        assert carol.get(f"{app}/prometheus/graph?audit={self.tag}", allow_redirects=False, timeout=5).status_code == 403
        logged_in_event = [e for e in audit_events(portal.setup, "login_success") if e["user"] == "carol"][-1]
        [denied] = [e for e in audit_events(portal.setup, "access_denied") if e["url"].endswith(f"?audit={self.tag}")]
        assert logged_in_event["ip"] == denied["ip"] == "127.0.0.1"

    def test_method_reaches_the_rules(self, app, bob, upstream):
        """Bob may read Alertmanager but not create silences (POST is admins-only, two factors)."""
        assert bob.get(f"{app}/alertmanager/api/v2/silences?m={self.tag}-get", timeout=5).status_code == 200
        denied = bob.post(f"{app}/alertmanager/api/v2/silences?m={self.tag}-post", json={}, allow_redirects=False,
                          timeout=5)
        assert denied.status_code == 403
        assert reached(upstream, f"/alertmanager/api/v2/silences?m={self.tag}-post") == []

    def test_public_path_is_open(self, app, upstream):
        answer = requests.get(f"{app}/public/status.txt?via={self.tag}", headers={**BROWSER, **FORGED_IDENTITY},
                              allow_redirects=False, timeout=5)
        assert answer.status_code == 200
        assert_no_identity(reached(upstream, f"/public/status.txt?via={self.tag}")[-1])

    def test_script_without_credentials_gets_401_with_basic_challenge(self, app, upstream):
        answer = requests.get(f"{app}/prometheus/api/v1/query?query=up&who=curl-{self.tag}", headers=SCRIPT, timeout=5)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic ")
        assert reached(upstream, f"/prometheus/api/v1/query?query=up&who=curl-{self.tag}") == []

    def test_script_with_basic_credentials_gets_in_as_bob(self, app, upstream):
        answer = requests.get(f"{app}/prometheus/api/v1/query?query=up&who=basic-{self.tag}", headers=SCRIPT,
                              auth=basic("bob"), timeout=5)
        assert answer.status_code == 200
        assert_identity(reached(upstream, f"/prometheus/api/v1/query?query=up&who=basic-{self.tag}")[-1], "bob")

        wrong = requests.get(f"{app}/prometheus/api/v1/query?who=wrong-{self.tag}", headers=SCRIPT,
                             auth=basic("bob", "not-his-password"), timeout=5)
        assert wrong.status_code == 401
        assert reached(upstream, f"/prometheus/api/v1/query?who=wrong-{self.tag}") == []

    def test_an_identity_value_the_user_lacks_sends_no_header(self, app, portal, upstream):
        """erin has no display name and no e-mail: the app gets her user name as Remote-Name and no Remote-Email
        at all, not an empty one (nor Caddy 2.6's placeholder text for a header the portal did not send)."""
        portal.replace_users({**USERS, "erin": {"password": "erin-Secret-5", "groups": ["monitoring"]}})
        path = f"/prometheus/api/v1/query?query=up&who=erin-{self.tag}"
        answer = requests.get(f"{app}{path}", headers=SCRIPT, auth=("erin", "erin-Secret-5"), timeout=5)
        assert answer.status_code == 200
        seen = reached(upstream, path)[-1].headers
        assert (seen["Remote-User"], seen["Remote-Name"]) == ("erin", "erin")
        assert seen.get_all("Remote-Email") is None, dict(seen.items())

    def test_verify_endpoints_are_not_exposed_on_the_portal_host(self, portal_url):
        forged = {**SCRIPT, "X-Forwarded-Proto": "http", "X-Forwarded-Host": "app.example.test",
                  "X-Forwarded-Uri": "/prometheus/", "X-Forwarded-Method": "GET"}
        for path in ("/api/forward-auth", "/api/verify"):
            assert requests.get(f"{portal_url}{path}", headers=forged, auth=basic("bob"), timeout=5).status_code == 404

    def test_portal_stopped_denies_at_once(self, own_stack, upstream):
        """The portal stops (this test's own: the module's stays up): nothing gets through, and at once.

        "At once" is the point: on its own, HAProxy's httpclient retries a refused connection for 3 s before
        it gives up (the example's relay avoids that). A refused connection is denied in about a millisecond
        here; the 2 s bound is the margin a loaded machine needs and still tells "at once" from 3 s.
        """
        app = own_stack.app
        bob = logged_in(own_stack.portal_url, "bob")
        assert bob.get(f"{app}/prometheus/graph?up={self.tag}", allow_redirects=False, timeout=10).status_code == 200
        own_stack.portal.stop()
        for client, headers in ((bob, {}), (requests, BROWSER), (requests, SCRIPT)):
            started = time.monotonic()
            answer = client.get(f"{app}/prometheus/graph?down={self.tag}", headers=headers, allow_redirects=False,
                                timeout=10)
            elapsed = time.monotonic() - started
            assert answer.status_code == self.portal_down_status, answer.status_code
            assert elapsed < 2.0, elapsed
        assert requests.get(f"{app}/prometheus/?down={self.tag}-basic", headers=SCRIPT, auth=basic("bob"),
                            timeout=10).status_code == self.portal_down_status
        assert reached(upstream, f"/prometheus/graph?down={self.tag}") == []
        assert reached(upstream, f"/prometheus/?down={self.tag}-basic") == []
