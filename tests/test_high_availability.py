"""High availability against real servers: a Redis Sentinel failover, Redis over TLS with an ACL user, and
restarts of portal instances behind nginx that drop nothing.

No test asserts a duration (the machine is shared and slow at times): each asserts what must hold (no session
lost, bans kept, the logout broadcast reaches both instances, no failed verify, never a 5xx) and waits for
recovery with a generous bound. The durations are measured and written to
test-artifacts/high-availability/*.json; docs/high-availability.md quotes them.
"""
from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis
import requests

from tests.servers import free_port, tail, wait_until
from tests.servers.ca import CertificateAuthority
from tests.servers.nginx import Nginx
from tests.servers.process import REPO
from tests.servers.redis import MASTER_NAME, RedisSentinelSet, RedisServer, kill
from tests.support.load import Load, failed_window, record_figures, summary
from tests.support.portal import PortalSetup, ServedPortal, csrf_from, login, portal_base, served_pair

PROM = "http://app.example.test/prometheus/graph"
VERIFY_HEADERS = {"X-Original-URL": PROM, "X-Original-Method": "GET"}
COOKIE = "authportal_session"
REFUSED = "Incorrect username or password."
REVOKED_CHANNEL = "authportal:session:revoked"


def verify(served: ServedPortal, session_id: str, http: requests.Session | None = None) -> int:
    headers = {**VERIFY_HEADERS, "Cookie": f"{COOKIE}={session_id}"}
    return (http or requests).get(served.url + "/api/verify", headers=headers, timeout=10).status_code


def sign_in(served: ServedPortal, user: str = "bob") -> str:
    http = requests.Session()
    answer = login(http, portal_base(served), user)
    assert answer.status_code == 302, answer.text
    return http.cookies[COOKIE]


def is_banned(served: ServedPortal, user: str) -> bool:
    """The right password is refused with the usual message (a ban reveals nothing else)."""
    answer = login(requests.Session(), portal_base(served), user)
    return answer.status_code == 401 and REFUSED in answer.text


def log_out(served: ServedPortal, session_id: str) -> None:
    http = requests.Session()
    http.cookies.set(COOKIE, session_id)
    page = http.get(portal_base(served) + "/logout").text
    http.post(portal_base(served) + "/logout", data={"csrf_token": csrf_from(page)}, allow_redirects=False)


def health(served: ServedPortal) -> requests.Response:
    return requests.get(served.url + "/api/health", timeout=10)


def subscribers(client: redis.Redis) -> int:
    """How many connections listen for logouts on this Redis (one per portal worker)."""
    return int(dict(client.pubsub_numsub(REVOKED_CHANNEL))[REVOKED_CHANNEL.encode()])


# -- Redis Sentinel ------------------------------------------------------------------------------------------------

