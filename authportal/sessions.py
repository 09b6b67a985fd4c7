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

from .config import RedisConfig, SessionConfig
from .redis_client import REVOKED_CHANNEL, SESSION_PREFIX, explain
from .storage import Storage, StorageUnavailable

log = logging.getLogger("authportal.sessions")

SESSION_ID_RE = re.compile(r"[A-Za-z0-9_\-]{43}")
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
    """Sessions in Redis, with their expiry as the key's TTL; logouts are broadcast to every instance.

    The client comes from `redis_client.connect`: with Sentinel it follows a failover by itself, and the
    revocation listener subscribes again on the new primary.
    """

    def __init__(self, client: redis.Redis, config: RedisConfig):
        self.client = client
        self.config = config

    def load(self, session_id: str) -> dict[str, Any] | None:
        try:
            raw = self.client.get(SESSION_PREFIX + session_id)
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {explain(exc, self.config)}") from exc
        return json.loads(raw) if raw else None

    def save(self, session_id: str, data: dict[str, Any], expires_at: float) -> None:
        ttl = max(1, int(expires_at - time.time()))
        try:
            self.client.set(SESSION_PREFIX + session_id, json.dumps(data), ex=ttl)
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {explain(exc, self.config)}") from exc

    def delete(self, session_id: str) -> None:
        try:
            with self.client.pipeline() as pipe:
                pipe.delete(SESSION_PREFIX + session_id)
                pipe.publish(REVOKED_CHANNEL, session_id)
                pipe.execute()
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {explain(exc, self.config)}") from exc

    def health(self) -> str | None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            return explain(exc, self.config)
        return None

    def listen_for_revocations(self, forget: Callable[[str], None], stop: threading.Event) -> None:
        """Background loop: drop revoked ids from this worker's cache.

        After an outage or a failover it subscribes again (on the new primary: the client asks the sentinels),
        and logs where it listens whenever that changes. A broadcast missed meanwhile costs at most
        `session.cache_ttl`: a cached session is read again from Redis after that.
        """
        listening_on: str | None = None
        while not stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(REVOKED_CHANNEL)
                while not stop.is_set():
                    where = _address(pubsub.connection)
                    if where is not None and where != listening_on:
                        log.info("listening for session revocations on %s", where)
                        listening_on = where
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        forget(message["data"].decode() if isinstance(message["data"], bytes) else message["data"])
            except redis.RedisError as exc:
                if listening_on is not None:
                    log.warning("session revocations: %s; subscribing again", explain(exc, self.config))
                    listening_on = None
                stop.wait(1.0)
            finally:
                pubsub.close()


def _address(connection: Any) -> str | None:
    """host:port (or the socket path) a redis-py connection is connected to; None when it is not."""
    if connection is None:
        return None
    host = getattr(connection, "host", None)
    return f"{host}:{connection.port}" if host else str(getattr(connection, "path", "a socket"))


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


def open_session_store(config: SessionConfig, storage: Storage, client: redis.Redis | None = None) -> SessionStore:
    """Sessions in Redis when `client` is given (from `redis_client.connect`), else in the storage database."""
    if client is None:
        return SessionStore(DatabaseSessions(storage), config)
    assert config.redis is not None
    return SessionStore(RedisSessions(client, config.redis), config)
