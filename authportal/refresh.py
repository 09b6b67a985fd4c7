"""Keeps a session's groups and name current, so a user removed from a group, disabled or given a new
password loses access.

With the users file the check is a dictionary lookup, done the first time this process sees a session
and again after each reload of the file (`on_change`).
With LDAP it would be a directory search, so the verify path never waits for
it: a session older than `refresh_interval` is refreshed in the background and
keeps its current groups until the answer arrives. A session signed in through an
OpenID Provider is refreshed the same way, from that provider (`SessionRefresher`
routes it): a users file reload or a directory refresh never touches its groups.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .audit import audit
from .authentication import BackendUnavailable, UserProvider
from .identity import session_fields
from .sessions import SessionStore, SessionStoreUnavailable

log = logging.getLogger("authportal.refresh")

MAX_TRACKED = 100_000


class UserGone(Exception):
    """The source of a session's user says it is no longer theirs (removed, disabled, password changed)."""


#: The current user fields of a session (`identity.session_fields`), from wherever they come; raises UserGone,
#: BackendUnavailable.
Lookup = Callable[[dict[str, Any]], dict[str, Any]]


def directory_lookup(provider: UserProvider) -> Lookup:
    """The users file's or the directory's view of a session's user."""

    def lookup(data: dict[str, Any]) -> dict[str, Any]:
        details = provider.get_details(data["user"])
        if details is None:
            raise UserGone("user removed or disabled")
        if data.get("stamp", details.credential_stamp) != details.credential_stamp:
            raise UserGone("password changed")  # whoever signed in with the old one is out, like everywhere else
        return session_fields(details)

    return lookup


class DetailsRefresher:
    def __init__(self, lookup: Lookup, sessions: SessionStore, interval: float | None,
                 clock: Callable[[], float] = time.time):
        """`interval` None = check inline on every call (cheap backends); seconds = background refresh."""
        self.lookup = lookup
        self.sessions = sessions
        self.interval = interval
        self._clock = clock
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="refresh") if interval is not None else None
        #: Inline mode: sessions already checked against the current users file (cleared on each reload).
        self._current: set[str] = set()

    def __call__(self, session_id: str, data: dict[str, Any]) -> dict[str, Any] | None:
        if self.interval is None:
            if session_id in self._current:
                return data
            refreshed = self._apply(session_id, data)
            if refreshed is not None:
                if len(self._current) >= MAX_TRACKED:
                    self._current.clear()
                self._current.add(session_id)
            return refreshed
        if self._clock() - data.get("refreshed", data["created"]) < self.interval:
            return data
        with self._lock:
            if session_id in self._pending:
                return data
            self._pending.add(session_id)
        assert self._pool is not None
        self._pool.submit(self._background, session_id, data)
        return data

    def forget_all(self) -> None:
        """The users file changed: every session is checked again at its next use."""
        self._current = set()

    def _background(self, session_id: str, data: dict[str, Any]) -> None:
        try:
            self._apply(session_id, data)
        except (BackendUnavailable, SessionStoreUnavailable) as exc:
            log.warning("could not refresh %s's groups, keeping the current ones: %s", data["user"], exc)
        except Exception:
            log.exception("refreshing a session failed")
        finally:
            with self._lock:
                self._pending.discard(session_id)

    def _apply(self, session_id: str, data: dict[str, Any]) -> dict[str, Any] | None:
        try:
            fields = self.lookup(data)
        except UserGone as gone:
            self.sessions.end(session_id)
            audit("session_revoked", user=data["user"], reason=str(gone))
            return None
        if self.interval is not None:
            fields["refreshed"] = self._clock()
        if all(data.get(k) == v for k, v in fields.items()):
            return data
        updated = dict(data, **fields)
        self.sessions.update(session_id, updated)
        return updated

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class SessionRefresher:
    """Sends each session to the refresher of where its groups come from: the users file or directory, or the
    OpenID Provider it signed in through (`data["oidc"]["provider"]`, unless its groups come from LDAP)."""

    def __init__(self, directory: DetailsRefresher, providers: Mapping[str, DetailsRefresher]):
        self.directory = directory
        self.providers = providers

    def __call__(self, session_id: str, data: dict[str, Any]) -> dict[str, Any] | None:
        oidc = data.get("oidc")
        if not oidc or oidc.get("groups_from") == "ldap":
            return self.directory(session_id, data)
        refresher = self.providers.get(oidc.get("provider"))
        if refresher is None:  # the provider was removed from the configuration: its sessions end
            self.directory.sessions.end(session_id)
            audit("session_revoked", user=data["user"], reason="identity provider no longer configured")
            return None
        return refresher(session_id, data)

    def close(self) -> None:
        for refresher in (self.directory, *self.providers.values()):
            refresher.close()
