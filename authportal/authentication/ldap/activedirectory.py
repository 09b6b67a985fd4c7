"""Active Directory specifics: why an account may not log in, read from its attributes or from AD's bind error.

The `activedirectory` preset's users filter already leaves such accounts out; these say *why*, for the log
(the user only ever sees "wrong username or password"). Nested groups need nothing here: the preset's groups
filter uses AD's in-chain matching rule (presets are in config.py).
"""
from __future__ import annotations

import re
import time
from collections.abc import Mapping

from .filters import microsoft_nt_time
from .search import int_value

#: Finds the account whatever its state, to log why the users filter refused it.
IDENTITY_FILTER = "(&(|({username_attribute}={input})(userPrincipalName={input}))(sAMAccountType=805306368))"
#: Read with every user, so a refusal can be explained and a password change noticed (pwdLastSet).
STATE_ATTRIBUTES = ("userAccountControl", "msDS-User-Account-Control-Computed", "pwdLastSet", "accountExpires")

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
    "532": "password expired",
    "533": "account disabled",
    "701": "account expired",
    "773": "password must be changed at next logon",
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
        return "password must be changed at next logon"
    if computed & _UF_PASSWORD_EXPIRED:
        return "password expired"
    return None


def bind_refusal_reason(message: str) -> str | None:
    """The reason in AD's invalidCredentials text (`… data 533, v1db1` → account disabled); None elsewhere."""
    match = _DATA_CODE_RE.search(message)
    return _BIND_REFUSAL_REASONS.get(match.group(1).lower()) if match else None
