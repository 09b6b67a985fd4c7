"""Active Directory specifics: why an account may not log in, read from its attributes or from AD's bind error;
how AD takes a new password (`unicodePwd`) and what its refusals mean.

The `activedirectory` preset's users filter already leaves disabled and expired accounts out; these say *why*,
for the log (the user only ever sees "wrong username or password"). An expired password or a pending "must
change at next logon" is not a refusal: with the right password the user changes it at the prompt. Nested
groups need nothing here: the preset's groups filter uses AD's in-chain matching rule (presets are in config.py).
"""
from __future__ import annotations

import re
import time
from collections.abc import Mapping

from .filters import microsoft_nt_time
from .search import int_value

#: Finds the account whatever its state, to log why the users filter refused it.
IDENTITY_FILTER = "(&(|({username_attribute}={input})(userPrincipalName={input}))(sAMAccountType=805306368))"
#: Read with every user, so a refusal can be explained, a password change noticed (pwdLastSet) and an
#: administrator's account (adminCount) kept out of password resets.
STATE_ATTRIBUTES = ("userAccountControl", "msDS-User-Account-Control-Computed", "pwdLastSet", "accountExpires",
                    "adminCount")

MUST_CHANGE = "password must be changed at next logon"
PASSWORD_EXPIRED = "password expired"
#: Account states in which the right password may not sign in but may change the password.
PASSWORD_CHANGE_STATES = frozenset({MUST_CHANGE, PASSWORD_EXPIRED})

#: AD's refusal of a new password for its policy (ERROR_PASSWORD_RESTRICTION, 0x52D): length, complexity, history
#: or minimum age — AD does not say which.
POLICY_REFUSAL = ("The directory refused the new password: it does not meet the password policy (length, complexity, "
                  "or used before, or changed too recently).")
#: A change whose old password is wrong (AD: ERROR_INVALID_PASSWORD, 0x56); the same words for every directory.
WRONG_CURRENT_PASSWORD = "The current password is wrong."

# userAccountControl / msDS-User-Account-Control-Computed bits
_UF_ACCOUNTDISABLE = 0x2
_UF_LOCKOUT = 0x10
_UF_PASSWORD_EXPIRED = 0x800000
_NEVER_EXPIRES = 0x7FFFFFFFFFFFFFFF
#: The `data XXX` code in AD's invalidCredentials message.
_BIND_REFUSAL_REASONS = {
    "525": "user not found",
    "52e": "wrong password",
    "530": "logon not permitted at this time",
    "531": "logon not permitted at this workstation",
    "532": PASSWORD_EXPIRED,
    "533": "account disabled",
    "701": "account expired",
    "773": MUST_CHANGE,
    "775": "account locked out",
}
_DATA_CODE_RE = re.compile(r"\bdata ([0-9a-f]{3})\b", re.IGNORECASE)


def account_problem(attributes: Mapping[str, object], now: float | None = None) -> str | None:
    """Why an AD account may not log in (None when it may)."""
    moment = time.time() if now is None else now
    uac = int_value(attributes, "userAccountControl") or 0
    computed = int_value(attributes, "msDS-User-Account-Control-Computed") or 0
    if uac & _UF_ACCOUNTDISABLE:
        return "account disabled"
    if computed & _UF_LOCKOUT:
        return "account locked out"
    expires = int_value(attributes, "accountExpires")
    if expires and expires != _NEVER_EXPIRES and expires <= microsoft_nt_time(moment):
        return "account expired"
    if int_value(attributes, "pwdLastSet") == 0:
        return MUST_CHANGE
    if computed & _UF_PASSWORD_EXPIRED:
        return PASSWORD_EXPIRED
    return None


def is_protected(attributes: Mapping[str, object]) -> bool:
    """adminCount=1: a member (now or once) of Domain Admins, Account Operators and the like. AD's AdminSDHolder
    keeps delegated rights off such accounts; the portal never resets their passwords either."""
    return int_value(attributes, "adminCount") == 1


def bind_refusal_reason(message: str) -> str | None:
    """The reason in AD's invalidCredentials text (`… data 533, v1db1` → account disabled); None elsewhere."""
    match = _DATA_CODE_RE.search(message)
    return _BIND_REFUSAL_REASONS.get(match.group(1).lower()) if match else None


def unicode_pwd(password: str) -> bytes:
    """A `unicodePwd` value: the password in double quotes, UTF-16-LE."""
    return f'"{password}"'.encode("utf-16-le")


_WIN32_ERROR_RE = re.compile(r"^\s*([0-9a-f]{8})\b", re.IGNORECASE)
_ERROR_PASSWORD_RESTRICTION = 0x52D
_ERROR_INVALID_PASSWORD = 0x56


def password_refusal(code: int | None, message: str, reset: bool) -> str | None:
    """Words for AD's refusal of a `unicodePwd` change (`reset`: a replace by the service account); None when
    the answer is not about this password (a directory failure)."""
    match = _WIN32_ERROR_RE.match(message)
    win32 = int(match.group(1), 16) if match else None
    if code == 19:  # constraintViolation
        if win32 == _ERROR_INVALID_PASSWORD and not reset:
            return WRONG_CURRENT_PASSWORD
        if win32 == _ERROR_PASSWORD_RESTRICTION:
            return POLICY_REFUSAL
        return f"The directory refused the new password: {message}"
    if code == 50:  # insufficientAccessRights
        if reset:
            return ("The directory did not let the portal reset this password: the service account needs the "
                    "Reset Password right on this user.")
        return "The directory does not allow this account to change its password."
    if code == 53:  # unwillingToPerform: e.g. not over TLS, or a value AD cannot read
        return f"The directory is unwilling to change the password: {message}"
    return None
