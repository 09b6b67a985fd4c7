"""Second factor: RFC 6238 time-based one-time passwords.

Each user's seed is stored encrypted (see `secretbox`) with the algorithm,
digits and period it was enrolled with, so changing `totp.*` later does not
break existing devices. A code is accepted within +-`skew` steps and only once
per user and step: the step is recorded by an INSERT whose primary key
(username, step) makes a replay fail even when two instances see it at the
same moment.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pyotp
import segno
import sqlalchemy as sa

from .config import TotpConfig
from .secretbox import DecryptionError, SecretBox
from .storage import Storage, StorageConflict, totp_configurations, totp_history

DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
#: Seed size per algorithm: the HMAC's output size, as RFC 6238's reference seeds use.
SECRET_BYTES = {"sha1": 20, "sha256": 32, "sha512": 64}
#: Used steps are kept this long: far beyond any acceptance window (max 7 x 120 s), and clock corrections.
HISTORY_SECONDS = 3600.0


@dataclass(frozen=True)
class TotpDevice:
    """What can be shown about an enrolled device (never its secret)."""

    algorithm: str
    digits: int
    period: int
    created_at: float


class TotpService:
    """Enrolment and checking of TOTP codes; `clock` is injectable so tests never sleep."""

    def __init__(self, storage: Storage, config: TotpConfig, secret_box: SecretBox,
                 clock: Callable[[], float] = time.time):
        self.storage = storage
        self.config = config
        self.box = secret_box
        self.clock = clock

    # Secrets and how a phone receives them.

    def new_secret(self) -> str:
        """A random base32 seed as long as the configured algorithm's HMAC (160/256/512 bits)."""
        raw = secrets.token_bytes(SECRET_BYTES[self.config.algorithm])
        return base64.b32encode(raw).decode().rstrip("=")

    def provisioning_uri(self, username: str, secret: str) -> str:
        """otpauth:// URI for a new secret under the configured parameters."""
        c = self.config
        return self._uri(username, secret, TotpDevice(c.algorithm, c.digits, c.period, 0.0))

    def seal_pending(self, username: str, secret: str) -> str:
        """`secret` sealed for the session record while the user enrolls: the session store never sees it in clear."""
        return base64.b64encode(self.box.seal(secret.encode(), _pending_associated(username))).decode()

    def open_pending(self, username: str, sealed: str) -> str | None:
        """The pending secret, or None when `sealed` does not open (another user's, or one an older version kept in clear)."""
        try:
            return self.box.open(base64.b64decode(sealed, validate=True), _pending_associated(username)).decode()
        except (DecryptionError, binascii.Error, ValueError):
            return None

    @staticmethod
    def qr_svg(uri: str) -> str:
        """The URI as an inline SVG QR code (rendered here: the secret never goes to a QR service)."""
        # omitsize: a viewBox instead of a fixed size, so the page's CSS scales the whole symbol (it clipped)
        return segno.make(uri, error="m").svg_inline(scale=5, light="#fff", title="TOTP QR code", omitsize=True)

    def _uri(self, username: str, secret: str, device: TotpDevice) -> str:
        issuer = self.config.issuer
        query = urlencode({
            "secret": secret, "issuer": issuer, "algorithm": device.algorithm.upper(),
            "digits": device.digits, "period": device.period,
        }, quote_via=quote)
        return f"otpauth://totp/{quote(issuer, safe='')}:{quote(username, safe='')}?{query}"

    # Reading.

    def has_totp(self, username: str) -> bool:
        return self._row(username) is not None

    def device(self, username: str) -> TotpDevice | None:
        row = self._row(username)
        return _device(row) if row is not None else None

    def secret_uri(self, username: str) -> str | None:
        """The enrolled device's otpauth:// URI (administrators only: it contains the secret)."""
        row = self._row(username)
        if row is None:
            return None
        return self._uri(username, self._secret(username, row), _device(row))

    def _row(self, username: str) -> Any:
        with self.storage.connect() as conn:
            return conn.execute(sa.select(totp_configurations).where(totp_configurations.c.username == username)).first()

    def _secret(self, username: str, row: Any) -> str:
        return self.box.open(row.secret, _associated(username)).decode()

    # Changing.

    def enroll(self, username: str, secret: str, code: str) -> bool:
        """Save `secret` as the user's device if `code` proves the phone has it; the code is then spent."""
        secret = _normalize_secret(secret)
        c = self.config
        device = TotpDevice(c.algorithm, c.digits, c.period, self.clock())
        step = self._matching_step(secret, device, code)
        if step is None:
            return False
        return self._save(username, secret, device, used_step=step)

    def provision(self, username: str) -> str:
        """Create and save a new secret without a code (out-of-band enrolment by an administrator)."""
        secret = self.new_secret()
        c = self.config
        self._save(username, secret, TotpDevice(c.algorithm, c.digits, c.period, self.clock()))
        return secret

    def reset(self, username: str) -> bool:
        """Forget the user's device; True if there was one."""
        with self.storage.begin() as conn:
            conn.execute(totp_history.delete().where(totp_history.c.username == username))
            deleted = conn.execute(totp_configurations.delete().where(totp_configurations.c.username == username))
        self.storage.truncate_wal()
        return deleted.rowcount > 0

    def _save(self, username: str, secret: str, device: TotpDevice, used_step: int | None = None) -> bool:
        statements: list[Any] = [
            totp_history.delete().where(totp_history.c.username == username),
            totp_configurations.delete().where(totp_configurations.c.username == username),
            totp_configurations.insert().values(
                username=username, secret=self.box.seal(secret.encode(), _associated(username)),
                algorithm=device.algorithm, digits=device.digits, period=device.period,
                created_at=device.created_at,
            ),
        ]
        if used_step is not None:
            statements.append(totp_history.insert().values(username=username, step=used_step, used_at=self.clock()))
        saved = self._write(statements)
        self.storage.truncate_wal()  # the replaced device's sealed seed leaves SQLite's WAL too
        return saved

    # Checking.

    def check(self, username: str, code: str) -> bool:
        """True once for a code valid now (within the skew window) and not used before by this user."""
        if _clean_code(code) is None:
            return False  # not even shaped like a code: no database, no HMAC
        row = self._row(username)
        if row is None:
            return False
        step = self._matching_step(self._secret(username, row), _device(row), code)
        if step is None:
            return False
        now = self.clock()
        return self._write([
            totp_history.insert().values(username=username, step=step, used_at=now),
            totp_history.delete().where(totp_history.c.used_at < now - HISTORY_SECONDS),
        ])

    def _matching_step(self, secret: str, device: TotpDevice, code: str) -> int | None:
        cleaned = _clean_code(code)
        if cleaned is None or len(cleaned) != device.digits:
            return None
        otp = pyotp.OTP(secret, digits=device.digits, digest=DIGESTS[device.algorithm])
        now_step = int(self.clock() // device.period)
        skew = self.config.skew
        for step in range(max(now_step - skew, 0), now_step + skew + 1):
            if hmac.compare_digest(otp.generate_otp(step), cleaned):
                return step
        return None

    def _write(self, statements: list[Any]) -> bool:
        """Run `statements` in one transaction; False when a primary key refuses it (a replay or a race)."""
        try:
            with self.storage.begin() as conn:
                for statement in statements:
                    conn.execute(statement)
        except StorageConflict:
            return False
        return True


def _device(row: Any) -> TotpDevice:
    return TotpDevice(row.algorithm, row.digits, row.period, row.created_at)


def _associated(username: str) -> bytes:
    """Binds a sealed secret to its user: a blob copied onto another row does not open."""
    return b"totp:" + username.encode()


def _pending_associated(username: str) -> bytes:
    """A pending seed opens only as the same user's pending seed, never as a stored device."""
    return b"totp-pending:" + username.encode()


def _clean_code(code: str) -> str | None:
    """The code without spaces, or None unless it is 6 or 8 ASCII digits."""
    code = "".join(str(code).split())
    if len(code) not in (6, 8) or not (code.isascii() and code.isdigit()):
        return None
    return code


def _normalize_secret(secret: str) -> str:
    """Upper-case base32 without spaces or padding; ValueError unless it decodes to >= 128 bits."""
    secret = "".join(secret.split()).upper().rstrip("=")
    try:
        raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("the TOTP secret is not base32") from None
    if len(raw) < 16:
        raise ValueError("the TOTP secret is shorter than 128 bits")
    return secret
