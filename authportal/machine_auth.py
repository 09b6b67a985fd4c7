"""Machine clients on the verify path: HTTP Basic and Bearer API tokens, with a safe result cache.

A scraper sends its credentials on every request; hashing argon2 (or binding
to LDAP) each time would cost ~50 ms. A successful check is remembered for
`credentials_cache_ttl` under a keyed BLAKE2b MAC (per-process random key) of
the Authorization value — never the password itself. Failures are never cached as success.
Concurrent identical checks wait for the first one (single flight).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .credentials import CredentialChecks
from .identity import ONE_FACTOR, Identity, RequestLimits
from .identity_headers import DEFAULT_TEMPLATES, HeaderTemplates
from .tokens import PREFIX


class CredentialCache:
    """Bounded LRU of identities keyed by a MAC of the credential; entries expire after `ttl` seconds."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic,
                 on_lookup: Callable[[bool], None] = lambda hit: None):
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._on_lookup = on_lookup
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[bytes, threading.Lock] = {}

    def key(self, credential: str) -> bytes:
        """A keyed BLAKE2b MAC of the credential (the whole Authorization value): what the cache stores."""
        return hashlib.blake2b(credential.encode(), key=self._key, digest_size=32).digest()

    def get(self, key: bytes) -> Identity | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() >= entry[0]:
            return None
        return entry[1]

    def put(self, key: bytes, identity: Identity) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + self.ttl, identity)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def remembered(self, key: bytes, check: Callable[[], Identity | None]) -> Identity | None:
        """The cached identity, or the result of `check()` run once even when many ask at the same time."""
        found = self.get(key)
        if found is not None:
            self._on_lookup(True)
            return found
        with self._lock:
            gate = self._inflight.setdefault(key, threading.Lock())
        with gate:
            found = self.get(key)
            if found is not None:
                self._on_lookup(True)
                return found
            self._on_lookup(False)
            try:
                identity = check()
            finally:
                with self._lock:
                    self._inflight.pop(key, None)
            if identity is not None:
                self.put(key, identity)
            return identity


def parse_basic(header: str) -> tuple[str, str] | None:
    """(user, password) from `Basic base64(user:password)`, or None when malformed."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def parse_bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value and len(value) <= 256 else None


class MachineAuthenticator:
    """Turns an Authorization header into an Identity (or None), cheaply for repeat callers.

    A cache miss goes through the one credential-check path (`CredentialChecks`): a banned user or client
    IP is refused without a check, each failure counts towards a ban, is counted and audited, and a Basic
    refusal takes as long as a success. A cached success is not re-checked for bans until it lapses
    (`credentials_cache_ttl`). Raises `Busy` when every check slot is taken.
    """

    def __init__(self, checks: CredentialChecks, tokens: Any, cache: CredentialCache, token_cache: CredentialCache,
                 templates: HeaderTemplates = DEFAULT_TEMPLATES):
        self.templates = templates
        self.checks = checks
        self.tokens = tokens
        self.cache = cache
        self.token_cache = token_cache

    def ours(self, header: str) -> bool:
        """Whether an Authorization value is a credential for the portal: Basic, or one of its `ap_` tokens.

        Anything else (a Kubernetes token the dashboard sends, an app's own JWT, Negotiate) belongs to the
        application behind the proxy: judging it would refuse a signed-in user and count failures against
        their address until it is banned.
        """
        if header[:6].lower() == "basic ":
            return True
        return header[:7].lower() == "bearer " and self.tokens is not None and header[7:].lstrip().startswith(PREFIX)

    def authenticate(self, header: str, client_ip: str) -> Identity | None:
        """`header` is one that `ours` accepted: Basic, or a Bearer `ap_` token.

        A repeat caller costs one keyed hash of its header and a dict lookup; parsing happens on a miss.
        """
        if header[:6].lower() == "basic ":
            return self.cache.remembered(self.cache.key(header), lambda: self._basic(header, client_ip))
        # Tokens are re-checked against storage once the short token cache (session.cache_ttl) lapses,
        # so a revocation from the CLI or another instance holds within that bound.
        return self.token_cache.remembered(self.token_cache.key(header), lambda: self._bearer(header, client_ip))

    def _basic(self, header: str, client_ip: str) -> Identity | None:
        credentials = parse_basic(header)
        if credentials is None:
            return None
        user, password = credentials
        details = self.checks.password(self.checks.basic, user, password, client_ip).found
        return Identity.from_details(details, ONE_FACTOR, self.templates) if details else None

    def _bearer(self, header: str, client_ip: str) -> Identity | None:
        token = parse_bearer(header)
        if token is None:
            return None
        return self.checks.token(client_ip, lambda: self._check_token(token)).found

    def _check_token(self, token: str) -> Identity | None:
        info = self.tokens.authenticate(token)
        if info is None:
            return None
        details = self.checks.provider.get_details(info.username)
        if details is None:
            return None
        groups = details.groups
        if info.scope:
            allowed = {s.partition(":")[2] for s in info.scope if s.startswith("group:")}
            groups = tuple(g for g in groups if g in allowed)
        identity = Identity.build(details.username, groups, details.display_name, details.email, ONE_FACTOR,
                                  dict(details.attributes), self.templates)
        if info.methods or info.resources:
            limits = RequestLimits(frozenset(info.methods), tuple(re.compile(r) for r in info.resources))
            identity = dataclasses.replace(identity, limits=limits)
        return identity
