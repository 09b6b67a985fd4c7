"""Regulation: too many failed logins ban the user, the client address, or the user from that address, for a while.

`regulation.modes` says what failures count against, each with its own count and ban:

- `user`: the account, from anywhere (stops a slow guesser spread over many addresses, but anyone who knows a
  name can lock its owner out by guessing wrong on purpose);
- `ip`: the client address, whoever it claims to be (`ip_max_retries`; `regulation.exempt_networks` are never
  counted or banned: a scrapers' network, a NAT many people share);
- `user_ip`: the account from that address only: an attacker's guesses lock the attacker out, and the owner
  signs in from their own address.

Bans and counts live where every instance and the CLI see them: in Redis when sessions use Redis
(`RedisBans`, on their client), else in the storage database (`DatabaseBans`). One code path, `Regulator`,
decides over either store. A count is a moving window of `find_time`; reaching the limit imposes a ban of
`ban_time` and starts the count again.
"""
from __future__ import annotations

import ipaddress
import json
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar, cast

import redis
import sqlalchemy as sa

from .audit import audit
from .config import Config, RegulationConfig
from .redis_client import BAN_PREFIX, BANS, COUNTER_PREFIX
from .storage import Storage, bans, regulation_events

T = TypeVar("T")
#: What a ban holds, in the order they are checked.
KINDS = ("user", "ip", "user_ip")
#: A name is counted by at most this many characters of its key (a 10 kB "username" is one more name).
NAME_LIMIT = 256


class RegulationUnavailable(Exception):
    """The ban store cannot answer: logins are refused (fail closed)."""


def user_key(username: str) -> str:
    """The account a name means to a directory: LDAP and AD match names ignoring case and surrounding or
    repeated spaces (` Alice `, `ALICE` and `alice` are one account), so they must share one failure count."""
    return " ".join(username.split()).casefold()[:NAME_LIMIT]


@dataclass(frozen=True)
class Ban:
    """One ban in force: `kind` is the mode that imposed it; `user` (its key) and/or `ip` say whom it holds."""

    kind: str
    user: str | None
    ip: str | None
    banned_at: float
    until: float

    @property
    def id(self) -> str:
        return ban_id(self.kind, self.user, self.ip)


def ban_id(kind: str, user: str | None, ip: str | None) -> str:
    """`user:alice`, `ip:198.51.100.7`, `user_ip:alice@198.51.100.7`."""
    held = {"user": user, "ip": ip}.get(kind, f"{user}@{ip}")
    return f"{kind}:{held}"


class BanStore(Protocol):
    """Where counts and bans live; every method may raise the store's own errors (the Regulator fails closed)."""

    def count(self, counter: str, window: float, now: float) -> int:
        """Add one event to `counter`; how many it holds within the last `window` seconds."""
        ...

    def clear(self, counters: Sequence[str]) -> None: ...
    def impose(self, ban: Ban, now: float) -> None: ...
    def any_banned(self, ids: Sequence[str], now: float) -> bool: ...
    def in_force(self, now: float) -> list[Ban]: ...
    def lift(self, ids: Sequence[str]) -> None: ...