def test_a_sentinel_failover_under_load_loses_no_replicated_session_nor_ban(tmp_path):
    """Primary killed under login and verify traffic: 401s (never 5xx) until the replica is elected, then
    everything works again without a restart: sessions and bans replicated before the kill are all there, and
    the logout broadcast reaches both instances on the new primary."""
    with RedisSentinelSet() as redis_set, served_pair(tmp_path, {
        "session": {"redis": {"sentinel": {"master_name": MASTER_NAME, "nodes": redis_set.nodes},
                              "timeout": "500ms"}},
        "regulation": {"max_retries": 3, "ip_max_retries": 0, "find_time": "10m", "ban_time": "10m"},
    }) as (one, two):
        instances = (one, two)
        sessions = [sign_in(instances[n % 2]) for n in range(10)]
        for _ in range(3):
            assert login(requests.Session(), portal_base(one), "carol", "wrong").status_code == 401
        assert is_banned(two, "carol")
        created: list[str] = []  # by the login traffic

        def verify_work(http: requests.Session, thread: int, round_: int) -> int:
            return verify(instances[(thread + round_) % 2], sessions[round_ % len(sessions)], http)

        def login_work(http: requests.Session, thread: int, round_: int) -> int:
            """Sign in on one instance, verify the new session on the other: both need the primary."""
            http.cookies.clear()
            answer = login(http, portal_base(instances[round_ % 2]), "bob")
            if answer.status_code != 302:
                return answer.status_code
            created.append(http.cookies[COOKIE])
            return verify(instances[(round_ + 1) % 2], http.cookies[COOKIE], http)

        with Load(verify_work, threads=2) as verifies, Load(login_work, threads=1) as logins:
            verifies.wait_for_ok_after(0, count=5)
            logins.wait_for_ok_after(0, count=3)
            replicated = sessions + list(created)  # written before WAIT: the replica has them once it answers
            redis_set.wait_replicated()
            old_port = redis_set.primary.port
            killed = kill(redis_set.primary)
            wait_until(lambda: redis_set.primary_port() != old_port, timeout=60, what="the replica elected")
            elected = time.monotonic()
            new_primary = redis_set.server_on(redis_set.primary_port()).client()
            wait_until(lambda: subscribers(new_primary) == 2, timeout=30,
                       what="both instances (one worker each) listening for logouts on the new primary")
            resubscribed = time.monotonic()
            verifies.wait_for_ok_after(elected, count=20, timeout=30)
            logins.wait_for_ok_after(elected, count=5, timeout=30)
        after_kill_verifies, after_kill_logins = verifies.since(killed), logins.since(killed)

        # Fail closed: a verify answered 200 or 401, never a 5xx; a login 503 ("unavailable") at worst.
        assert set(summary(after_kill_verifies)) <= {"200", "401"}, summary(after_kill_verifies)
        assert set(summary(after_kill_logins)) <= {"200", "401", "503"}, summary(after_kill_logins)
        lost = [s for s in replicated if not new_primary.exists(f"authportal:session:{s}")]
        assert lost == []
        assert all(verify(instance, s) == 200 for s in replicated for instance in instances)
        assert is_banned(one, "carol") and is_banned(two, "carol")

        # The logout broadcast: both instances listen on the new primary (above), and a logout on one ends the
        # session the other holds in its cache.
        fresh = sign_in(one)
        assert verify(two, fresh) == 200
        log_out(one, fresh)
        wait_until(lambda: verify(two, fresh) == 401, timeout=30, what="logout on one seen by two")

        # Quorum lost (2 of 3 sentinels gone) while the primary lives: nothing changes for the portal.
        for sentinel in redis_set.sentinels[1:]:
            sentinel.stop()
        assert verify(two, sign_in(one)) == 200

        # No primary at all: verify denies, health names Redis; never a 5xx on the verify path.
        kill(redis_set.server_on(redis_set.primary_port()))
        for instance in instances:
            wait_until(lambda i=instance: verify(i, sessions[0]) == 401, timeout=30, what="deny without a primary")
            wait_until(lambda i=instance: health(i).status_code == 503, timeout=30, what="health down")
            assert health(instance).json()["checks"]["redis"]["status"] == "down"

    failed_verifies = [o for o in after_kill_verifies if not o.ok]
    recovered = max((o.ended for o in after_kill_verifies + after_kill_logins if not o.ok), default=killed)
    record_figures("sentinel-failover", {
        "kill_to_election_s": round(elected - killed, 2),
        "verify_401_window_s": round(failed_window(after_kill_verifies), 2),
        "verify_answers_after_kill": summary(after_kill_verifies),
        "login_answers_after_kill": summary(after_kill_logins),
        "last_failure_after_election_s": round(recovered - elected, 2),
        "resubscribed_within_s_of_election": round(resubscribed - elected, 2),
        "sessions_replicated_before_kill": len(replicated), "sessions_lost": len(lost),
        "verifies_failed": len(failed_verifies), "ban_kept": True,
    })


# -- Redis over TLS, with an ACL user ------------------------------------------------------------------------------

ACL_USER = "authportal"
ACL_PASSWORD = "redis-acl-" + "4f1c9e" * 4
#: The ACL line of docs/high-availability.md: the portal's keys and channels only, and only the commands it uses.
ACL_RULES = ["resetkeys", "~authportal:*", "resetchannels", "&authportal:*", "-@all", "+@read", "+@write",
             "+@scripting", "+@pubsub", "+@connection", "+@transaction", "-@dangerous"]


def test_the_acl_line_in_the_docs_is_the_one_tested():
    line = f"user {ACL_USER} on >PASSWORD {' '.join(ACL_RULES)}"
    assert line in (REPO / "docs" / "high-availability.md").read_text()


@pytest.fixture
def tls_redis(tmp_path):
    """Redis speaking only TLS (client certificates required), with the portal's ACL user; and its CA."""
    folder = tmp_path / "redis-tls"
    folder.mkdir()
    authority = CertificateAuthority("redis test CA")
    cert, key = authority.issue(folder / "server.pem", folder / "server.key", "redis", ips=("127.0.0.1",))
    authority.issue(folder / "client.pem", folder / "client.key", "authportal", client=True)
    ca_file = authority.write_cert(folder / "ca.pem")
    server = RedisServer(tls=(cert, key, ca_file), extra=["--tls-auth-clients", "yes", "--user", ACL_USER, "on",
                                                           f">{ACL_PASSWORD}", *ACL_RULES])
    with server:
        yield server, folder


