"""Password self-service on the users file, in-process: change (current password through the one check path,
policy per rule, the other sessions end), reset by an e-mailed link (the filesystem notifier), and the
lost-second-factor link. The SMTP and browser path is tests/test_password_reset_browser.py; the directory
side (OpenLDAP, Active Directory) tests/test_ldap_passwords.py."""
from __future__ import annotations

import re

import pyotp
import pytest

from authportal.authentication.users_file import parse_users_file
from tests.support.in_process import PORTAL, PROM, ProxiedClient, csrf, page, post_login, verify
from tests.support.portal import USERS

NEW = "a long walk to the harbour at dawn"


@pytest.fixture
def mail(portal_setup):
    return portal_setup.directory / "mail.txt"


@pytest.fixture
def selfservice(app_with, mail):
    return app_with(password_change={"enable": True}, password_reset={"enable": True},
                    identity_validation={"reset_second_factor": True}, notifier={"filesystem": {"path": str(mail)}},
                    regulation={"max_retries": 3})


def change(client, current: str, new: str = NEW, confirm: str | None = None):
    return client.post("/password", base_url=PORTAL, data={
        "csrf_token": csrf(client, "/password"), "current_password": current, "new_password": new,
        "confirm_password": new if confirm is None else confirm})


def links(mail) -> list[str]:
    return re.findall(r"https?://\S+/(?:reset-password|2fa/lost)/\S+", mail.read_text()) if mail.exists() else []


def test_the_change_form_shows_the_rules_first_and_refuses_each_bad_password_with_its_reason(selfservice):
    client = ProxiedClient(selfservice)
    assert post_login(client, "bob").status_code == 302
    form = page(client, "/password").get_data(as_text=True)
    assert form.index("Current password") < form.index("At least 12 characters") < form.index("New password again")
    current = USERS["bob"]["password"]
    for new, confirm, reason in (
            ("short one", None, "too short: it needs at least 12 characters"),
            ("bob", None, "too short"),
            ("BOB", None, "cannot be your username"),
            (current, None, "must be different from the current one"),
            ("password1234", None, "too easy to guess"),
            (NEW, NEW + "x", "The two new passwords are not the same.")):
        refused = change(client, current, new, confirm)
        assert refused.status_code == 400 and reason in refused.get_data(as_text=True), (new, reason)
    assert change(client, "wrong guess").status_code == 401


def test_a_changed_password_works_the_old_one_and_the_other_sessions_do_not(selfservice, portal_setup):
    here, elsewhere = ProxiedClient(selfservice), ProxiedClient(selfservice)
    for client in (here, elsewhere):
        assert post_login(client, "bob").status_code == 302
    portal_setup.users_path.write_text("# the team (kept by every write)\n" + portal_setup.users_path.read_text())
    before = portal_setup.users_path.read_text()
    assert change(here, USERS["bob"]["password"]).headers["Location"] == "/"
    assert "Your password was changed. Your other sessions have ended." in page(here, "/").get_data(as_text=True)
    after = portal_setup.users_path.read_text()
    assert after.startswith("# the team (kept by every write)\n") and after.count("\n") == before.count("\n")
    assert parse_users_file(portal_setup.users_path)["bob"].password.startswith("$argon2id$")
    assert verify(here).status_code == 200, "this session goes on"
    assert verify(elsewhere).status_code == 401, "the other one ended"
    assert post_login(ProxiedClient(selfservice), "bob", NEW).status_code == 302
    assert post_login(ProxiedClient(selfservice), "bob").status_code == 401


def test_wrong_current_passwords_on_the_change_form_ban(selfservice):
    client = ProxiedClient(selfservice)
    assert post_login(client, "alice").status_code == 302
    for attempt in range(3):
        assert change(client, f"guess-{attempt}").status_code == 401
    assert post_login(ProxiedClient(selfservice), "alice").status_code == 401, "banned everywhere"


def request_reset(client, identifier: str):
    return client.post("/reset-password", base_url=PORTAL,
                       data={"csrf_token": csrf(client, "/reset-password"), "identifier": identifier})


