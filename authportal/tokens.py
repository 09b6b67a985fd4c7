"""API tokens for machine clients (Grafana, curl, scripts): `Authorization: Bearer ap_...`.

A token is 256 random bits shown once at creation; only its SHA-256 is stored,
so the database alone cannot be replayed against the portal. Lookup is by that
hash (a unique index), which also keeps the comparison free of timing leaks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .storage import Storage, StorageUnavailable, api_tokens

log = logging.getLogger("authportal.tokens")

PREFIX = "ap_"
_TOKEN_LENGTH = len(PREFIX) + 43  # token_urlsafe(32): 256 bits in 43 characters
#: `last_used_at` is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = 60.0


@dataclass(frozen=True)
class TokenInfo:
    """Everything about a token except the token itself (not even its hash)."""

    id: int
    username: str
    name: str
    scope: tuple[str, ...]
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None
    #: What the token may do at most (empty: anything its owner's rules allow): methods, and path regexes.
    methods: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    """Create, list, revoke and check API tokens; `clock` is injectable for tests."""

    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time):
        self.storage = storage
        self.clock = clock

    def create(self, username: str, name: str, expires_in: float | None = None,
               scope: list[str] | tuple[str, ...] = (), methods: list[str] | tuple[str, ...] = (),
               resources: list[str] | tuple[str, ...] = ()) -> tuple[str, TokenInfo]:
        """A new token (to show once) and its info; `scope` narrows it to some of the owner's subjects,
        `methods` and `resources` (regexes searched in the path, like a rule's) to some requests."""
        name = name.strip()
        if not name or len(name) > 128 or not name.isprintable():
            raise ValueError("the token name must be 1 to 128 printable characters")
        if expires_in is not None and expires_in <= 0:
            raise ValueError("the expiry must be a positive duration")
        scope = tuple(_check_subject(s) for s in scope)
        methods = tuple(_check_method(m) for m in methods)
        resources = tuple(_check_resource(r) for r in resources)
        token = PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        expires_at = None if expires_in is None else now + expires_in
        with self.storage.begin() as conn:
            token_id = conn.execute(api_tokens.insert().values(
                token_hash=hash_token(token), username=username, name=name, scope=",".join(scope),
                methods=",".join(methods), resources=json.dumps(resources) if resources else "",
                created_at=now, expires_at=expires_at,
            )).inserted_primary_key[0]
        info = TokenInfo(id=token_id, username=username, name=name, scope=scope, created_at=now,
                         expires_at=expires_at, last_used_at=None, revoked_at=None, methods=methods,
                         resources=resources)
        return token, info

    def list(self, username: str | None = None) -> list[TokenInfo]:
        query = sa.select(api_tokens).order_by(api_tokens.c.id)
        if username is not None:
            query = query.where(api_tokens.c.username == username)
        with self.storage.connect() as conn:
            return [_info(row) for row in conn.execute(query)]

    def revoke(self, token_id: int, username: str | None = None) -> bool:
        """Revoke a token (only the given user's, when `username` is set); False if there is no such token."""
        query = api_tokens.update().where(api_tokens.c.id == token_id)
        if username is not None:
            query = query.where(api_tokens.c.username == username)
        query = query.values(revoked_at=sa.func.coalesce(api_tokens.c.revoked_at, self.clock()))
        with self.storage.begin() as conn:
            return conn.execute(query).rowcount == 1

    def authenticate(self, token: str) -> TokenInfo | None:
        """The token's info if it is known, not expired and not revoked; else None."""
        if not token.startswith(PREFIX) or len(token) != _TOKEN_LENGTH:
            return None  # not one of ours: no database round trip
        with self.storage.connect() as conn:
            row = conn.execute(sa.select(api_tokens).where(api_tokens.c.token_hash == hash_token(token))).first()
        if row is None:
            return None
        info = _info(row)
        now = self.clock()
        if info.state(now) != "active":
            return None
        if info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION:
            self._touch(info.id, now)
        return info

    def _touch(self, token_id: int, now: float) -> None:
        """Record use (best effort: the token was valid); the WHERE clause keeps concurrent requests from all writing."""
        stale = sa.or_(api_tokens.c.last_used_at.is_(None), api_tokens.c.last_used_at <= now - LAST_USED_RESOLUTION)
        try:
            with self.storage.begin() as conn:
                conn.execute(api_tokens.update().where(api_tokens.c.id == token_id, stale).values(last_used_at=now))
        except StorageUnavailable as exc:
            log.warning("cannot record the use of API token %s: %s", token_id, exc)


def _check_subject(subject: str) -> str:
    kind, _, name = subject.partition(":")
    if kind not in ("user", "group") or not name or "," in name:
        raise ValueError(f"scope {subject!r} must be 'user:NAME' or 'group:NAME'")
    return subject


def _check_method(method: str) -> str:
    method = method.strip().upper()
    if not re.fullmatch(r"[A-Z]{1,32}", method):
        raise ValueError(f"method {method!r} is not an HTTP method")
    return method


def _check_resource(pattern: str) -> str:
    """A token's resources restrict it, and are searched in the path and the ?query: one that is not anchored at
    the start of the path would also match a query string that names it (`/other?x=/api/v1/query`)."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"resource {pattern!r} is not a regular expression: {exc}") from None
    if not pattern.startswith("^/"):
        raise ValueError(f"resource {pattern!r} must start with ^/ (the start of the path): unanchored, it would "
                         "also match a ?query that names it, e.g. ^/prometheus/api/v1/query")
    return pattern


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        id=row.id, username=row.username, name=row.name, scope=tuple(s for s in row.scope.split(",") if s),
        created_at=row.created_at, expires_at=row.expires_at, last_used_at=row.last_used_at,
        revoked_at=row.revoked_at, methods=tuple(m for m in row.methods.split(",") if m),
        resources=tuple(json.loads(row.resources)) if row.resources else (),
    )
