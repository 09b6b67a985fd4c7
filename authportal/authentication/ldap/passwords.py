"""Writing passwords: a change that proves the old password, and a reset by the service account.

- OpenLDAP and the other non-AD directories: the Password Modify extended operation (RFC 3062). A change is
  made bound *as the user* with the old password (the bind proves it; the directory checks it again); a reset
  by the service account, without the old one (it needs write access to `userPassword`). With the ppolicy
  overlay, a password that is right but expired cannot bind: the service account sets the new one, since the
  bind's passwordExpired answer (given only for a right password) proved the old one.
- Active Directory: `unicodePwd`, only over TLS (AD refuses it in clear, and the portal never sends it so). A
  change is a delete of the old value and an add of the new one; AD checks the old value and lets any bound
  account make such a change (the "Change Password" right belongs to Everyone), so the service account makes
  it, and a user whose password expired or must be changed, who cannot bind, can change it too. A reset is a
  replace, which needs the "Reset Password" right.

The directory's refusals become `PasswordRejected` with words; a failing directory `BackendUnavailable`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, Connection

from .. import BackendUnavailable, PasswordRejected
from . import activedirectory, ppolicy
from .pool import Broken, DirectoryPool, Endpoint, response_controls

log = logging.getLogger("authportal.ldap")

WRONG_CURRENT_PASSWORD = activedirectory.WRONG_CURRENT_PASSWORD  # the same words for every directory
AD_NEEDS_TLS = ("Active Directory changes passwords only over TLS: use an ldaps:// URL or start_tls "
                "(authentication.ldap)")
#: Result codes that are the directory failing, not a refusal of this password.
_FAILURE_CODES = frozenset({1, 2, 3, 11, 12, 51, 52, 80})


@dataclass(frozen=True)
class Account:
    """The user whose password is written: the DN the search found, the server that found it, the name (logs)."""

    dn: str
    endpoint: Endpoint
    name: str


class PasswordWriter:
    def __init__(self, pool: DirectoryPool, active_directory: bool):
        self.pool = pool
        self.active_directory = active_directory

    def change(self, account: Account, old_password: str, new_password: str) -> None:
        if self.active_directory:
            self._ad_write(account, [(MODIFY_DELETE, [activedirectory.unicode_pwd(old_password)]),
                                     (MODIFY_ADD, [activedirectory.unicode_pwd(new_password)])], reset=False)
        else:
            self._change_as_user(account, old_password, new_password)
        log.info("LDAP password changed for %r", account.name)

    def reset(self, account: Account, new_password: str) -> None:
        if self.active_directory:
            self._ad_write(account, [(MODIFY_REPLACE, [activedirectory.unicode_pwd(new_password)])], reset=True)
        else:
            self.pool.session(account.endpoint, lambda conn: _password_modify(conn, account, None, new_password,
                                                                              by_service=True))
        log.info("LDAP password reset for %r by the service account", account.name)

    # ------------------------------------------------------------------ OpenLDAP and the like
    def _change_as_user(self, account: Account, old_password: str, new_password: str) -> None:
        answer, _ = self.pool.session(
            account.endpoint, lambda conn: _password_modify(conn, account, old_password, new_password),
            dn=account.dn, password=old_password, controls=[ppolicy.REQUEST])
        if answer.accepted:
            return
        policy = ppolicy.response(answer.controls)
        if answer.code == 49 and policy is not None and policy.error == ppolicy.PASSWORD_EXPIRED:
            # Right but expired (slapd says so only for the right password): the user cannot bind to change it.
            log.info("LDAP password change for %r: the password expired, the service account sets the new one",
                     account.name)
            self.pool.session(account.endpoint, lambda conn: _password_modify(conn, account, None, new_password,
                                                                              by_service=True))
            return
        log.info("LDAP password change refused for %r: the bind with the current password failed (%s %s)",
                 account.name, answer.description, answer.message)
        raise PasswordRejected(WRONG_CURRENT_PASSWORD)

    # ------------------------------------------------------------------ Active Directory
    def _ad_write(self, account: Account, changes: list[tuple[str, list[bytes]]], reset: bool) -> None:
        def write(conn: Connection) -> None:
            if not (conn.server.ssl or conn.tls_started):
                log.warning("LDAP password %s for %r not sent: %s", "reset" if reset else "change", account.name,
                            AD_NEEDS_TLS)
                raise BackendUnavailable(AD_NEEDS_TLS)
            conn.modify(account.dn, {"unicodePwd": changes})
            result = conn.result or {}
            code = result.get("result")
            if code == 0:
                return
            message = str(result.get("message") or "").strip()
            words = activedirectory.password_refusal(code, message, reset=reset)
            if words is None:
                raise Broken(f"password {'reset' if reset else 'change'} failed: {result.get('description')} {message}")
            log.info("LDAP password %s refused for %r: %s %s", "reset" if reset else "change", account.name,
                     result.get("description"), message)
            raise PasswordRejected(words)

        self.pool.session(account.endpoint, write)


def _password_modify(conn: Connection, account: Account, old_password: str | None, new_password: str,
                     by_service: bool = False) -> None:
    """RFC 3062 Password Modify on a bound connection; the directory's refusal in words."""
    done = conn.extend.standard.modify_password(account.dn, old_password, new_password, controls=[ppolicy.REQUEST])
    if done:
        return
    result = conn.result or {}
    code = result.get("result")
    description = str(result.get("description") or "")
    message = str(result.get("message") or "").strip()
    if code is None or code in _FAILURE_CODES:
        raise Broken(f"Password Modify failed: {description} {message}".strip())
    log.info("LDAP Password Modify refused for %r: %s %s", account.name, description, message)
    policy = ppolicy.response(response_controls(result))
    words = ppolicy.refusal(policy.error if policy else None)
    if words:
        raise PasswordRejected(words)
    if code == 50:  # insufficientAccessRights
        if by_service:
            raise PasswordRejected("The directory did not let the portal set this password: the service account "
                                   "needs write access to userPassword.")
        raise PasswordRejected("The directory does not allow this account to change its password.")
    if code == 53 and "old password" in message:  # slapd: "unwilling to verify old password"
        raise PasswordRejected(WRONG_CURRENT_PASSWORD)
    raise PasswordRejected(f"The directory refused the new password: {message or description}.")