def tls_portal(base: Path, server: RedisServer, tls_files: Path, ca: str = "ca.pem", password: str = ACL_PASSWORD):
    """A portal config with its TLS files and password beside it (relative paths), for `server`."""
    setup = PortalSetup(base, overrides={"session": {"redis": {
        "url": server.url, "username": ACL_USER, "password_file": "secrets/redis",
        "tls": {"ca_file": f"tls/{ca}", "cert_file": "tls/client.pem", "key_file": "tls/client.key"}}}})
    (base / "tls").mkdir(exist_ok=True)
    for name in ("ca.pem", "client.pem", "client.key", "other-ca.pem"):
        if (tls_files / name).exists():
            (base / "tls" / name).write_bytes((tls_files / name).read_bytes())
    (base / "secrets").mkdir(exist_ok=True)
    (base / "secrets" / "redis").write_text(password + "\n")
    return setup


def admin(server: RedisServer, tls_files: Path, **options) -> redis.Redis:
    return server.client(ssl=True, ssl_ca_certs=str(tls_files / "ca.pem"), ssl_certfile=str(tls_files / "client.pem"),
                         ssl_keyfile=str(tls_files / "client.key"), **options)


def test_redis_over_tls_with_an_acl_user_confined_to_the_portal_keys(tmp_path, tls_redis):
    server, tls_files = tls_redis
    setup = tls_portal(tmp_path / "portal", server, tls_files)
    with ServedPortal(setup) as served:
        http = requests.Session()
        assert login(http, portal_base(served), "bob").status_code == 302
        session_id = http.cookies[COOKIE]
        assert verify(served, session_id) == 200
        for _ in range(5):  # regulation.max_retries: a ban, in Redis
            login(requests.Session(), portal_base(served), "carol", "wrong")
        assert is_banned(served, "carol")
        log_out(served, session_id)
        assert verify(served, session_id) == 401
        assert health(served).json()["checks"]["redis"]["status"] == "ok"
        assert "NOPERM" not in served.logs()

    keys = [key.decode() for key in admin(server, tls_files).keys("*")]
    assert keys and all(key.startswith("authportal:") for key in keys), keys
    assert any(key.startswith("authportal:ban:") for key in keys)
    confined = admin(server, tls_files, username=ACL_USER, password=ACL_PASSWORD)
    with pytest.raises(redis.exceptions.NoPermissionError):
        confined.get("another-app:secret")
    with pytest.raises(redis.exceptions.NoPermissionError):
        confined.flushall()


def serve_exits(setup) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "authportal", "serve", "--config", str(setup.config_path)],
                          capture_output=True, text=True, timeout=60)


def test_a_wrong_ca_or_password_for_redis_stops_serve_with_the_reason(tmp_path, tls_redis):
    server, tls_files = tls_redis
    CertificateAuthority("another CA").write_cert(tls_files / "other-ca.pem")

    wrong_ca = serve_exits(tls_portal(tmp_path / "wrong-ca", server, tls_files, ca="other-ca.pem"))
    assert wrong_ca.returncode == 1, wrong_ca.stderr
    assert f"cannot start: session.redis: TLS: the certificate of Redis at 127.0.0.1:{server.port} is not trusted" in wrong_ca.stderr
    assert "session.redis.tls.ca_file must name the CA that issued it" in wrong_ca.stderr

    wrong_password = serve_exits(tls_portal(tmp_path / "wrong-password", server, tls_files, password="nope"))
    assert wrong_password.returncode == 1, wrong_password.stderr
    assert f"cannot start: session.redis: Redis at 127.0.0.1:{server.port} refused the credentials" in wrong_password.stderr
    assert "(session.redis.username, session.redis.password)" in wrong_password.stderr


# -- Restarts behind nginx -----------------------------------------------------------------------------------------

def verifies_answered(served: ServedPortal) -> float:
    """Verify answers this instance's worker gave since it started (its /metrics)."""
    text = requests.get(served.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("authportal_verify_decisions_total{"))


def wait_serving(served: ServedPortal, more_than: float = 0) -> None:
    """Until nginx sends the (re)started instance verify traffic again: the documented step between two restarts
    (nginx tries an instance it saw failing again after fail_timeout; the example's upstream zone shares that)."""
    wait_until(lambda: verifies_answered(served) > more_than, timeout=60,
               what=f"nginx sending verifies to {served.url}")


