"""Sessions and bans you can see and end (issue 19), in-process on the database store (no Redis).

The user: "Your sessions" on the account page, "Sign out" on another browser, "Sign out everywhere else". The
administrator: `/admin` (off by default, members of `administration.subject` with two factors), and the
`authportal sessions` / `authportal bans` commands on the same database. Bans that cannot be turned against
users: `regulation.modes` (`user`, `ip`, `user_ip`) and `regulation.exempt_networks`, each address set the way
nginx passes it (X-Forwarded-For from the trusted proxy 127.0.0.1).

The same stories against two served instances and real Redis (and the shared database) are in
tests/test_scale_out.py.
"""
from __future__ import annotations

import json
import logging
import time

import pyotp
import pytest
from click.testing import CliRunner

from authportal.cli import main as cli
from authportal.config import AdministrationConfig, LogConfig, SessionConfig, StorageConfig
from authportal.logs import setup_audit_file
from authportal.redis_client import ALL_SESSIONS, SESSION_PREFIX, USER_SESSIONS_PREFIX, connect
from authportal.sessions import Origin, describe_device, open_session_store, session_handle
from authportal.storage import Storage
from authportal.storage import sessions as sessions_table
from tests.servers import wait_until
from tests.support.in_process import PORTAL, AuthActions, ProxiedClient, verify_as

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.5 Mobile/15E148 Safari/604.1")
ADMINS = {"administration": {"subject": ["group:admins"]}}


class Browser(ProxiedClient):
    """A browser of its own (cookies, user agent) behind nginx, which forwards its address in X-Forwarded-For."""

    def __init__(self, app, user_agent: str, address: str | None):
        super().__init__(app)
        self.environ = {"HTTP_USER_AGENT": user_agent, **({"HTTP_X_FORWARDED_FOR": address} if address else {})}

    def open(self, *args, **kwargs):
        kwargs["environ_overrides"] = {**self.environ, **kwargs.get("environ_overrides", {})}
        return super().open(*args, **kwargs)


def browser(app, user_agent: str = FIREFOX, address: str | None = None) -> AuthActions:
    return AuthActions(Browser(app, user_agent, address))


@pytest.fixture(autouse=True)
def audit_file(portal_setup):
    """Audit events go to the config's `log.audit_file` as `serve` writes them (in-process nothing sets that up)."""
    audit_log = logging.getLogger("authportal.audit")
    level = audit_log.level
    audit_log.setLevel(logging.INFO)
    setup_audit_file(LogConfig(audit_file=portal_setup.directory / "audit.log"))
    yield
    setup_audit_file(LogConfig())
    audit_log.setLevel(level)


def audit_events(app, event: str) -> list[dict]:
    path = app.portal.config.log.audit_file
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == event]


def post(actions: AuthActions, path: str, **form: str):
    """A button's form on the account or admin page: POST with the page's CSRF token."""
    return actions.client.post(path, base_url=PORTAL, data={"csrf_token": actions.csrf("/"), **form})


@pytest.fixture
def admin_app(app_with):
    return app_with(**ADMINS)


@pytest.fixture
def run(portal_setup):
    """`run("sessions", "list")`: the CLI on the in-process portal's config (the same database)."""
    return lambda *args: CliRunner().invoke(cli, [*args, "--config", str(portal_setup.config_path)])


def sign_in_with_code(app, actions: AuthActions, user: str) -> None:
    secret = app.portal.totp.provision(user)
    assert actions.login(user).status_code == 302
    assert actions.submit("/2fa", code=pyotp.TOTP(secret).now()).status_code == 302


# -- the user -------------------------------------------------------------------------------------------------------

def test_devices_are_named_by_the_user_agent_parser():
    assert describe_device(FIREFOX) == "Firefox on Linux"
    assert describe_device(IPHONE) == "Mobile Safari on iOS"
    assert describe_device("curl/8.5.0") == "curl"
    assert describe_device("") == "Unknown device"