class RedisBans:
    """Counts as sorted sets of event times (`COUNTER_PREFIX`); a ban as a key that expires with it
    (`BAN_PREFIX`), indexed for listing by a sorted set of ban ids scored by their end (`BANS`)."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def count(self, counter: str, window: float, now: float) -> int:
        key = COUNTER_PREFIX + counter
        with self.client.pipeline() as pipe:
            pipe.zremrangebyscore(key, "-inf", now - window)
            pipe.zadd(key, {f"{now!r}:{secrets.token_hex(4)}": now})
            pipe.zcard(key)
            pipe.expire(key, max(1, math.ceil(window)))
            return int(pipe.execute()[2])

    def clear(self, counters: Sequence[str]) -> None:
        if counters:
            self.client.delete(*(COUNTER_PREFIX + c for c in counters))

    def impose(self, ban: Ban, now: float) -> None:
        with self.client.pipeline() as pipe:
            pipe.set(BAN_PREFIX + ban.id, json.dumps(asdict(ban)), ex=max(1, math.ceil(ban.until - now)))
            pipe.zadd(BANS, {ban.id: ban.until})
            pipe.zremrangebyscore(BANS, "-inf", now)
            pipe.execute()

    def any_banned(self, ids: Sequence[str], now: float) -> bool:
        return bool(ids) and int(self.client.exists(*(BAN_PREFIX + i for i in ids))) > 0

    def in_force(self, now: float) -> list[Ban]:
        ids = [i.decode() for i in cast("list[bytes]", self.client.zrangebyscore(BANS, now, "+inf"))]
        raws = self.client.mget([BAN_PREFIX + i for i in ids]) if ids else []
        return [Ban(**json.loads(raw)) for raw in raws if raw]

    def lift(self, ids: Sequence[str]) -> None:
        if ids:
            with self.client.pipeline() as pipe:
                pipe.delete(*(BAN_PREFIX + i for i in ids))
                pipe.zrem(BANS, *ids)
                pipe.execute()


class DatabaseBans:
    """Counts as rows of events (`regulation_events`), bans as rows (`bans`), in the storage database: shared by
    the instances on one PostgreSQL; expired rows are deleted as new ones come."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def count(self, counter: str, window: float, now: float) -> int:
        events = regulation_events.c
        with self.storage.begin() as conn:
            conn.execute(regulation_events.delete().where(events.expires_at <= now))
            conn.execute(regulation_events.insert().values(counter=counter, at=now, expires_at=now + window))
            return int(conn.execute(sa.select(sa.func.count()).where(
                events.counter == counter, events.at > now - window)).scalar_one())

    def clear(self, counters: Sequence[str]) -> None:
        if counters:
            with self.storage.begin() as conn:
                conn.execute(regulation_events.delete().where(regulation_events.c.counter.in_(counters)))

    def impose(self, ban: Ban, now: float) -> None:
        with self.storage.begin() as conn:
            conn.execute(bans.delete().where(sa.or_(bans.c.id == ban.id, bans.c.expires_at <= now)))
            conn.execute(bans.insert().values(id=ban.id, kind=ban.kind, username=ban.user, ip=ban.ip,
                                              banned_at=ban.banned_at, expires_at=ban.until))

    def any_banned(self, ids: Sequence[str], now: float) -> bool:
        if not ids:
            return False
        with self.storage.connect() as conn:
            return conn.execute(sa.select(bans.c.id).where(bans.c.id.in_(ids), bans.c.expires_at > now)
                                .limit(1)).first() is not None

    def in_force(self, now: float) -> list[Ban]:
        with self.storage.connect() as conn:
            rows = conn.execute(sa.select(bans).where(bans.c.expires_at > now).order_by(bans.c.banned_at))
            return [Ban(row.kind, row.username, row.ip, row.banned_at, row.expires_at) for row in rows]

    def lift(self, ids: Sequence[str]) -> None:
        if ids:
            with self.storage.begin() as conn:
                conn.execute(bans.delete().where(bans.c.id.in_(ids)))


