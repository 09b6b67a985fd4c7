"""Security keys and passkeys (WebAuthn): registering a key, proving one, and the registry of each user's keys.

py_webauthn does the protocol (CBOR, COSE, attestation, signatures). This module keeps what the protocol
needs between the browser's two requests and what it must remember:

- a ceremony's challenge, in the storage database, single-use (taken by a DELETE: a replayed response finds
  nothing), bound to the session that started it and expiring after `webauthn.timeout`;
- each key's public key and signature counter. A counter that does not move forward although the key
  counts is a cloned key: it is refused and blocked until removed and registered again;
- one random user handle per user (never the username), which discoverable credentials (passkeys) carry.

Every check of a key runs through `CredentialChecks.key` (bans, metrics, audit); this module only says
whether the key is good, raising `KeyRefused` with the reason when it is not.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask_babel import gettext as _
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from .config import Config
from .credentials import Refused
from .storage import Storage, StorageConflict, webauthn_ceremonies, webauthn_credentials, webauthn_users

REGISTER = "register"
SECOND_FACTOR = "second_factor"
PASSKEY = "passkey"
MAX_NAME_LENGTH = 64
#: A credential id as browsers send it: base64url, at most 1023 bytes (WebAuthn's limit).
BASE64URL = re.compile(r"[A-Za-z0-9_-]{1,1364}")


class KeyRefused(Refused):
    """A key, or the response made with it, is not accepted; `reason` is a short label, `message` for people
    (in the language of the request that checks the key: gettext outside a request says it in English)."""


@dataclass(frozen=True)
class SecurityKey:
    """What can be shown about a registered key (never its public key)."""

    id: int
    username: str
    name: str
    credential_id: str
    discoverable: bool
    created_at: float
    last_used_at: float | None
    cloned_at: float | None


@dataclass(frozen=True)
class KeyUse:
    """A verified response: the key, and whether the authenticator verified the person (PIN, biometrics)."""

    key: SecurityKey
    user_verified: bool


@dataclass(frozen=True)
class Ceremony:
    """A started ceremony: its id (for the browser to hold in a cookie) and the options for the browser."""

    id: str
    options: str  # JSON for navigator.credentials.create/get


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _key(row: Any) -> SecurityKey:
    return SecurityKey(row.id, row.username, row.name, row.credential_id, row.discoverable, row.created_at,
                       row.last_used_at, row.cloned_at)


def _credential_id(credential: dict[str, Any]) -> str:
    """The credential id of a browser's response, normalised (base64url without padding)."""
    raw = credential.get("rawId") if isinstance(credential, dict) else None
    if not isinstance(raw, str) or not BASE64URL.fullmatch(raw):
        raise KeyRefused("malformed", _("The browser's answer could not be read. Try again."))
    try:
        return bytes_to_base64url(base64url_to_bytes(raw))
    except ValueError:
        raise KeyRefused("malformed", _("The browser's answer could not be read. Try again.")) from None