def test_the_account_page_lists_this_and_the_other_browser_and_signs_the_other_out(app):
    laptop, phone = browser(app, FIREFOX, "198.51.100.10"), browser(app, IPHONE, "203.0.113.20")
    laptop.login("bob")
    phone.login("bob")
    browser(app).login("carol")  # someone else's session is not bob's business
    page = laptop.page("/").get_data(as_text=True)
    section = page[page.index('id="sessions"'):]
    assert "Firefox on Linux" in section and "Mobile Safari on iOS" in section and "carol" not in section
    assert "198.51.100.10" in section and "203.0.113.20" in section
    assert section.count("This browser") == 1
    assert laptop.session_id not in page and phone.session_id not in page, "the cookie is never shown"
    phone_handle = session_handle(phone.session_id)
    assert f"/sessions/{phone_handle}/end" in section

    assert post(laptop, f"/sessions/{phone_handle}/end").status_code == 302
    assert verify_as(app, phone.session_id).status_code == 401, "the phone is signed out"
    assert laptop.verify().status_code == 200
    assert "That session was signed out." in laptop.page("/").get_data(as_text=True)
    ended = audit_events(app, "session_revoke")
    assert [(e["actor"], e["user"], e["session"], e["via"]) for e in ended] == [("bob", "bob", phone_handle, "account")]


def test_sign_out_everywhere_else_keeps_this_browser(app):
    here, *others = [browser(app) for _ in range(3)]
    for actions in (here, *others):
        actions.login("bob")
    assert post(here, "/sessions/end-others").status_code == 302
    assert [verify_as(app, o.session_id).status_code for o in others] == [401, 401]
    assert here.verify().status_code == 200
    assert "You were signed out everywhere else." in here.page("/").get_data(as_text=True)


def test_a_user_cannot_end_another_users_session_and_forms_need_their_token(app):
    bob, alice = browser(app), browser(app)
    bob.login("bob")
    alice.login("alice")
    assert post(bob, f"/sessions/{session_handle(alice.session_id)}/end").status_code == 404
    assert verify_as(app, alice.session_id).status_code == 200
    forged = bob.client.post("/sessions/end-others", base_url=PORTAL, data={"csrf_token": "0" * 64})
    assert forged.status_code == 400


# -- the administrator ----------------------------------------------------------------------------------------------

def test_admin_is_off_by_default(app):
    admin = browser(app)
    admin.login("alice")
    assert admin.page("/admin").status_code == 404


def test_administration_subject_reads_like_a_rules_subject():
    administration = AdministrationConfig(subject=[["group:admins", "group:oncall"], "user:carol"])
    assert administration.admits("carol", [])
    assert administration.admits("alice", ["admins", "oncall"])
    assert not administration.admits("alice", ["admins"]), "a nested list is AND'ed"


def test_admin_is_for_members_with_two_factors(admin_app):
    bob = browser(admin_app)
    bob.login("bob")
    assert bob.page("/admin").status_code == 403, "not in administration.subject"
    alice = browser(admin_app)
    alice.login("alice")
    refused = alice.page("/admin")
    assert refused.status_code == 403 and "needs two factors" in refused.get_data(as_text=True)
    admin_app.portal.totp.provision("alice")
    asked = alice.page("/admin")
    assert asked.status_code == 302 and asked.headers["Location"].startswith("/2fa?rd=")
    assert browser(admin_app).page("/admin").status_code == 302, "signed out: to the sign-in page"


