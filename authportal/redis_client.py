"""The one place that knows how to reach Redis: a redis-py client built from `session.redis`.

Sessions (`sessions.py`) and bans (`regulation.py`) share the client this
module builds, and with it one connection pool:

- `url`: one Redis (`redis://`, `rediss://` with `tls`, `unix://`);
- `sentinel`: the primary the sentinels name. Every new connection asks the
  sentinels where the primary is, so after a failover the next command reaches
  the new primary without a restart; while none is known, commands fail
  (`MasterNotFoundError`) and the callers deny.

Every key and channel the portal uses starts with `KEY_PREFIX`, so an ACL user
can be confined to it (docs/high-availability.md gives the ACL line).
"""
from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .config import RedisConfig

#: Every key and pub/sub channel the portal touches: sessions, the logout broadcast, bans.
KEY_PREFIX = "authportal:"
SESSION_PREFIX = KEY_PREFIX + "session:"
REVOKED_CHANNEL = KEY_PREFIX + "session:revoked"
#: The session listings' indexes (sorted sets of session ids, scored by expiry): everyone's, and one per user.
ALL_SESSIONS = KEY_PREFIX + "sessions:all"
USER_SESSIONS_PREFIX = KEY_PREFIX + "sessions:user:"
#: Bans: one key per ban (its TTL is the ban's end) and their index (ban ids scored by their end), for listing.
BAN_PREFIX = KEY_PREFIX + "ban:"
BANS = KEY_PREFIX + "bans"
#: Failure counts (and reset-link requests): a sorted set of event times per counter, a moving window.
COUNTER_PREFIX = KEY_PREFIX + "count:"


def _tls_options(config: RedisConfig) -> dict[str, Any]:
    if config.tls is None:
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if config.tls.ca_file is not None:
        options["ssl_ca_certs"] = str(config.tls.ca_file)
    if config.tls.cert_file is not None:
        options["ssl_certfile"] = str(config.tls.cert_file)
        options["ssl_keyfile"] = str(config.tls.key_file or config.tls.cert_file)
    return options


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)


def _server(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, without its credentials."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"


def connect(config: RedisConfig) -> redis.Redis:
    """The client for `session.redis`; connects lazily (the first command), never raises here."""
    options: dict[str, Any] = {
        "socket_timeout": config.timeout, "socket_connect_timeout": config.timeout, "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 1),  # one quick retry after a dropped connection, then deny
    }
    if config.username is not None:
        options["username"] = config.username
    if config.password is not None:
        options["password"] = config.password.get_secret_value()
    if config.sentinel is None:
        assert config.url is not None
        return redis.Redis.from_url(config.url, **options, **_tls_options(config))
    sentinel = config.sentinel
    tls = dict(_tls_options(config), ssl=True) if config.tls is not None else {}
    sentinel_options: dict[str, Any] = {
        "socket_timeout": config.timeout, "socket_connect_timeout": config.timeout,
        "retry": Retry(NoBackoff(), 0),  # a sentinel that does not answer: ask the next one at once
        **tls,
    }
    if sentinel.username is not None:
        sentinel_options["username"] = sentinel.username
    if sentinel.password is not None:
        sentinel_options["password"] = sentinel.password.get_secret_value()
    manager = Sentinel([_host_port(node) for node in sentinel.nodes], sentinel_kwargs=sentinel_options,
                       **options, **tls)
    client: redis.Redis = manager.master_for(sentinel.master_name)
    return client


def explain(exc: Exception, config: RedisConfig) -> str:
    """A Redis error in words an operator can act on, naming the keys to check."""
    text = str(exc) or type(exc).__name__
    where = (f"the primary {config.sentinel.master_name!r} of the sentinels {', '.join(config.sentinel.nodes)}"
             if config.sentinel is not None else f"Redis at {_server(config.url or '')}")
    context = exc.__context__
    if isinstance(context, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        reason = context.verify_message if isinstance(context, ssl.SSLCertVerificationError) else text
        return (f"TLS: the certificate of {where} is not trusted ({reason}); session.redis.tls.ca_file must "
                f"name the CA that issued it")
    if isinstance(context, ssl.SSLError) or "SSL" in text:
        return f"TLS handshake with {where} failed: {text} (session.redis.tls, session.redis.url)"
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return f"{where} refused the credentials: {text} (session.redis.username, session.redis.password)"
    if isinstance(exc, redis.exceptions.NoPermissionError) or "NOPERM" in text:
        return (f"{where} refused a command to the ACL user: {text} (session.redis.username; the ACL must allow "
                f"the keys and channels {KEY_PREFIX}*, see docs/high-availability.md)")
    return f"{where}: {text}"
