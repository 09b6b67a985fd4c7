"""OpenID Connect sign-ins in progress, kept server-side between the button and the provider's callback.

As security_keys.py keeps a WebAuthn ceremony: a row in the storage database (so any instance can finish what
another started), taken by a DELETE (a replayed `state` finds nothing), bound to the browser that started it
(the SHA-256 of a random cookie only that browser holds: a callback URL pasted into another browser is
refused) and expiring after `FLOW_LIFETIME`. Only digests of the state and of the browser cookie are stored.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from flask_babel import gettext as _

from ..storage import Storage, oidc_flows
from .oidc import SignInRefused, pkce_pair

#: How long a person has to sign in at the provider.
FLOW_LIFETIME = 600.0


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class StartedSignIn:
    """What the authorization request carries."""

    state: str
    nonce: str
    challenge: str


@dataclass(frozen=True)
class PendingSignIn:
    """What the callback needs back: the nonce and PKCE verifier, and where the person was going."""

    provider: str
    nonce: str
    verifier: str
    rd: str | None
    rm: str | None


class SignInFlows:
    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time):
        self.storage = storage
        self.clock = clock

    def start(self, provider: str, browser: str, rd: str | None, rm: str | None) -> StartedSignIn:
        """A new sign-in at `provider` for the browser holding the cookie value `browser`."""
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        now = self.clock()
        with self.storage.begin() as conn:
            conn.execute(oidc_flows.delete().where(oidc_flows.c.expires_at < now))
            conn.execute(oidc_flows.insert().values(
                id=_digest(state), provider=provider, browser=_digest(browser), nonce=nonce, verifier=verifier,
                rd=rd, rm=rm, expires_at=now + FLOW_LIFETIME))
        return StartedSignIn(state, nonce, challenge)

    def take(self, state: str, provider: str, browser: str | None) -> PendingSignIn:
        """The sign-in `state` names, once: deleted whoever asks; refused unless this browser started it at this
        provider and it has not expired. Raises SignInRefused."""
        expired = SignInRefused("bad_state", _("This sign-in expired or was already used. Start again."))
        if not state or len(state) > 256:
            raise expired
        with self.storage.begin() as conn:
            row = conn.execute(sa.select(oidc_flows).where(oidc_flows.c.id == _digest(state))).first()
            if row is None or conn.execute(oidc_flows.delete().where(oidc_flows.c.id == row.id)).rowcount != 1:
                raise expired
        if (row.provider != provider or browser is None or not secrets.compare_digest(row.browser, _digest(browser))
                or row.expires_at < self.clock()):
            raise expired
        return PendingSignIn(row.provider, row.nonce, row.verifier, row.rd, row.rm)