def test_the_admin_ends_a_users_sessions_lifts_a_ban_and_revokes_a_token(admin_app):
    alice = browser(admin_app)
    sign_in_with_code(admin_app, alice, "alice")
    bobs = [browser(admin_app, FIREFOX, "198.51.100.1"), browser(admin_app, IPHONE, "198.51.100.2")]
    for actions in bobs:
        actions.login("bob")
    for _ in range(5):  # regulation.max_retries: carol is banned
        browser(admin_app).login("carol", "wrong")
    token, info = admin_app.portal.tokens.create("bob", "grafana")

    page = alice.page("/admin").get_data(as_text=True)
    for shown in ("Firefox on Linux", "Mobile Safari on iOS", "198.51.100.2", "the user, from anywhere", "grafana"):
        assert shown in page
    assert "login_failure" in page, "the last audit events"
    assert all(b.session_id not in page for b in bobs)
    bob_page = alice.page("/admin?user=bob").get_data(as_text=True)
    assert "End all sessions of bob" in bob_page and "alice" not in bob_page.split('id="sessions"')[1].split("</section>")[0]

    assert post(alice, "/admin/sessions/end", user="bob", filter="bob").status_code == 302
    assert [verify_as(admin_app, b.session_id).status_code for b in bobs] == [401, 401]
    assert alice.verify().status_code == 200
    assert post(alice, "/admin/bans/lift", ban="user:carol").status_code == 302
    assert browser(admin_app).login("carol").status_code == 302
    bearer = {"Authorization": f"Bearer {token}"}
    assert alice.verify(**bearer).status_code == 200
    assert post(alice, f"/admin/tokens/{info.id}/revoke").status_code == 302
    assert alice.verify(**bearer).status_code == 401

    revoked = audit_events(admin_app, "session_revoke")
    assert {(e["actor"], e["user"], e["via"]) for e in revoked} == {("alice", "bob", "admin")} and len(revoked) == 2
    assert [(e["actor"], e["user"]) for e in audit_events(admin_app, "ban_lift")] == [("alice", "carol")]
    assert [(e["actor"], e["user"]) for e in audit_events(admin_app, "token_revoke")] == [("alice", "bob")]
    assert [e.get("filter") for e in audit_events(admin_app, "admin_view")] == [None, "bob"]


def test_the_admin_page_says_when_there_is_no_audit_file(app_with, portal_setup):
    app = app_with(**ADMINS, log={"audit_file": None})
    alice = browser(app)
    sign_in_with_code(app, alice, "alice")
    assert "The audit file is not configured" in alice.page("/admin").get_data(as_text=True)


def test_the_cli_lists_and_ends_sessions_and_lists_and_lifts_bans(admin_app, run):
    bob = browser(admin_app, IPHONE, "203.0.113.5")
    bob.login("bob")
    listed = run("sessions", "list", "--user", "bob")
    assert listed.exit_code == 0, listed.output
    assert "Mobile Safari on iOS" in listed.output and "203.0.113.5" in listed.output
    assert bob.session_id not in listed.output
    as_json = json.loads(run("sessions", "list", "--json").output)
    assert [(s["id"], s["user"], s["ip"], s["factors"]) for s in as_json] == [
        (session_handle(bob.session_id), "bob", "203.0.113.5", 1)]
    assert run("sessions", "revoke", "--user", "bob", "abc").exit_code == 2, "one or the other"
    missing = run("sessions", "revoke", "0123456789ab")
    assert missing.exit_code == 1 and "no live session with ID 0123456789ab" in missing.output
    ended = run("sessions", "revoke", session_handle(bob.session_id))
    assert ended.exit_code == 0 and "ended session" in ended.output
    # another process ended it: this one's cached copy lapses within session.cache_ttl
    wait_until(lambda: verify_as(admin_app, bob.session_id).status_code == 401, timeout=10, what="the session ended")

    for _ in range(5):
        browser(admin_app, address="198.51.100.9").login("carol", "wrong")
    bans = json.loads(run("bans", "list", "--json").output)
    assert [(b["kind"], b["user"], b["id"]) for b in bans] == [("user", "carol", "user:carol")]
    assert "user, from anywhere" in run("bans", "list").output
    lifted = run("bans", "lift", "Carol")
    assert lifted.exit_code == 0 and "lifted the user ban on carol" in lifted.output
    assert run("bans", "list").output.strip() == "no bans in force"
    assert run("bans", "lift", "carol").exit_code == 1
    assert browser(admin_app).login("carol").status_code == 302
    audited = audit_events(admin_app, "session_revoke") + audit_events(admin_app, "ban_lift")
    assert [(e["actor"].split(":")[0], e["user"], e["via"]) for e in audited] == [("cli", "bob", "cli"),
                                                                                   ("cli", "carol", "cli")]


