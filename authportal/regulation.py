"""Regulation: too many failed logins ban the user (and the client IP) for a while.

Counters live in the `limits` library's storage: in memory, or in Redis when
sessions use Redis (on their client, `redis_client.limits_storage`), so every
instance sees the same bans, also after a Sentinel failover. A moving window of
`max_retries` failures per `find_time` trips a ban; the ban itself is a
one-slot window of `ban_time` that is consumed when imposed.
"""
from __future__ import annotations

import logging

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from .audit import audit
from .config import RegulationConfig

log = logging.getLogger("authportal.regulation")


class RegulationUnavailable(Exception):
    """The ban store cannot answer: logins are refused (fail closed)."""


def user_key(username: str) -> str:
    """The account a name means to a directory: LDAP and AD match names ignoring case and surrounding or
    repeated spaces (` Alice `, `ALICE` and `alice` are one account), so they must share one failure count."""
    return " ".join(username.split()).casefold()


class Regulator:
    def __init__(self, config: RegulationConfig, storage: Storage | None = None):
        """`storage`: a `limits` storage (the sessions' Redis); None keeps the counts in this process's memory."""
        self.config = config
        self._limiter = MovingWindowRateLimiter(storage if storage is not None else MemoryStorage())
        window = max(1, int(config.find_time))
        self._user_failures = RateLimitItemPerSecond(config.max_retries, window, namespace="ap-fail-user")
        self._ip_failures = (RateLimitItemPerSecond(config.ip_max_retries, window, namespace="ap-fail-ip")
                             if config.ip_max_retries else None)
        self._ban = RateLimitItemPerSecond(1, max(1, int(config.ban_time)), namespace="ap-ban")

    def is_banned(self, username: str | None, client_ip: str) -> bool:
        """Whether the user (None: no user, e.g. an API token) or the client IP is banned."""
        try:
            if username is not None and not self._limiter.test(self._ban, "user", user_key(username)):
                return True
            return self._ip_failures is not None and not self._limiter.test(self._ban, "ip", client_ip)
        except Exception as exc:  # the storage's own errors (redis) vary by backend
            raise RegulationUnavailable(str(exc)) from exc

    def record_failure(self, username: str | None, client_ip: str) -> list[str]:
        """Count one failure (against the IP only when `username` is None); returns the bans imposed."""
        imposed = []
        try:
            checks = [] if username is None else [("user", user_key(username), self._user_failures)]
            if self._ip_failures is not None:
                checks.append(("ip", client_ip, self._ip_failures))
            for kind, key, limit in checks:
                self._limiter.hit(limit, key)
                if not self._limiter.test(limit, key):
                    self._limiter.hit(self._ban, kind, key)
                    self._limiter.clear(limit, key)
                    imposed.append(kind)
                    audit("ban", kind=kind, user=username if kind == "user" else None,
                          ip=client_ip, ban_time=self.config.ban_time)
        except Exception as exc:
            raise RegulationUnavailable(str(exc)) from exc
        return imposed

    def record_success(self, username: str) -> None:
        try:
            self._limiter.clear(self._user_failures, user_key(username))
        except Exception as exc:
            raise RegulationUnavailable(str(exc)) from exc

    def allow_reset_request(self, username: str, client_ip: str) -> bool:
        """Whether another reset link may be sent (at most RESET_PER_USER per user and RESET_PER_IP per address in
        RESET_WINDOW seconds): a flood of requests can neither fill a mailbox nor probe many accounts."""
        try:
            return (self._limiter.hit(_RESET_PER_IP, "ip", client_ip)
                    and self._limiter.hit(_RESET_PER_USER, "user", user_key(username)))
        except Exception as exc:
            raise RegulationUnavailable(str(exc)) from exc


#: Reset links: how many may be asked for, per user and per client address, within RESET_WINDOW seconds.
RESET_WINDOW = 900
_RESET_PER_USER = RateLimitItemPerSecond(3, RESET_WINDOW, namespace="ap-reset-user")
_RESET_PER_IP = RateLimitItemPerSecond(10, RESET_WINDOW, namespace="ap-reset-ip")
