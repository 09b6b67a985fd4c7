"""API tokens: shown once, stored hashed, refused when unknown, expired or revoked; the `tokens` CLI."""
from __future__ import annotations

import hashlib
import re

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from authportal.cli.tokens import tokens as tokens_cli
from authportal.storage import api_tokens
from authportal.tokens import TokenService
from tests.support.clock import Clock

T0 = 1_700_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def service(storage, clock) -> TokenService:
    return TokenService(storage, clock=clock)


def test_create_and_authenticate(service):
    token, info = service.create("alice", "grafana", None, ["group:monitoring"])
    assert re.fullmatch(r"ap_[A-Za-z0-9_-]{43}", token)
    found = service.authenticate(token)
    assert found is not None
    assert (found.id, found.username, found.name, found.scope) == (info.id, "alice", "grafana", ("group:monitoring",))
    assert found.expires_at is None and found.revoked_at is None
    assert token not in repr(info) and token.removeprefix("ap_") not in repr(found)
    other, _ = service.create("alice", "curl")
    assert other != token and service.authenticate(other).scope == ()


def test_only_the_hash_is_stored(service, storage):
    token, _ = service.create("alice", "grafana")
    with storage.engine.connect() as conn:
        row = conn.execute(sa.select(api_tokens)).one()
    assert row.token_hash != token
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert all(token.removeprefix("ap_") not in str(value) for value in row)
    assert hashlib.sha256(token.encode()).hexdigest() not in repr(service.list()[0])


def test_expired_token_refused(service, clock):
    token, info = service.create("alice", "ci", expires_in=3600)
    assert info.expires_at == T0 + 3600
    clock.now = T0 + 3599
    assert service.authenticate(token) is not None
    clock.now = T0 + 3600
    assert service.authenticate(token) is None
    assert service.list()[0].state(clock.now) == "expired"


def test_revoked_token_refused(service, clock):
    token, info = service.create("alice", "grafana")
    clock.now += 10
    assert service.revoke(info.id)
    assert service.authenticate(token) is None
    clock.now += 10
    assert service.revoke(info.id), "revoking twice is not an error"
    assert service.list()[0].revoked_at == T0 + 10, "the first revocation time is kept"


@pytest.mark.parametrize("candidate", ["", "ap_", "Bearer", "ap_" + "A" * 43, "xx_" + "A" * 43, "ap_" + "A" * 44])
def test_unknown_token_refused(service, candidate):
    service.create("alice", "grafana")
    assert service.authenticate(candidate) is None


def test_user_cannot_revoke_anothers_token(service):
    token, info = service.create("alice", "grafana")
    assert not service.revoke(info.id, username="bob")
    assert service.authenticate(token) is not None
    assert service.revoke(info.id, username="alice")
    assert service.authenticate(token) is None
    assert not service.revoke(info.id + 1000)


def test_last_used_written_at_most_once_a_minute(service, clock):
    token, _ = service.create("alice", "grafana")
    assert service.list()[0].last_used_at is None
    service.authenticate(token)
    assert service.list()[0].last_used_at == T0
    clock.now = T0 + 59
    service.authenticate(token)
    assert service.list()[0].last_used_at == T0
    clock.now = T0 + 61
    service.authenticate(token)
    assert service.list()[0].last_used_at == T0 + 61


def test_list_filters_by_owner(service):
    service.create("alice", "a1")
    service.create("bob", "b1")
    service.create("alice", "a2")
    assert [i.name for i in service.list("alice")] == ["a1", "a2"]
    assert [i.username for i in service.list()] == ["alice", "bob", "alice"]


@pytest.mark.parametrize("name,expires,scope", [
    ("", None, []), ("x" * 129, None, []), ("ok", 0, []), ("ok", -5, []), ("nul\x00name", None, []),
    ("new\nline", None, []),
    ("ok", None, ["monitoring"]), ("ok", None, ["group:"]), ("ok", None, ["group:a,b"]),
])
def test_invalid_requests_refused(service, name, expires, scope):
    with pytest.raises(ValueError):
        service.create("alice", name, expires, scope)
    assert service.list() == []


@pytest.mark.parametrize("resource", ["/api/v1/query", "api/v1/query", "(^/api/v1/query)", "["])
def test_a_tokens_resources_must_be_anchored_regexes(service, resource):
    """A token's resources restrict it, and are searched in the path and the ?query: unanchored,
    `/api/v1/query` would also let `/api/v1/admin/tsdb/delete_series?x=/api/v1/query` through."""
    with pytest.raises(ValueError, match="start with \\^|not a regular expression"):
        service.create("alice", "reader", resources=[resource])
    assert service.list() == []
    service.create("alice", "reader", resources=["^/api/v1/query"])


def write_config(tmp_path, storage_yaml: str = "{sqlite: {path: db.sqlite3}}"):
    """A real configuration file, as an operator would pass with --config."""
    config = tmp_path / "config.yml"
    config.write_text(
        "secret_key: 0123456789abcdef0123456789abcdef\n"
        "authentication: {file: {path: users.yml}}\n"
        f"storage: {storage_yaml}\n"
    )
    return config


def test_cli_create_list_revoke(tmp_path):
    config = write_config(tmp_path)
    run = CliRunner().invoke
    base = ["--config", str(config)]

    assert run(tokens_cli, ["list", *base]).output.strip() == "no API tokens"
    created = run(tokens_cli, ["create", *base, "alice", "--name", "grafana", "--expires", "90d",
                               "--scope", "group:monitoring"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert re.fullmatch(r"ap_[A-Za-z0-9_-]{43}", token), "stdout holds the token alone, for scripts"
    assert "will not be shown again" in created.stderr

    listed = run(tokens_cli, ["list", *base, "alice"])
    assert listed.exit_code == 0
    header, row = listed.output.strip().splitlines()
    assert header.split() == ["ID", "USER", "NAME", "SCOPE", "METHODS", "RESOURCES", "CREATED", "EXPIRES", "LAST", "USED",
                              "STATE"]
    assert row.split()[:6] == ["1", "alice", "grafana", "group:monitoring", "(any)", "(any)"] and row.endswith("active")
    assert token not in listed.output
    assert run(tokens_cli, ["list", *base, "bob"]).output.strip() == "no API tokens"

    revoked = run(tokens_cli, ["revoke", *base, "1"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert run(tokens_cli, ["list", *base]).output.rstrip().endswith("revoked")
    missing = run(tokens_cli, ["revoke", *base, "42"])
    assert missing.exit_code == 1 and "no API token with id 42" in missing.output


@pytest.mark.parametrize("args,message", [
    (["--expires", "soon"], "invalid duration"),
    (["--expires", "0s"], "positive"),
    (["--scope", "monitoring"], "group:NAME"),
])
def test_cli_usage_errors_exit_2(tmp_path, args, message):
    config = write_config(tmp_path)
    result = CliRunner().invoke(tokens_cli, ["create", "--config", str(config), "alice", "--name", "x", *args])
    assert result.exit_code == 2 and message in result.output


def test_cli_storage_failure_exits_1(tmp_path):
    config = write_config(tmp_path, "{postgres: {url: 'postgresql://u:p@127.0.0.1:1/none'}}")  # nothing listens
    result = CliRunner().invoke(tokens_cli, ["list", "--config", str(config)])
    assert result.exit_code == 1 and "storage unavailable" in result.output