# -- bans that cannot be turned against users -----------------------------------------------------------------------

def guesses(app, user: str, address: str, count: int) -> None:
    for _ in range(count):
        assert browser(app, address=address).login(user, "wrong").status_code == 401


def test_user_ip_mode_bans_the_guesser_not_the_owner(app_with):
    app = app_with(regulation={"modes": ["user_ip"], "max_retries": 3})
    guesses(app, "bob", "198.51.100.66", 3)
    assert browser(app, address="198.51.100.66").login("bob").status_code == 401, "the attacker's address is banned"
    assert browser(app, address="203.0.113.7").login("bob").status_code == 302, "bob signs in from his own"
    assert browser(app, address="198.51.100.66").login("carol").status_code == 302, "others from that address too"
    assert [(e["kind"], e["user"], e["ip"]) for e in audit_events(app, "ban")] == [("user_ip", "bob", "198.51.100.66")]
    metrics = browser(app).page("/metrics").get_data(as_text=True)
    assert 'authportal_bans_total{kind="user_ip"} 1.0' in metrics
    assert 'authportal_bans_total{kind="user"} 0.0' in metrics


def test_user_mode_bans_the_account_from_everywhere(app_with):
    app = app_with(regulation={"modes": ["user"], "max_retries": 3})
    guesses(app, "bob", "198.51.100.66", 3)
    assert browser(app, address="203.0.113.7").login("bob").status_code == 401
    assert browser(app, address="198.51.100.66").login("carol").status_code == 302, "the address is not banned"


def test_ip_mode_bans_the_address_for_everyone_but_never_an_exempt_one(app_with):
    app = app_with(regulation={"modes": ["ip"], "ip_max_retries": 3, "exempt_networks": ["10.1.0.0/16"]})
    for user in ("bob", "carol", "alice"):
        guesses(app, user, "198.51.100.66", 1)
    assert browser(app, address="198.51.100.66").login("carol").status_code == 401
    assert browser(app, address="203.0.113.7").login("bob").status_code == 302, "the users are not banned"
    for user in ("bob", "carol", "alice", "bob", "carol"):  # a scraper network with stale passwords
        guesses(app, user, "10.1.2.3", 1)
    assert browser(app, address="10.1.2.3").login("bob").status_code == 302
    assert {(e["kind"], e["ip"]) for e in audit_events(app, "ban")} == {("ip", "198.51.100.66")}


def test_exempt_networks_still_count_user_ip_so_a_stale_scraper_bans_only_itself(app_with):
    app = app_with(regulation={"modes": ["user_ip", "ip"], "max_retries": 3, "ip_max_retries": 3,
                               "exempt_networks": ["10.1.0.0/16"]})
    guesses(app, "bob", "10.1.2.3", 3)
    assert browser(app, address="10.1.2.3").login("bob").status_code == 401, "the scraper's credential is banned"
    assert browser(app, address="10.1.2.3").login("carol").status_code == 302, "its address is not"
    assert browser(app, address="203.0.113.7").login("bob").status_code == 302, "nor is bob elsewhere"


# -- what a listing costs -------------------------------------------------------------------------------------------

SESSIONS = 10_000


