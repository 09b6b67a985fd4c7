"""OpenLDAP's password policy overlay (ppolicy): its request control and what its response control says.

The portal sends the control (draft-behera-ldap-password-policy, not critical: a server without the overlay
ignores it) with the user's bind and with Password Modify. slapd answers with an `error` when the password is
right but expired (the bind fails: invalidCredentials *with* passwordExpired — a wrong password carries no
error), when it must be changed after an administrator's reset (the bind succeeds but the connection may only
change the password), or when a new password breaks the policy.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CONTROL_OID = "1.3.6.1.4.1.42.2.27.8.5.1"
#: The request control as ldap3 takes it: (OID, criticality, value).
REQUEST = (CONTROL_OID, False, None)

# PasswordPolicyResponseValue.error
PASSWORD_EXPIRED = 0
ACCOUNT_LOCKED = 1
CHANGE_AFTER_RESET = 2
PASSWORD_MOD_NOT_ALLOWED = 3
MUST_SUPPLY_OLD_PASSWORD = 4
INSUFFICIENT_PASSWORD_QUALITY = 5
PASSWORD_TOO_SHORT = 6
PASSWORD_TOO_YOUNG = 7
PASSWORD_IN_HISTORY = 8
PASSWORD_TOO_LONG = 9

#: Why the directory refused a new password, for the person who typed it.
_REFUSALS = {
    PASSWORD_MOD_NOT_ALLOWED: "The directory does not allow this account to change its password.",
    MUST_SUPPLY_OLD_PASSWORD: "The directory needs the current password to change it.",
    INSUFFICIENT_PASSWORD_QUALITY: "The directory refused the new password: it does not meet the password policy's "
                                   "quality rules.",
    PASSWORD_TOO_SHORT: "The directory refused the new password: it is too short for the password policy.",
    PASSWORD_TOO_YOUNG: "The directory refused the new password: the password was changed too recently, try again "
                        "later.",
    PASSWORD_IN_HISTORY: "The directory refused the new password: it was used before.",
    PASSWORD_TOO_LONG: "The directory refused the new password: it is too long for the password policy.",
}


@dataclass(frozen=True)
class PolicyResponse:
    """The response control's content: a warning (seconds before expiry, grace logins left) and/or an error."""

    error: int | None = None
    time_before_expiration: int | None = None
    grace_logins_remaining: int | None = None


def response(controls: Mapping[str, bytes]) -> PolicyResponse | None:
    """The policy response among a result's controls; None when absent or not readable."""
    value = controls.get(CONTROL_OID)
    return None if value is None else parse(value)


def refusal(error: int | None) -> str | None:
    """The words for a Password Modify refused by the policy (None: no policy error, or one without words)."""
    return _REFUSALS.get(error) if error is not None else None


def parse(value: bytes) -> PolicyResponse | None:
    """Decode `SEQUENCE { warning [0] CHOICE { [0] INTEGER, [1] INTEGER } OPTIONAL, error [1] ENUMERATED OPTIONAL }`
    (BER, as slapd sends it); None for anything else."""
    try:
        tag, body, rest = _tlv(value)
        if tag != 0x30 or rest:
            return None
        error = expiry = grace = None
        while body:
            tag, content, body = _tlv(body)
            if tag == 0xA0:  # warning: constructed [0] holding one of two INTEGERs
                inner_tag, number, extra = _tlv(content)
                if extra or inner_tag not in (0x80, 0x81):
                    return None
                if inner_tag == 0x80:
                    expiry = _integer(number)
                else:
                    grace = _integer(number)
            elif tag == 0x81:  # error: primitive [1] ENUMERATED
                error = _integer(content)
            else:
                return None
        return PolicyResponse(error=error, time_before_expiration=expiry, grace_logins_remaining=grace)
    except ValueError:
        return None


def _tlv(data: bytes) -> tuple[int, bytes, bytes]:
    """One BER tag-length-value: (tag, content, what follows)."""
    if len(data) < 2:
        raise ValueError("truncated")
    tag, length, offset = data[0], data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            raise ValueError("bad length")
        length = int.from_bytes(data[2:2 + count], "big")
        offset += count
    if len(data) < offset + length:
        raise ValueError("truncated")
    return tag, data[offset:offset + length], data[offset + length:]


def _integer(content: bytes) -> int:
    if not content or len(content) > 8:
        raise ValueError("bad integer")
    return int.from_bytes(content, "big", signed=True)
