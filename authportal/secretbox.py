"""Encryption of secrets at rest (TOTP seeds), so a stolen database alone reveals no second factor.

AES-256-GCM under a key derived with HKDF-SHA256 from the configured
`secret_key`. Each blob is `nonce (12 bytes) + ciphertext + tag`; the
associated data (e.g. the username) binds a blob to its row, so blobs cannot be
swapped between users. One sealed canary in `encryption_check` lets startup
notice a changed `secret_key` instead of failing every login later.
"""
from __future__ import annotations

import os

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .storage import Storage, StorageConflict, encryption_check

_INFO = b"authportal secret encryption v1"
_NONCE_SIZE = 12
_CANARY = b"authportal encryption check"
_CANARY_ASSOCIATED = b"encryption_check"


class DecryptionError(Exception):
    """A blob does not open: wrong secret_key, or the stored bytes were altered."""


class WrongEncryptionKey(DecryptionError):
    """The configured secret_key is not the one the database's secrets were sealed with."""


class SecretBox:
    """Seals and opens small secrets with a key derived from `secret_key`."""

    def __init__(self, secret_key: str):
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret_key.encode())
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(_NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, blob: bytes, associated: bytes) -> bytes:
        blob = bytes(blob)
        if len(blob) < _NONCE_SIZE + 16:
            raise DecryptionError("stored secret is truncated")
        try:
            return self._aead.decrypt(blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], associated)
        except InvalidTag:
            raise DecryptionError(
                "cannot decrypt a stored secret: wrong secret_key, or the stored data was altered"
            ) from None

    def verify_key(self, storage: Storage) -> None:
        """Check `secret_key` against the database's canary (sealing one on first use); call at startup."""
        blob = _read_canary(storage)
        if blob is None:
            try:
                with storage.begin() as conn:
                    conn.execute(encryption_check.insert().values(id=1, canary=self.seal(_CANARY, _CANARY_ASSOCIATED)))
                return
            except StorageConflict:  # another instance sealed one at the same moment: check against it
                blob = _read_canary(storage)
                if blob is None:  # and it is gone again: nothing to check against
                    raise
        try:
            ok = self.open(blob, _CANARY_ASSOCIATED) == _CANARY
        except DecryptionError:
            ok = False
        if not ok:
            raise WrongEncryptionKey("secret_key does not match the one this database was created with")


def _read_canary(storage: Storage) -> bytes | None:
    with storage.connect() as conn:
        return conn.execute(sa.select(encryption_check.c.canary).where(encryption_check.c.id == 1)).scalar()