def best_of_three(action) -> float:
    """Seconds `action()` takes, the best of three runs (a figure for the docs, never asserted)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def monitored(server, database: int, action) -> list[str]:
    """The commands Redis received (MONITOR) on `database` while `action()` ran, by name."""
    seen: list[str] = []
    with server.client().monitor() as monitor:  # MONITOR is on once this returns
        action()
        server.client().echo("monitor-done")
        for event in monitor.listen():
            if "monitor-done" in event["command"]:
                return seen
            if event["db"] == database:
                seen.append(event["command"].split()[0].upper())
    return seen


def copies(client, session_ids: list[str], count: int) -> None:
    """`count` more sessions like these (their stored records under new ids, filed in the same indexes): the
    real write path costs a round trip per session, and 10,000 of them only time the network."""
    records = [client.get(SESSION_PREFIX + sid) for sid in session_ids]
    with client.pipeline(transaction=False) as pipe:
        for n in range(count):
            record = records[n % len(records)]
            data, sid = json.loads(record), f"copy{n:039d}"
            pipe.set(SESSION_PREFIX + sid, record, ex=3600)
            for index in (USER_SESSIONS_PREFIX + data["user"], ALL_SESSIONS):
                pipe.zadd(index, {sid: data["expires"]})
        pipe.execute()


def test_a_redis_listing_reads_the_users_index_never_a_key_scan_and_10000_sessions_list_fast(redis_server, tmp_path):
    database = 9  # a database of this test's own on the shared server
    redis_server.client(db=database).flushdb()
    config = SessionConfig(redis={"url": f"redis://127.0.0.1:{redis_server.port}/{database}"})
    client = connect(config.redis)
    store = open_session_store(config, Storage(StorageConfig(sqlite={"path": tmp_path / "db.sqlite3"})), client,
                               serving=False)
    others = [store.create({"user": f"user{n}", "level": 1}, False, Origin("198.51.100.1", FIREFOX)) for n in range(97)]
    bobs = [store.create({"user": "bob", "level": 1}, False, Origin("203.0.113.5", IPHONE)) for _ in range(3)]
    copies(client, others, SESSIONS - 100)

    commands = monitored(redis_server, database, lambda: store.sessions("bob"))
    assert commands == ["MULTI", "ZREMRANGEBYSCORE", "ZRANGE", "EXEC", "MGET"], "bob's index, then his 3 sessions"
    print(f"\ncommands to list one user's sessions among {SESSIONS}: {len(commands)} ({' '.join(commands)})")
    assert {info.handle for info in store.sessions("bob")} == {session_handle(sid) for sid in bobs}

    assert len(store.sessions()) == SESSIONS
    took = best_of_three(store.sessions)
    commands = monitored(redis_server, database, store.sessions)
    assert not {"SCAN", "KEYS"} & set(commands) and commands.count("MGET") == SESSIONS // 1000
    print(f"listing all {SESSIONS} sessions from Redis: {took * 1000:.0f} ms, {len(commands)} commands")
    store.close()
    client.close()


def test_listing_10000_sessions_from_the_database(tmp_path):
    storage = Storage(StorageConfig(sqlite={"path": tmp_path / "db.sqlite3"}))
    storage.migrate()
    store = open_session_store(SessionConfig(), storage, serving=False)
    now = time.time()
    with storage.begin() as conn:  # written at once: one save per session would only time SQLite's commits
        conn.execute(sessions_table.insert(), [
            {"id": f"{n:043d}", "username": f"user{n % 1000}", "expires_at": now + 3600, "data": json.dumps(
                {"user": f"user{n % 1000}", "level": 1, "created": now, "last_seen": now, "expires": now + 3600,
                 "remember": False, "ip": "198.51.100.1", "device": "Firefox on Linux", "instance": "test"})}
            for n in range(SESSIONS)])
    assert len(store.sessions()) == SESSIONS and len(store.sessions("user7")) == SESSIONS // 1000
    print(f"\nlisting all {SESSIONS} sessions from SQLite: {best_of_three(store.sessions) * 1000:.0f} ms; "
          f"one user's 10: {best_of_three(lambda: store.sessions('user7')) * 1000:.1f} ms")
    storage.close()