def read_by_server(server_port: int, client_port: int) -> bool:
    """The server's end of this loopback connection has read all the client sent (empty receive queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
            return int(queues.split(":")[1], 16) == 0
    return False


def test_rolling_restart_reload_and_sigterm_behind_nginx_fail_no_verify(tmp_path, upstream):
    """examples/nginx/high-availability.conf as shipped, two instances, continuous verify load: a rolling restart,
    a SIGHUP reload and a SIGTERM fail no verify and lose no session; the SIGTERM'd instance answers the request
    it was working on before it exits."""
    nginx_port = free_port()
    public = f"http://auth.example.test:{nginx_port}"
    with RedisServer() as redis_server, served_pair(tmp_path, {
        "server": {"portal_url": public},
        "session": {"redis": {"url": redis_server.url}},
        # A refused login takes 3 s: the request the SIGTERM below must let finish.
        "regulation": {"minimum_delay": "3s"},
    }) as (one, two):
        backend = f"127.0.0.1:{upstream.port}"
        with Nginx.from_file(REPO / "examples" / "nginx" / "high-availability.conf", {
            "LISTEN": f"127.0.0.1:{nginx_port}", "PORTAL_1": f"127.0.0.1:{one.setup.port}",
            "PORTAL_2": f"127.0.0.1:{two.setup.port}", "PROMETHEUS": backend, "ALERTMANAGER": backend,
            "PUBLIC": backend,
        }) as nginx:
            sessions = []
            for _ in range(4):
                http = requests.Session()
                assert login(http, public, "bob").status_code == 302
                sessions.append(http.cookies[COOKIE])
            app = f"http://app.example.test:{nginx_port}/prometheus/api/v1/query?query=up"

            def verify_through_nginx(http: requests.Session, thread: int, round_: int) -> int:
                cookie = f"{COOKIE}={sessions[(thread + round_) % len(sessions)]}"
                return http.get(app, headers={"Cookie": cookie}, allow_redirects=False, timeout=15).status_code

            phases: dict[str, tuple[float, float]] = {}
            with Load(verify_through_nginx, threads=4) as load:
                load.wait_for_ok_after(0, count=10)
                wait_serving(one)
                wait_serving(two)

                started = time.monotonic()
                for instance in (one, two):  # stop one, start it, then the other
                    instance.stop()
                    instance.start()
                    wait_serving(instance)
                phases["rolling_restart"] = (started, time.monotonic())

                started = time.monotonic()
                reloads = one.logs().count("Stopped old worker")
                assert one.process is not None
                one.process.send_signal(signal.SIGHUP)
                wait_until(lambda: one.logs().count("Stopped old worker") > reloads, timeout=60, what="reload done")
                wait_serving(one, more_than=verifies_answered(one))  # nginx uses it after the old worker left
                phases["sighup_reload"] = (started, time.monotonic())

                started = time.monotonic()
                answer = in_flight_login(two, public)
                assert two.process is not None
                two.process.send_signal(signal.SIGTERM)
                assert two.process.wait(timeout=30) == 0
                in_flight_status = answer()
                load.wait_for_ok_after(time.monotonic(), count=20)
                phases["sigterm"] = (started, time.monotonic())

            by_phase = {name: summary([o for o in load.outcomes if start <= o.started <= end])
                        for name, (start, end) in phases.items()}
            failed = [o for o in load.outcomes if not o.ok]
            lost = [s for s in sessions if verify_through_nginx(requests.Session(), 0, sessions.index(s)) != 200]
            nginx_errors = tail(nginx.log, 20)

    record_figures("restarts-behind-nginx", {
        "verifies": len(load.outcomes), "failed_verifies": len(failed), "answers_by_phase": by_phase,
        "phase_seconds": {name: round(end - start, 2) for name, (start, end) in phases.items()},
        "sessions_lost": len(lost), "in_flight_login_during_sigterm": in_flight_status,
    })
    assert in_flight_status == 401  # the refused login it was padding: answered, not cut off
    assert failed == [], f"{summary(failed)}\nnginx's error log:\n{nginx_errors}"
    assert lost == []


def in_flight_login(served: ServedPortal, public: str):
    """A login with a wrong password sent straight to `served`, read by it (so in flight); returns a function
    that waits for its answer and gives the status (or the error's name)."""
    browser = requests.Session()
    page = browser.get(served.url + "/", headers={"Host": public.split("//")[1]}, timeout=10)
    form = urlencode({"username": "bob", "password": "wrong", "csrf_token": csrf_from(page.text)})
    connection = http.client.HTTPConnection("127.0.0.1", served.setup.port, timeout=30)
    connection.connect()
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    connection.request("POST", "/login", body=form, headers={
        "Host": public.split("//")[1], "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": "; ".join(f"{c.name}={c.value}" for c in browser.cookies)})
    wait_until(lambda: read_by_server(served.setup.port, client_port), timeout=30, what="login read by the server")
    result: dict[str, object] = {}

    def wait() -> object:
        try:
            result["status"] = connection.getresponse().status
        except OSError as exc:
            result["status"] = type(exc).__name__
        return result["status"]

    return wait
