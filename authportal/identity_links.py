"""E-mailed links that prove a person reads the account's mailbox: a password reset, removing a lost second factor.

A link's token is random (32 bytes) and only its SHA-256 is stored. It works once, until it expires, for the
user it was made for, and only while their password is the one it was made under (`stamp`): a link made before
a password change is dead. Opening the link only shows a form (`peek`): mail scanners that fetch every link
must not use it up; the form's POST takes it (`take`, one UPDATE: two racing posts cannot both win).
"""
from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from .storage import Storage, identity_links

RESET_PASSWORD = "reset_password"
RESET_SECOND_FACTOR = "reset_second_factor"


@dataclass(frozen=True)
class Link:
    username: str
    stamp: str
    expires_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class IdentityLinks:
    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time):
        self.storage = storage
        self.clock = clock

    def issue(self, purpose: str, username: str, stamp: str, lifetime: float) -> tuple[str, Link]:
        """A new link's token (for the e-mail only) and what it stands for."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        link = Link(username, stamp, now + lifetime)
        with self.storage.begin() as conn:
            conn.execute(identity_links.delete().where(identity_links.c.expires_at < now - 86400))
            conn.execute(identity_links.insert().values(
                id=_digest(token), purpose=purpose, username=username, stamp=stamp, created_at=now,
                expires_at=link.expires_at))
        return token, link

    def peek(self, purpose: str, token: str) -> Link | None:
        """The link, if it can still be used (not used, not expired); it stays usable."""
        with self.storage.connect() as conn:
            row = conn.execute(sa.select(identity_links).where(*self._usable(purpose, token))).first()
        return Link(row.username, row.stamp, row.expires_at) if row else None

    def take(self, purpose: str, token: str) -> Link | None:
        """Use the link up; None when it was already used, expired or never made."""
        with self.storage.begin() as conn:
            row = conn.execute(sa.select(identity_links).where(*self._usable(purpose, token))).first()
            if row is None or conn.execute(identity_links.update().where(
                    identity_links.c.id == row.id, identity_links.c.used_at.is_(None))
                    .values(used_at=self.clock())).rowcount != 1:
                return None
        return Link(row.username, row.stamp, row.expires_at)

    def _usable(self, purpose: str, token: str) -> tuple[sa.ColumnElement[bool], ...]:
        return (identity_links.c.id == _digest(token), identity_links.c.purpose == purpose,
                identity_links.c.used_at.is_(None), identity_links.c.expires_at > self.clock())
