"""The security keys' storage on SQLite and PostgreSQL: ceremonies are single-use even when two requests race,
bound to their session and purpose, and expire; each user has one random handle; keys are listed and removed."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from authportal.config import parse_config
from authportal.security_keys import PASSKEY, REGISTER, SECOND_FACTOR, KeyRefused, SecurityKeys
from authportal.storage import Storage, webauthn_credentials
from tests.support.clock import Clock
from tests.support.portal import SECRET_KEY


@pytest.fixture
def keys(storage_config):
    config = parse_config({
        "server": {"portal_url": "https://auth.example.test"}, "secret_key": SECRET_KEY,
        "session": {"domain": "example.test"}, "authentication": {"file": {"path": "/dev/null"}},
        "storage": {"sqlite": {"path": "/unused"}}, "webauthn": {"timeout": "30s"}})
    storage = Storage(storage_config)
    storage.migrate()
    clock = Clock(1_800_000_000.0)
    yield SecurityKeys(storage, config, clock=clock), clock
    storage.close()


def test_a_ceremony_is_taken_once_even_by_two_requests_at_once(keys):
    service, _ = keys
    for attempt in range(5):
        ceremony = service._store(SECOND_FACTOR, "alice", "session-1", b"challenge-%d" % attempt)
        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(_try_take, [service] * 2, [ceremony] * 2, [SECOND_FACTOR] * 2,
                                     ["session-1"] * 2, ["alice"] * 2))
        assert sorted(outcomes, key=str) == [b"challenge-%d" % attempt, "no_ceremony"]


def test_a_ceremony_serves_only_its_session_purpose_and_user_and_expires(keys):
    service, clock = keys
    for purpose, session, user in ((SECOND_FACTOR, "other-session", "alice"), (REGISTER, "session-1", "alice"),
                                   (SECOND_FACTOR, "session-1", "bob"), (PASSKEY, None, None)):
        ceremony = service._store(SECOND_FACTOR, "alice", "session-1", b"c")
        assert _try_take(service, ceremony, purpose, session, user) == "no_ceremony", (purpose, session, user)
        assert _try_take(service, ceremony, SECOND_FACTOR, "session-1", "alice") == "no_ceremony", "used up"
    ceremony = service._store(PASSKEY, None, None, b"late")
    clock.now += 31
    assert _try_take(service, ceremony, PASSKEY, None, None) == "no_ceremony"
    assert _try_take(service, "", PASSKEY, None, None) == "no_ceremony"


def test_each_user_has_one_random_handle_and_keys_are_listed_and_removed(keys):
    service, clock = keys
    alice = service._user_handle("alice")
    assert alice == service._user_handle("alice") != service._user_handle("bob")
    assert "alice" not in alice and len(alice) == 43  # 32 random bytes, base64url
    with service.storage.begin() as conn:
        for name, credential_id in (("YubiKey", "AAAA"), ("Laptop", "BBBB")):
            clock.now += 1
            conn.execute(webauthn_credentials.insert().values(
                username="alice", name=name, credential_id=credential_id, public_key=b"k", sign_count=0,
                user_handle=alice, discoverable=False, transports="usb", aaguid="0" * 36, created_at=clock()))
    assert [k.name for k in service.keys_of("alice")] == ["YubiKey", "Laptop"] and service.keys_of("bob") == []
    laptop = service.find("alice", "Laptop")
    assert laptop is not None and service.find("alice", str(laptop.id)) == laptop
    assert service.find("bob", "Laptop") is None and service.owner({"rawId": "BBBB"}) == "alice"
    service.remove(laptop)
    assert [k.name for k in service.keys_of("alice")] == ["YubiKey"] and service.owner({"rawId": "BBBB"}) is None
    with pytest.raises(KeyRefused, match="could not be read"):
        service.owner({"rawId": "not base64url!"})


def _try_take(service: SecurityKeys, ceremony: str, purpose: str, session: str | None, user: str | None):
    try:
        return service._take(ceremony, purpose, session, user)
    except KeyRefused as refusal:
        return refusal.reason


@pytest.mark.parametrize("answer", ['{"rawId": "AAAA", "response": []}', '{"rawId": "AAAA"}', '[]', '"x"', '{'])
def test_a_malformed_answer_is_a_400_not_a_500(app_with, answer):
    from tests.support.in_process import PORTAL, ProxiedClient, csrf

    app = app_with(server={"portal_url": "https://auth.example.test"}, webauthn={"passkey_login": True})
    client = ProxiedClient(app)
    sent = client.post("/api/webauthn/passkey", base_url=PORTAL,
                       data={"csrf_token": csrf(client), "credential": answer})
    assert sent.status_code == 400 and sent.json["message"] == "The browser's answer could not be read. Try again."