class Regulator:
    def __init__(self, config: RegulationConfig, store: BanStore, clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self._clock = clock
        self._exempt = tuple(config.exempt_networks)

    def exempt(self, client_ip: str) -> bool:
        """Whether an address is in `regulation.exempt_networks` (never banned by address)."""
        if not self._exempt:
            return False
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address in network for network in self._exempt)

    def _holds(self, username: str | None, client_ip: str) -> list[tuple[str, str | None, str | None, int]]:
        """(kind, user key, ip, limit) of every count and ban that applies to this attempt."""
        user = user_key(username) if username is not None else None
        config = self.config
        holds: list[tuple[str, str | None, str | None, int]] = []
        if "user" in config.modes and user is not None:
            holds.append(("user", user, None, config.max_retries))
        if "ip" in config.modes and config.ip_max_retries and not self.exempt(client_ip):
            holds.append(("ip", None, client_ip, config.ip_max_retries))
        if "user_ip" in config.modes and user is not None:
            holds.append(("user_ip", user, client_ip, config.max_retries))
        return holds

    def _guarded(self, action: Callable[[], T]) -> T:
        try:
            return action()
        except Exception as exc:  # the store's own errors (redis, the database) vary by backend
            raise RegulationUnavailable(str(exc)) from exc

    def is_banned(self, username: str | None, client_ip: str) -> bool:
        """Whether this attempt is banned: the user (None: no user, e.g. an API token), the client IP, or the
        user from that IP, as `regulation.modes` says."""
        ids = [ban_id(kind, user, ip) for kind, user, ip, _ in self._holds(username, client_ip)]
        return self._guarded(lambda: self.store.any_banned(ids, self._clock()))

    def record_failure(self, username: str | None, client_ip: str) -> list[str]:
        """Count one failure (against the IP only when `username` is None); returns the kinds of ban imposed."""
        return self._guarded(lambda: self._failed(username, client_ip))

    def _failed(self, username: str | None, client_ip: str) -> list[str]:
        imposed = []
        now = self._clock()
        for kind, user, ip, limit in self._holds(username, client_ip):
            counter = "fail:" + ban_id(kind, user, ip)
            if self.store.count(counter, self.config.find_time, now) < limit:
                continue
            self.store.impose(Ban(kind, user, ip, now, now + self.config.ban_time), now)
            self.store.clear([counter])
            imposed.append(kind)
            audit("ban", kind=kind, user=username if user is not None else None, ip=client_ip,
                  ban_time=self.config.ban_time)
        return imposed

    def record_success(self, username: str, client_ip: str) -> None:
        """The user proved their password: their counts (from anywhere, and from this address) start again."""
        user = user_key(username)
        counters = ["fail:" + ban_id(kind, user, client_ip) for kind in ("user", "user_ip")]
        self._guarded(lambda: self.store.clear(counters))

    def bans(self) -> list[Ban]:
        """Every ban in force, oldest first."""
        return sorted(self._guarded(lambda: self.store.in_force(self._clock())), key=lambda ban: ban.banned_at)

    def lift(self, target: str) -> list[Ban]:
        """Lift every ban on `target`, a client address or a user (of any kind: user, ip, user_ip), and start
        their counts again; returns the bans lifted."""
        try:
            ip: str | None = str(ipaddress.ip_address(target))
        except ValueError:
            ip = None
        user = user_key(target)
        lifted = [ban for ban in self.bans() if (ban.ip == ip if ip is not None else ban.user == user)]
        self._lift(lifted, [] if ip is not None else ["fail:" + ban_id("user", user, None)])
        return lifted

    def lift_ban(self, ban: str) -> Ban | None:
        """Lift one ban, by its id (`Ban.id`); None when it is not in force."""
        found = [b for b in self.bans() if b.id == ban]
        self._lift(found)
        return found[0] if found else None

    def _lift(self, lifted: list[Ban], counters: Sequence[str] = ()) -> None:
        def lift() -> None:
            self.store.lift([ban.id for ban in lifted])
            self.store.clear([*counters, *("fail:" + ban.id for ban in lifted)])

        self._guarded(lift)

    def allow_reset_request(self, username: str, client_ip: str) -> bool:
        """Whether another reset link may be sent (at most RESET_PER_USER per user and RESET_PER_IP per address in
        RESET_WINDOW seconds): a flood of requests can neither fill a mailbox nor probe many accounts."""
        now = self._clock()
        return self._guarded(lambda: (
            self.store.count("reset:ip:" + client_ip, RESET_WINDOW, now) <= RESET_PER_IP
            and self.store.count("reset:user:" + user_key(username), RESET_WINDOW, now) <= RESET_PER_USER))


def open_regulator(config: Config, storage: Storage, client: redis.Redis | None = None) -> Regulator:
    """Bans live where sessions live: in Redis when `client` is given (shared by every instance), else in the
    storage database (shared by the instances on one PostgreSQL, and seen by the CLI)."""
    store: BanStore = RedisBans(client) if client is not None else DatabaseBans(storage)
    return Regulator(config.regulation, store)


#: Reset links: how many may be asked for, per user and per client address, within RESET_WINDOW seconds.
RESET_WINDOW = 900
RESET_PER_USER = 3
RESET_PER_IP = 10
