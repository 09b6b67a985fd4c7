"""TOTP: RFC 6238 vectors, skew window, single use (also across instances), encryption at rest."""
from __future__ import annotations

import base64
import threading

import pyotp
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from authportal.cli.totp import totp as totp_cli
from authportal.config import TotpConfig
from authportal.secretbox import DecryptionError, SecretBox, WrongEncryptionKey
from authportal.storage import Storage, totp_configurations
from authportal.totp import DIGESTS, TotpService
from tests.support.clock import Clock

KEY = "0123456789abcdef0123456789abcdef-test"
SEED_SHA1 = b"12345678901234567890"
SECRET = base64.b32encode(SEED_SHA1).decode()
T0 = 1_700_000_010.0  # 10 s into a 30 s step


def service(store, clock: Clock, box: SecretBox | None = None, **totp) -> TotpService:
    return TotpService(store, TotpConfig(**totp), box or SecretBox(KEY), clock=clock)


def code(secret: str, step: int, digits: int = 6, algorithm: str = "sha1") -> str:
    return pyotp.OTP(secret, digits=digits, digest=DIGESTS[algorithm]).generate_otp(step)


def step_of(now: float) -> int:
    return int(now // 30)


# RFC 6238 Appendix B: 8-digit codes for the ASCII seeds "1234567890..." of 20, 32 and 64 bytes.
RFC6238 = {
    "sha1": (SEED_SHA1, ["94287082", "07081804", "14050471", "89005924", "69279037", "65353130"]),
    "sha256": (b"12345678901234567890123456789012",
               ["46119246", "68084774", "67062674", "91819424", "90698825", "77737706"]),
    "sha512": (b"1234567890" * 6 + b"1234",
               ["90693936", "25091201", "99943326", "93441116", "38618901", "47863826"]),
}
RFC6238_TIMES = [59, 1111111109, 1111111111, 1234567890, 2000000000, 20000000000]


@pytest.mark.parametrize("algorithm", sorted(RFC6238))
def test_rfc6238_appendix_b_vectors(storage, algorithm):
    seed, expected = RFC6238[algorithm]
    secret = base64.b32encode(seed).decode()
    clock = Clock(0)
    svc = service(storage, clock, algorithm=algorithm, digits=8, skew=0)
    for when, good in zip(RFC6238_TIMES, expected, strict=True):
        clock.now = when
        wrong = good[:-1] + str((int(good[-1]) + 1) % 10)
        assert not svc.enroll("rfc", secret, wrong), (algorithm, when)
        assert svc.enroll("rfc", secret, good), (algorithm, when)
        assert svc.device("rfc").algorithm == algorithm


@pytest.mark.parametrize("skew", [0, 1, 2])
def test_skew_window_boundaries(storage, skew):
    clock = Clock(T0)
    svc = service(storage, clock, skew=skew)
    assert svc.enroll("alice", SECRET, code(SECRET, step_of(T0)))
    for hours, offset in [(1, -skew), (2, skew)]:  # each at its own time: with skew 0 both are step `now`
        clock.now = T0 + hours * 3600
        now = step_of(clock.now)
        assert not svc.check("alice", code(SECRET, now - skew - 1))
        assert not svc.check("alice", code(SECRET, now + skew + 1))
        assert svc.check("alice", code(SECRET, now + offset))


def test_code_cannot_be_used_twice(storage):
    clock = Clock(T0)
    svc = service(storage, clock)
    enrol_code = code(SECRET, step_of(T0))
    assert svc.enroll("alice", SECRET, enrol_code)
    assert not svc.check("alice", enrol_code), "the enrolment code must be spent"
    clock.now += 30
    next_code = code(SECRET, step_of(clock.now))
    assert svc.check("alice", next_code)
    assert not svc.check("alice", next_code)
    clock.now += 15  # still inside the skew window of that step
    assert not svc.check("alice", next_code)


def test_replay_refused_across_instances(storage_config):
    """Two portal instances on one database: a code accepted by one is refused by the other, even at once."""
    stores = [Storage(storage_config) for _ in range(2)]
    try:
        stores[0].migrate()
        clock = Clock(T0)
        services = [service(s, clock) for s in stores]
        assert services[0].enroll("alice", SECRET, code(SECRET, step_of(T0) - 1))
        first = code(SECRET, step_of(T0))
        assert services[0].check("alice", first)
        assert not services[1].check("alice", first)

        clock.now += 30
        racing = code(SECRET, step_of(clock.now))
        barrier = threading.Barrier(8)
        results: list[bool] = []

        def attempt(svc: TotpService) -> None:
            barrier.wait()
            results.append(svc.check("alice", racing))

        threads = [threading.Thread(target=attempt, args=(services[i % 2],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [False] * 7 + [True]
    finally:
        for store in stores:
            store.close()


def test_enroll_with_wrong_code_saves_nothing(storage):
    clock = Clock(T0)
    svc = service(storage, clock)
    good = code(SECRET, step_of(T0))
    for bad in [code(SECRET, step_of(T0) + 5), "abcdef", "12345", "", good + "0"]:
        assert not svc.enroll("alice", SECRET, bad)
    assert not svc.has_totp("alice")
    assert svc.device("alice") is None
    assert svc.secret_uri("alice") is None
    assert svc.enroll("alice", SECRET, f" {good[:3]} {good[3:]} "), "spaces inside a code are ignored"


def test_malformed_codes_rejected_before_any_lookup():
    svc = TotpService(None, TotpConfig(), SecretBox(KEY))  # type: ignore[arg-type]  # any storage use would fail
    for bad in ["12a456", "1234567", "", "١٢٣٤٥٦", "123456789", "12.456"]:
        assert svc.check("alice", bad) is False


def test_secret_encrypted_at_rest(storage, storage_config):
    clock = Clock(T0)
    svc = service(storage, clock)
    secret = svc.new_secret()
    assert svc.enroll("alice", secret, code(secret, step_of(T0)))
    raw_secret = base64.b32decode(secret + "=" * (-len(secret) % 8))
    with storage.engine.connect() as conn:
        rows = conn.execute(sa.select(totp_configurations)).all()
    stored = b"".join(v if isinstance(v, bytes) else str(v).encode() for row in rows for v in row)
    for needle in (secret.encode(), secret.lower().encode(), raw_secret, raw_secret.hex().encode()):
        assert needle not in stored
    if storage_config.sqlite is not None:  # the whole file too (and its WAL)
        for path in storage_config.sqlite.path.parent.iterdir():
            data = path.read_bytes()
            assert secret.encode() not in data and raw_secret not in data, path


def test_wrong_secret_key_refused_at_startup(storage):
    SecretBox(KEY).verify_key(storage)  # seals the canary
    SecretBox(KEY).verify_key(storage)  # and accepts the same key again
    with pytest.raises(WrongEncryptionKey, match="does not match the one this database was created with"):
        SecretBox("another-key-of-at-least-32-characters!").verify_key(storage)


def test_tampered_or_moved_secret_refused(storage):
    clock = Clock(T0)
    svc = service(storage, clock)
    for user in ("alice", "bob"):
        assert svc.enroll(user, SECRET, code(SECRET, step_of(T0)))
    table = totp_configurations
    with storage.engine.begin() as conn:
        blob = conn.execute(sa.select(table.c.secret).where(table.c.username == "alice")).scalar()
        conn.execute(table.update().where(table.c.username == "bob").values(secret=blob))  # moved to another user
        tampered = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
        conn.execute(table.update().where(table.c.username == "alice").values(secret=tampered))
    clock.now += 30
    for user in ("alice", "bob"):
        with pytest.raises(DecryptionError):
            svc.check(user, code(SECRET, step_of(clock.now)))


def test_wrong_key_cannot_open_a_sealed_blob():
    blob = SecretBox(KEY).seal(b"seed", b"totp:alice")
    assert SecretBox(KEY).open(blob, b"totp:alice") == b"seed"
    with pytest.raises(DecryptionError, match="wrong secret_key"):
        SecretBox(KEY + "x").open(blob, b"totp:alice")


def test_device_keeps_its_enrolment_parameters(storage):
    """Changing totp.* in the configuration must not break devices already enrolled."""
    clock = Clock(T0)
    old = service(storage, clock, algorithm="sha256", digits=8, period=60)
    secret = old.new_secret()
    assert old.enroll("alice", secret, code(secret, int(T0 // 60), 8, "sha256"))
    new = service(storage, clock)
    clock.now += 60
    assert new.check("alice", code(secret, int(clock.now // 60), 8, "sha256"))
    device = new.device("alice")
    assert (device.algorithm, device.digits, device.period, device.created_at) == ("sha256", 8, 60, T0)
    assert secret not in repr(device)


def test_reset_and_secret_uri(storage):
    svc = service(storage, Clock(T0))
    assert svc.enroll("alice", SECRET, code(SECRET, step_of(T0)))
    assert f"secret={SECRET}" in svc.secret_uri("alice")
    assert svc.reset("alice")
    assert not svc.has_totp("alice")
    assert not svc.reset("alice")


@pytest.mark.parametrize("algorithm,size", [("sha1", 20), ("sha256", 32), ("sha512", 64)])
def test_new_secret_uri_and_qr(algorithm, size):
    svc = TotpService(None, TotpConfig(issuer="Example Co", algorithm=algorithm, digits=8), SecretBox(KEY))  # type: ignore[arg-type]
    secret = svc.new_secret()
    assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) == size
    assert secret != svc.new_secret()
    uri = svc.provisioning_uri("alice@example.com", secret)
    assert uri.startswith("otpauth://totp/Example%20Co:alice%40example.com?")
    parsed = pyotp.parse_uri(uri)
    assert (parsed.secret, parsed.digits, parsed.interval, parsed.issuer) == (secret, 8, 30, "Example Co")
    assert f"algorithm={algorithm.upper()}" in uri
    svg = svc.qr_svg(uri)
    assert svg.startswith("<svg") and "http" not in svg.split(">", 1)[0].replace("http://www.w3.org", "")


def test_cli_generate_show_reset(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text(
        f"secret_key: {KEY}\nauthentication: {{file: {{path: users.yml}}}}\n"
        "storage: {sqlite: {path: db.sqlite3}}\ntotp: {issuer: example.com}\n"
    )
    run = CliRunner().invoke
    base = ["--config", str(config)]
    assert "no TOTP device" in run(totp_cli, ["show", *base, "alice"]).output
    generated = run(totp_cli, ["generate", *base, "alice"])
    assert generated.exit_code == 0, generated.output
    uri = generated.stdout.strip().splitlines()[-1]
    assert uri.startswith("otpauth://totp/example.com:alice?secret=")
    refused = run(totp_cli, ["generate", *base, "alice"])
    assert refused.exit_code == 1 and "--force" in refused.output
    shown = run(totp_cli, ["show", *base, "alice"])
    assert "TOTP enrolled (sha1, 6 digits, 30 s period" in shown.output and "secret=" not in shown.output
    assert uri in run(totp_cli, ["show", *base, "--secret", "alice"]).output
    assert "removed" in run(totp_cli, ["reset", *base, "alice"]).output
    config.write_text(config.read_text().replace(KEY, KEY + "-changed"))
    wrong = run(totp_cli, ["show", *base, "alice"])
    assert wrong.exit_code == 1 and "secret_key does not match" in wrong.output
