"""Password hashes: argon2id for new ones; bcrypt still verifies (htpasswd -B, Prometheus web-config).

Hashing is bounded by a semaphore: each argon2id call takes `memory` KiB, so a
burst of logins must not take the machine's memory or every core with it.
"""
from __future__ import annotations

import secrets
import threading

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .config import PasswordHashConfig

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_ARGON2_PREFIXES = ("$argon2id$", "$argon2i$")
_LEGACY = {
    "$apr1$": "Apache MD5 (apr1)",
    "$1$": "MD5-crypt",
    "$5$": "SHA256-crypt",
    "$6$": "SHA512-crypt",
    "{SHA}": "unsalted SHA-1",
    "{SSHA}": "salted SHA-1",
    "$argon2d$": "argon2d",
}


class UnsupportedHash(ValueError):
    """A hash format we refuse to accept (weak or unknown); the message says what to do."""


def check_hash_format(encoded: str) -> None:
    """Raise UnsupportedHash unless `encoded` is an argon2id/argon2i or bcrypt hash."""
    if encoded.startswith(_ARGON2_PREFIXES + _BCRYPT_PREFIXES):
        return
    for prefix, name in _LEGACY.items():
        if encoded.startswith(prefix):
            raise UnsupportedHash(f"{name} hashes are refused as too weak; re-hash with `authportal hash-password`")
    raise UnsupportedHash("not an argon2id or bcrypt hash (plain-text passwords are refused); "
                          "create one with `authportal hash-password`")


class PasswordHasher:
    """Hashes new passwords with argon2id and verifies argon2/bcrypt hashes, a bounded number at a time."""

    def __init__(self, config: PasswordHashConfig | None = None):
        config = config or PasswordHashConfig()
        self._argon2 = argon2.PasswordHasher(
            time_cost=config.iterations, memory_cost=config.memory, parallelism=config.parallelism,
            type=argon2.Type.ID,
        )
        self._slots = threading.BoundedSemaphore(config.max_concurrent)
        # Unknown users are checked against this, so they cost the same time as known ones.
        self._dummy = self._argon2.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        with self._slots:
            return self._argon2.hash(password)

    def verify(self, encoded: str, password: str) -> bool:
        with self._slots:
            if encoded.startswith(_BCRYPT_PREFIXES):
                try:
                    return bcrypt.checkpw(password.encode()[:72], encoded.encode())
                except ValueError:
                    return False
            try:
                return self._argon2.verify(encoded, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

    def verify_dummy(self, password: str) -> None:
        """Spend the time of a real check, for a user who does not exist."""
        self.verify(self._dummy, password)
