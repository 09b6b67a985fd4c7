"""Server-side sessions: Redis when configured, else the storage database, with a short in-memory cache.

The cookie holds only a random 256-bit session id. Every worker keeps the
sessions it saw for at most `session.cache_ttl` (default 1 s): a verify with a
valid session usually costs no I/O at all, and a logout elsewhere is seen
within that bound (at once on the same worker; Redis also broadcasts it).
Session data is JSON, never pickle.

Every session can be listed (`SessionStore.sessions`: the account page, /admin,
`authportal sessions list`) and ended by its handle, a short hash of its id: a
listing never shows the id itself, which is the cookie. With Redis a sorted set
per user (and one of everyone's) indexes the ids, so a listing reads the index
and the sessions it names, never a key scan; the database queries its indexed
`sessions.username`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import redis

from .audit import audit
from .config import CookieDomain, RedisConfig, SessionConfig
from .redis_client import ALL_SESSIONS, REVOKED_CHANNEL, SESSION_PREFIX, USER_SESSIONS_PREFIX, explain
from .storage import Storage, StorageUnavailable

log = logging.getLogger("authportal.sessions")

SESSION_ID_RE = re.compile(r"[A-Za-z0-9_\-]{43}")
MAX_CACHED = 100_000
#: Hex digits of a session's handle (48 bits: unique among millions of sessions, and no way back to the id).
HANDLE_LENGTH = 12
#: A user agent is kept up to this many characters (it is only shown).
USER_AGENT_LIMIT = 512
#: Redis: session ids per MGET when a listing reads the sessions an index names.
LIST_BATCH = 1000


def session_handle(session_id: str) -> str:
    """The id a listing shows for a session and takes to end it: a short hash of the secret session id."""
    return hashlib.sha256(b"authportal-session:" + session_id.encode()).hexdigest()[:HANDLE_LENGTH]


@lru_cache(maxsize=1024)
def describe_device(user_agent: str) -> str:
    """A user agent as people name their device: "Firefox on Linux", "Mobile Safari on iOS", "curl"."""
    if not user_agent:
        return "Unknown device"
    from user_agents import parse  # its rules take 0.4 s to load: not for every CLI command (see SessionStore)

    parsed = parse(user_agent)
    browser = parsed.browser.family if parsed.browser.family != "Other" else user_agent.split("/")[0][:40]
    return f"{browser} on {parsed.os.family}" if parsed.os.family != "Other" else browser


@dataclass(frozen=True)
class Origin:
    """Where a session is being created from: the client's address and its browser's user agent."""

    ip: str
    user_agent: str


@dataclass(frozen=True)
class SessionInfo:
    """What a listing shows of one session (never its id: `handle` stands for it)."""

    handle: str
    user: str
    created: float
    last_seen: float
    expires: float
    level: int
    remember: bool
    ip: str | None
    device: str
    instance: str | None

    @classmethod
    def of(cls, session_id: str, data: dict[str, Any]) -> SessionInfo:
        return cls(handle=session_handle(session_id), user=data["user"], created=data["created"],
                   last_seen=data["last_seen"], expires=data["expires"], level=data.get("level", 1),
                   remember=bool(data.get("remember")), ip=data.get("ip"),
                   device=data.get("device") or "Unknown device", instance=data.get("instance"))

    def as_json(self) -> dict[str, Any]:
        """For `sessions list --json`: times in ISO 8601 (UTC)."""
        return {"id": self.handle, "user": self.user, "device": self.device, "ip": self.ip,
                "created": _iso(self.created), "last_used": _iso(self.last_seen), "expires": _iso(self.expires),
                "factors": self.level, "remember_me": self.remember, "instance": self.instance}


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def audit_ended(ended: list[SessionInfo], actor: str, via: str, ip: str | None = None) -> None:
    """One `session_revoke` event per session ended: who ended (`actor`) whose session (`user`), how (`via`:
    account, admin, cli) and from where (`ip`)."""
    for info in ended:
        audit("session_revoke", actor=actor, user=info.user, session=info.handle, device=info.device,
              session_ip=info.ip, ip=ip, via=via)


class SessionStoreUnavailable(Exception):
    """The session backend cannot answer; the verify path answers as for an unknown session."""


class SessionBackend(Protocol):
    def load(self, session_id: str) -> dict[str, Any] | None: ...
    def save(self, session_id: str, data: dict[str, Any], expires_at: float) -> None: ...
    def delete(self, session_id: str) -> None: ...
    def health(self) -> str | None: ...
    def unexpired(self, user: str | None) -> list[tuple[str, dict[str, Any]]]:
        """(id, data) of every unexpired session (of `user`; None: everyone's)."""
        ...


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

    def unexpired(self, user: str | None) -> list[tuple[str, dict[str, Any]]]:
        try:
            return self._storage.unexpired_sessions(user)
        except StorageUnavailable as exc:
            raise SessionStoreUnavailable(f"storage: {exc}") from exc

    def health(self) -> str | None:
        return self._storage.health()


class RedisSessions:
    """Sessions in Redis, with their expiry as the key's TTL; logouts are broadcast to every instance.

    The client comes from `redis_client.connect`: with Sentinel it follows a failover by itself, and the
    revocation listener subscribes again on the new primary.

    Each write also files the id in two sorted sets scored by the session's expiry, its user's and everyone's
    (`USER_SESSIONS_PREFIX`, `ALL_SESSIONS`): a listing reads an index, drops the expired entries from it
    (`ZREMRANGEBYSCORE`) and fetches the sessions it names (`MGET`). An index lives as long as the longest
    session can (`index_ttl`, renewed at each write), so a user who never returns leaves nothing behind.
    """

    def __init__(self, client: redis.Redis, config: RedisConfig, index_ttl: float):
        self.client = client
        self.config = config
        self.index_ttl = max(1, int(index_ttl) + 60)

    def load(self, session_id: str) -> dict[str, Any] | None:
        try:
            raw = self.client.get(SESSION_PREFIX + session_id)
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {explain(exc, self.config)}") from exc
        return json.loads(raw) if raw else None

    def save(self, session_id: str, data: dict[str, Any], expires_at: float) -> None:
        ttl = max(1, int(expires_at - time.time()))
        try:
            with self.client.pipeline() as pipe:
                pipe.set(SESSION_PREFIX + session_id, json.dumps(data), ex=ttl)
                for index in (USER_SESSIONS_PREFIX + data["user"], ALL_SESSIONS):
                    pipe.zadd(index, {session_id: expires_at})
                    pipe.expire(index, max(self.index_ttl, ttl))
                pipe.execute()
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {explain(exc, self.config)}") from exc

    def delete(self, session_id: str) -> None:
        try:
            raw = self.client.get(SESSION_PREFIX + session_id)
            with self.client.pipeline() as pipe:
                pipe.delete(SESSION_PREFIX + session_id)
                if raw:
                    pipe.zrem(USER_SESSIONS_PREFIX + json.loads(raw)["user"], session_id)
                pipe.zrem(ALL_SESSIONS, session_id)
                pipe.publish(REVOKED_CHANNEL, session_id)
                pipe.execute()
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {explain(exc, self.config)}") from exc

    def unexpired(self, user: str | None) -> list[tuple[str, dict[str, Any]]]:
        index = ALL_SESSIONS if user is None else USER_SESSIONS_PREFIX + user
        try:
            with self.client.pipeline() as pipe:
                pipe.zremrangebyscore(index, "-inf", time.time())
                pipe.zrange(index, 0, -1)
                ids = [i.decode() for i in pipe.execute()[1]]
            found, gone = [], []
            for start in range(0, len(ids), LIST_BATCH):
                batch = ids[start:start + LIST_BATCH]
                for session_id, raw in zip(batch, self.client.mget([SESSION_PREFIX + i for i in batch]), strict=True):
                    if raw:
                        found.append((session_id, json.loads(raw)))
                    else:
                        gone.append(session_id)
            if gone:  # ended where the index was not told (a crash between two writes): keep it in step
                self.client.zrem(index, *gone)
        except redis.RedisError as exc:
            raise SessionStoreUnavailable(f"redis: {explain(exc, self.config)}") from exc
        return found

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
    """Creates, reads (through the cache), refreshes, lists and ends sessions; applies expiry and inactivity.

    `instance`: the name this instance gives the sessions it creates (shown in listings); `serving`: follow the
    Redis logout broadcast and load the user-agent parser now, so the first sign-in does not wait for it (the
    server; a CLI command that lists or ends sessions needs neither).
    """

    def __init__(self, backend: SessionBackend, config: SessionConfig, clock: Callable[[], float] = time.time,
                 instance: str | None = None, serving: bool = True):
        self.backend = backend
        self.config = config
        self.instance = instance
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        # Write last-activity back at most this often, so a busy verify path does not write per request.
        self._touch_every = max(1.0, min(60.0, (config.inactivity or 600.0) / 10))
        self._stop = threading.Event()
        if serving:
            # Loaded here, not in a thread: `serve` builds the portal before granian forks its workers, and a
            # fork while another thread holds the import lock leaves that lock held in the worker for ever.
            describe_device("Mozilla/5.0")
        if serving and isinstance(backend, RedisSessions):
            threading.Thread(
                target=backend.listen_for_revocations, args=(self.forget, self._stop),
                name="session-revocations", daemon=True,
            ).start()

    def create(self, data: dict[str, Any], remember: bool, origin: Origin | None = None,
               cookie: CookieDomain | None = None) -> str:
        """A new session for `data` (its times and remember-me set here); `origin`: where it signs in from;
        `cookie`: the cookie domain it belongs to (its lifetimes; with several, valid only there)."""
        now = self._clock()
        expiration, remember_me = ((cookie.expiration, cookie.remember_me) if cookie is not None
                                   else (self.config.expiration, self.config.remember_me))
        lifetime = remember_me if remember else expiration
        data = dict(data, created=now, last_seen=now, remember=remember, expires=now + lifetime,
                    instance=self.instance)
        if cookie is not None:
            data.update(cookie_domain=cookie.domain, inactivity=cookie.inactivity)
        if origin is not None:
            agent = origin.user_agent[:USER_AGENT_LIMIT]
            data.update(ip=origin.ip, user_agent=agent, device=describe_device(agent))
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
        if self._idle(data, now):
            self.end(session_id)
            return None
        if now - data["last_seen"] >= self._touch_every:
            self.update(session_id, dict(data, last_seen=now))
        return data

    def _idle(self, data: dict[str, Any], now: float) -> bool:
        """Whether a session ended by inactivity (remember-me sessions never do)."""
        inactivity = data.get("inactivity", self.config.inactivity)
        return bool(inactivity and not data["remember"] and now - data["last_seen"] > inactivity)

    def update(self, session_id: str, data: dict[str, Any]) -> None:
        self.backend.save(session_id, data, data["expires"])
        self._cache[session_id] = (self._clock(), data)

    def end(self, session_id: str) -> None:
        self.forget(session_id)
        self.backend.delete(session_id)

    def forget(self, session_id: str) -> None:
        self._cache.pop(session_id, None)

    def _live(self, user: str | None) -> list[tuple[str, SessionInfo]]:
        now = self._clock()
        found = [(sid, SessionInfo.of(sid, data)) for sid, data in self.backend.unexpired(user)
                 if data["expires"] > now and not self._idle(data, now)]
        return sorted(found, key=lambda item: item[1].last_seen, reverse=True)

    def sessions(self, user: str | None = None) -> list[SessionInfo]:
        """The live sessions of `user` (None: everyone's), the most recently used first."""
        return [info for _, info in self._live(user)]

    def end_sessions(self, user: str | None = None, handles: Collection[str] | None = None,
                     keep: str | None = None) -> list[SessionInfo]:
        """End the live sessions of `user` (None: anyone's) whose handle is in `handles` (None: all of them),
        except the session `keep` (an id: "everywhere else"); returns what was ended."""
        ended = []
        for session_id, info in self._live(user):
            if (handles is None or info.handle in handles) and session_id != keep:
                self.end(session_id)
                ended.append(info)
        return ended

    def close(self) -> None:
        self._stop.set()


def open_session_store(config: SessionConfig, storage: Storage, client: redis.Redis | None = None,
                       instance: str | None = None, serving: bool = True) -> SessionStore:
    """Sessions in Redis when `client` is given (from `redis_client.connect`), else in the storage database."""
    if client is None:
        return SessionStore(DatabaseSessions(storage), config, instance=instance, serving=serving)
    assert config.redis is not None
    backend = RedisSessions(client, config.redis, max(config.expiration, config.remember_me))
    return SessionStore(backend, config, instance=instance, serving=serving)