def test_a_reset_link_sets_a_new_password_once_and_ends_every_session(selfservice, mail):
    signed_in = ProxiedClient(selfservice)
    assert post_login(signed_in, "bob").status_code == 302
    client = ProxiedClient(selfservice)
    known, unknown = request_reset(client, "bob@example.test"), request_reset(client, "nobody@example.test")
    assert (known.status_code, known.get_data(as_text=True)) == (unknown.status_code, unknown.get_data(as_text=True))
    assert "If the account exists" in known.get_data(as_text=True)
    selfservice.portal.outbox.drain()
    [link] = links(mail)
    assert "To: bob@example.test" in mail.read_text() and "works once, for 10 minutes" in mail.read_text()
    path = link.split("auth.example.test", 1)[1].split(":", 1)[-1]
    path = path[path.index("/reset-password/"):]
    assert page(client, path).status_code == 200 and page(client, path).status_code == 200, "opening it uses nothing"
    form = {"csrf_token": csrf(client, path), "new_password": NEW, "confirm_password": NEW}
    done = client.post(path, base_url=PORTAL, data=form)
    assert (done.status_code, done.headers["Location"]) == (302, "/")
    assert "Your password was changed. Sign in with the new one." in page(client, "/").get_data(as_text=True)
    assert verify(signed_in).status_code == 401, "the session of the old password ended"
    assert post_login(ProxiedClient(selfservice), "bob", NEW).status_code == 302
    again = client.post(path, base_url=PORTAL, data={**form, "csrf_token": csrf(client, "/")})
    assert again.status_code == 410 and "no longer works" in again.get_data(as_text=True)


def test_a_reset_link_dies_when_the_password_changes_or_it_expires(selfservice, mail):
    client = ProxiedClient(selfservice)
    request_reset(client, "alice")
    selfservice.portal.outbox.drain()
    [link] = links(mail)
    path = link[link.index("/reset-password/"):]
    assert change_by_login(selfservice, "alice").status_code == 302
    assert page(client, path).status_code == 410, "made under the old password"
    portal = selfservice.portal
    token, _ = portal.links.issue("reset_password", "carol", "stamp", lifetime=60)
    portal.links.clock = lambda: 10 ** 12
    assert page(client, f"/reset-password/{token}").status_code == 410


def change_by_login(app, user: str):
    client = ProxiedClient(app)
    assert post_login(client, user).status_code == 302
    return change(client, USERS[user]["password"])


def test_reset_requests_are_rate_limited_per_user(selfservice, mail):
    client = ProxiedClient(selfservice)
    for _ in range(5):
        assert request_reset(client, "carol").status_code == 200
    selfservice.portal.outbox.drain()
    assert len(links(mail)) == 3


def test_a_lost_second_factor_is_removed_by_an_emailed_link_after_the_password(selfservice, mail):
    portal = selfservice.portal
    secret = portal.totp.provision("alice")
    client = ProxiedClient(selfservice)
    assert post_login(client, "alice").headers["Location"].startswith("/2fa")
    assert "Lost your phone or key?" in page(client, "/2fa").get_data(as_text=True)
    sent = client.post("/2fa/lost", base_url=PORTAL, data={"csrf_token": csrf(client, "/2fa")})
    assert "a message with a link is on its way" in sent.get_data(as_text=True)
    portal.outbox.drain()
    [link] = links(mail)
    path = link[link.index("/2fa/lost/"):]
    assert page(ProxiedClient(selfservice), path).status_code == 302, "the link alone removes nothing"
    removed = client.post(path, base_url=PORTAL, data={"csrf_token": csrf(client, path)})
    assert removed.headers["Location"] == "/2fa/setup"
    assert not portal.totp.has_totp("alice") and pyotp.TOTP(secret).now()
    assert verify(client, PROM).status_code == 200  # one factor still, as before


def test_an_unreachable_mail_server_degrades_health_and_the_answer_stays_the_same(app_with, caplog):
    from tests.servers import free_port

    app = app_with(password_reset={"enable": True}, notifier={"smtp": {
        "host": "127.0.0.1", "port": free_port(), "sender": "portal@example.test", "tls": "none", "timeout": "1s"}})
    client = ProxiedClient(app)
    health = page(client, "/api/health")
    assert health.status_code == 200, "sign-ins still work"
    assert health.json["status"] == "degraded" and health.json["checks"]["notifier"] == {"status": "down"}
    answer = request_reset(client, "bob")
    assert answer.status_code == 200 and "If the account exists" in answer.get_data(as_text=True)
    app.portal.outbox.drain()
    assert any("sending a message failed: ConnectionRefusedError" in r.getMessage() for r in caplog.records)
