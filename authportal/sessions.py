"""Server-side sessions: Redis when configured, else the storage database, with a short in-memory cache.

The cookie holds only a random 256-bit session id. Every worker keeps the
sessions it saw for at most `session.cache_ttl` (default 1 s): a verify with a
valid session usually costs no I/O at all, and a logout elsewhere is seen
within that bound (at once on the same worker; Redis also broadcasts it).
Session data is JSON, never pickle.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import SessionConfig
from .storage import Storage, StorageUnavailable

log = logging.getLogger("authportal.sessions")

SESSION_ID_RE = re.compile(r"[A-Za-z0-9_\-]{43}")
REDIS_PREFIX = "authportal:session:"
REVOKED_CHANNEL = "authportal:session:revoked"
MAX_CACHED = 100_000


class SessionStoreUnavailable(Exception):
    """The session backend cannot answer; the verify path answers as for an unknown session."""


class SessionBackend(Protocol):
    def load(self, session_id: str) -> dict[str, Any] | None: ...
    def save(self, session_id: str, data: dict[str, Any], expires_at: float) -> None: ...
    def delete(self, session_id: str) -> None: ...
    def health(self) -> str | None: ...


class DatabaseSessions:
    """Sessions in the storage database: survive a restart; shared by instances on one PostgreSQL."""

    def __init__(self, storage: Storage):
        self._storage = storage

    def load(self, session_id: str) -> dict[str, Any] | None:
        try:
            return self._storage.load_session(session_id)
        except StorageUnavailable as exc:
            raise SessionStoreUnavailable(f"storage: {exc}") from exc

    def save(self, session_id: str, data: dict[str, Any], expires_at: float) -> None:
        try:
            self._storage.save_session(session_id, data, expires_at)
        except StorageUnavailable as exc:
            raise SessionStoreUnavailable(f"storage: {exc}") from exc

    def delete(self, session_id: str) -> None:
        try:
            self._storage.delete_session(session_id)
        except StorageUnavailable as exc:
            raise SessionStoreUnavailable(f"storage: {exc}") from exc

    def health(self) -> str | None:
        return self._storage.health()


class RedisSessions:
    """Sessions in Redis, with their expiry as the key's TTL; logouts are broadcast to every instance."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def load(self, session_id: str) -> dict[str, Any] | None:
        try:
            raw = self.client.get(REDIS_PREFIX + session_id)
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {exc}") from exc
        return json.loads(raw) if raw else None

    def save(self, session_id: str, data: dict[str, Any], expires_at: float) -> None:
        ttl = max(1, int(expires_at - time.time()))
        try:
            self.client.set(REDIS_PREFIX + session_id, json.dumps(data), ex=ttl)
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {exc}") from exc

    def delete(self, session_id: str) -> None:
        try:
            with self.client.pipeline() as pipe:
                pipe.delete(REDIS_PREFIX + session_id)
                pipe.publish(REVOKED_CHANNEL, session_id)
                pipe.execute()
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {exc}") from exc

    def health(self) -> str | None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            return str(exc)
        return None

    def listen_for_revocations(self, forget: Callable[[str], None], stop: threading.Event) -> None:
        """Background loop: drop revoked ids from this worker's cache; reconnects after outages."""
        while not stop.is_set():
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(REVOKED_CHANNEL)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        forget(message["data"].decode() if isinstance(message["data"], bytes) else message["data"])
            except redis.RedisError:
                stop.wait(1.0)


class SessionStore:
    """Creates, reads (through the cache), refreshes and ends sessions; applies expiry and inactivity."""

    def __init__(self, backend: SessionBackend, config: SessionConfig, clock: Callable[[], float] = time.time):
        self.backend = backend
        self.config = config
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        # Write last-activity back at most this often, so a busy verify path does not write per request.
        self._touch_every = max(1.0, min(60.0, (config.inactivity or 600.0) / 10))
        self._stop = threading.Event()
        if isinstance(backend, RedisSessions):
            threading.Thread(
                target=backend.listen_for_revocations, args=(self.forget, self._stop),
                name="session-revocations", daemon=True,
            ).start()

    def create(self, data: dict[str, Any], remember: bool) -> str:
        now = self._clock()
        lifetime = self.config.remember_me if remember else self.config.expiration
        data = dict(data, created=now, last_seen=now, remember=remember, expires=now + lifetime)
        session_id = secrets.token_urlsafe(32)
        self.backend.save(session_id, data, data["expires"])
        self._cache[session_id] = (now, data)
        return session_id

    def get(self, session_id: str | None) -> dict[str, Any] | None:
        """The live session, or None (unknown, expired, idle too long). Raises SessionStoreUnavailable."""
        if not session_id or not SESSION_ID_RE.fullmatch(session_id):
            return None
        now = self._clock()
        cached = self._cache.get(session_id)
        data: dict[str, Any] | None
        if cached is not None and now - cached[0] < self.config.cache_ttl:
            data = cached[1]
        else:
            data = self.backend.load(session_id)
            if data is None:
                self._cache.pop(session_id, None)
                return None
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[session_id] = (now, data)
        if now >= data["expires"]:
            self.forget(session_id)
            return None
        inactivity = self.config.inactivity
        if inactivity and not data["remember"] and now - data["last_seen"] > inactivity:
            self.end(session_id)
            return None
        if now - data["last_seen"] >= self._touch_every:
            self.update(session_id, dict(data, last_seen=now))
        return data

    def update(self, session_id: str, data: dict[str, Any]) -> None:
        self.backend.save(session_id, data, data["expires"])
        self._cache[session_id] = (self._clock(), data)

    def end(self, session_id: str) -> None:
        self.forget(session_id)
        self.backend.delete(session_id)

    def forget(self, session_id: str) -> None:
        self._cache.pop(session_id, None)

    def close(self) -> None:
        self._stop.set()


def open_session_store(config: SessionConfig, storage: Storage) -> SessionStore:
    if config.redis is None:
        return SessionStore(DatabaseSessions(storage), config)
    password = config.redis.password.get_secret_value() if config.redis.password else None
    client = redis.Redis.from_url(
        config.redis.url, password=password, socket_timeout=config.redis.timeout,
        socket_connect_timeout=config.redis.timeout, health_check_interval=30,
        retry=Retry(NoBackoff(), 1),  # one quick retry after a dropped connection, then deny
    )
    return SessionStore(RedisSessions(client), config)