class SecurityKeys:
    def __init__(self, storage: Storage, config: Config, clock: Callable[[], float] = time.time):
        self.storage = storage
        self.settings = config.webauthn
        self.rp_id = config.webauthn_rp_id
        portal = urlsplit(config.portal_url)
        self.origin = f"{portal.scheme}://{portal.netloc}"
        self.clock = clock
        self._user_verification = UserVerificationRequirement(self.settings.user_verification)

    # The registry.

    def keys_of(self, username: str) -> list[SecurityKey]:
        with self.storage.connect() as conn:
            rows = conn.execute(sa.select(webauthn_credentials).where(webauthn_credentials.c.username == username)
                                .order_by(webauthn_credentials.c.created_at, webauthn_credentials.c.id)).all()
        return [_key(row) for row in rows]

    def usable(self, username: str, exclude: int | None = None) -> list[SecurityKey]:
        """The keys that can prove a second factor now: not blocked, and not the one `exclude` (the first factor)."""
        return [key for key in self.keys_of(username) if key.cloned_at is None and key.id != exclude]

    def find(self, username: str, name_or_id: str) -> SecurityKey | None:
        """A user's key by its name, or by its number as `webauthn list` shows it."""
        keys = self.keys_of(username)
        return next((k for k in keys if k.name == name_or_id), None) or next(
            (k for k in keys if name_or_id.isdigit() and k.id == int(name_or_id)), None)

    def remove(self, key: SecurityKey) -> None:
        with self.storage.begin() as conn:
            conn.execute(webauthn_credentials.delete().where(webauthn_credentials.c.id == key.id))

    def owner(self, credential: dict[str, Any]) -> str | None:
        """Whose key made this response (None: no such key): for the ban check before a passkey is verified."""
        found = self._by_credential_id(_credential_id(credential))
        return found.username if found else None

    # Registration.

    def start_registration(self, username: str, display_name: str, session_id: str) -> Ceremony:
        handle = self._user_handle(username)
        selection = AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED if self.settings.passkey_login
            else ResidentKeyRequirement.DISCOURAGED,
            user_verification=self._user_verification,
        )
        options = generate_registration_options(
            rp_id=self.rp_id, rp_name=self.settings.display_name, user_name=username,
            user_id=base64url_to_bytes(handle), user_display_name=display_name or username,
            timeout=int(self.settings.timeout * 1000), authenticator_selection=selection,
            exclude_credentials=[self._descriptor(key) for key in self.keys_of(username)],
        )
        return Ceremony(self._store(REGISTER, username, session_id, options.challenge), options_to_json(options))

    def register(self, username: str, session_id: str, ceremony_id: str, name: str,
                 credential: dict[str, Any]) -> SecurityKey:
        """Verify a browser's new credential and keep it under `name`. Raises KeyRefused."""
        name = " ".join(name.split())
        if not name or len(name) > MAX_NAME_LENGTH:
            raise KeyRefused("bad_name", _("Give the key a name of 1 to %(max)d characters.", max=MAX_NAME_LENGTH))
        challenge = self._take(ceremony_id, REGISTER, session_id, username)
        try:
            verified = verify_registration_response(
                credential=credential, expected_challenge=challenge, expected_rp_id=self.rp_id,
                expected_origin=self.origin, require_user_verification=self.settings.user_verification == "required")
        except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
            raise KeyRefused("bad_registration", _("The key's answer was not accepted. Try again.")) from exc
        transports = credential["response"].get("transports")
        transports = transports if isinstance(transports, list) else []
        known = {t.value for t in AuthenticatorTransport}
        row: dict[str, Any] = {
            "username": username, "name": name, "credential_id": bytes_to_base64url(verified.credential_id),
            "public_key": verified.credential_public_key, "sign_count": verified.sign_count,
            "user_handle": self._user_handle(username), "discoverable": self.settings.passkey_login,
            "transports": ",".join(t for t in transports if t in known), "aaguid": verified.aaguid,
            "created_at": self.clock(),
        }
        try:
            with self.storage.begin() as conn:
                if conn.execute(sa.select(webauthn_credentials.c.id).where(
                        webauthn_credentials.c.username == username, webauthn_credentials.c.name == name)).first():
                    raise KeyRefused("duplicate_name", _("You already have a key named “%(name)s”. Choose another name.",
                                                           name=name))
                key_id = conn.execute(webauthn_credentials.insert().values(**row)).inserted_primary_key[0]
        except StorageConflict:
            raise KeyRefused("already_registered", _("This key is already registered.")) from None
        return SecurityKey(key_id, username, name, row["credential_id"], row["discoverable"], row["created_at"],
                           None, None)

    # Proving a key: as a second factor (the user known) or a passkey sign-in (the user from the key).

    def start_authentication(self, username: str | None, session_id: str | None,
                             exclude: int | None = None) -> Ceremony:
        """Options for navigator.credentials.get: the user's keys, or (username None) any passkey of this site."""
        allowed = [self._descriptor(key) for key in self.usable(username, exclude)] if username else []
        options = generate_authentication_options(
            rp_id=self.rp_id, timeout=int(self.settings.timeout * 1000), allow_credentials=allowed,
            user_verification=self._user_verification)
        purpose = SECOND_FACTOR if username else PASSKEY
        return Ceremony(self._store(purpose, username, session_id, options.challenge), options_to_json(options))

    def authenticate(self, ceremony_id: str, session_id: str | None, credential: dict[str, Any],
                     username: str | None = None, exclude: int | None = None) -> KeyUse:
        """Verify a response to `start_authentication`. Raises KeyRefused (a cloned key is blocked first)."""
        purpose = SECOND_FACTOR if username else PASSKEY
        challenge = self._take(ceremony_id, purpose, session_id, username)
        key = self._by_credential_id(_credential_id(credential))
        if key is None:
            raise KeyRefused("unknown_key", _("This key is not registered here."))
        if username is not None and key.username != username:
            raise KeyRefused("other_user", _("This key belongs to another account."))
        if key.cloned_at is not None:
            raise KeyRefused("blocked", _("This key is blocked: it may have been copied. Remove it and register it "
                                        "again, or use another factor."))
        if key.id == exclude:
            raise KeyRefused("same_key", _("You signed in with this key: use another key or your app's code."))
        stored = self._stored(key.id)
        if username is None and credential["response"].get("userHandle") != stored.user_handle:
            raise KeyRefused("other_user", _("This key belongs to another account."))
        try:
            verified = verify_authentication_response(
                credential=credential, expected_challenge=challenge, expected_rp_id=self.rp_id,
                expected_origin=self.origin, credential_public_key=stored.public_key,
                credential_current_sign_count=0,  # the counter is checked below, to tell a cloned key apart
                require_user_verification=self.settings.user_verification == "required")
        except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
            raise KeyRefused("bad_signature", _("The key's answer was not accepted. Try again.")) from exc
        now = self.clock()
        counted = verified.new_sign_count or stored.sign_count
        if counted and verified.new_sign_count <= stored.sign_count:
            with self.storage.begin() as conn:
                conn.execute(webauthn_credentials.update().where(webauthn_credentials.c.id == key.id)
                             .values(cloned_at=now))
            raise KeyRefused("cloned", _("This key's counter went backwards, so it may have been copied: it is now "
                                       "blocked. Remove it and register it again, or use another factor."))
        with self.storage.begin() as conn:
            conn.execute(webauthn_credentials.update().where(webauthn_credentials.c.id == key.id)
                         .values(sign_count=verified.new_sign_count, last_used_at=now))
        return KeyUse(key, verified.user_verified)

    # Storage of handles, keys and ceremonies.

    def _user_handle(self, username: str) -> str:
        """The user's random handle (64 bytes, base64url), made on first use."""
        with self.storage.begin() as conn:
            found = conn.execute(sa.select(webauthn_users.c.user_handle)
                                 .where(webauthn_users.c.username == username)).scalar()
            if found is None:
                found = bytes_to_base64url(secrets.token_bytes(32))
                conn.execute(webauthn_users.insert().values(username=username, user_handle=found))
        return str(found)

    def _by_credential_id(self, credential_id: str) -> SecurityKey | None:
        with self.storage.connect() as conn:
            row = conn.execute(sa.select(webauthn_credentials)
                               .where(webauthn_credentials.c.credential_id == credential_id)).first()
        return _key(row) if row else None

    def _stored(self, key_id: int) -> Any:
        with self.storage.connect() as conn:
            return conn.execute(sa.select(webauthn_credentials.c.public_key, webauthn_credentials.c.sign_count,
                                          webauthn_credentials.c.user_handle)
                                .where(webauthn_credentials.c.id == key_id)).one()

    def _descriptor(self, key: SecurityKey) -> PublicKeyCredentialDescriptor:
        return PublicKeyCredentialDescriptor(id=base64url_to_bytes(key.credential_id))

    def _store(self, purpose: str, username: str | None, session_id: str | None, challenge: bytes) -> str:
        ceremony_id = secrets.token_urlsafe(32)
        now = self.clock()
        with self.storage.begin() as conn:
            conn.execute(webauthn_ceremonies.delete().where(webauthn_ceremonies.c.expires_at < now))
            conn.execute(webauthn_ceremonies.insert().values(
                id=_digest(ceremony_id), purpose=purpose, username=username,
                session=_digest(session_id) if session_id else None, challenge=challenge,
                expires_at=now + self.settings.timeout))
        return ceremony_id

    def _take(self, ceremony_id: str, purpose: str, session_id: str | None, username: str | None) -> bytes:
        """The ceremony's challenge, once: the row is deleted whoever asks, and only its own session may use it."""
        expired = KeyRefused("no_ceremony", _("This request expired or was already used. Try again."))
        if not ceremony_id:
            raise expired
        table = webauthn_ceremonies
        with self.storage.begin() as conn:
            row = conn.execute(sa.select(table).where(table.c.id == _digest(ceremony_id))).first()
            if row is None or conn.execute(table.delete().where(table.c.id == row.id)).rowcount != 1:
                raise expired
        session = _digest(session_id) if session_id else None
        if (row.purpose, row.username, row.session) != (purpose, username, session) or row.expires_at < self.clock():
            raise expired
        return bytes(row.challenge)
