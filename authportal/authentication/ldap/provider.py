"""The LDAP / Active Directory `UserProvider`: search the user, bind as them, read their details; change and
reset passwords (the writes are in passwords.py).

Search-then-bind, never a DN built from input: a pooled service-account connection finds the user with
`users_filter` (input escaped per RFC 4515) and their groups with `groups_filter`; the found DN is then bound
with the user's password on a short-lived connection. A right password that may not sign in until it is
changed (AD's expired / must-change, ppolicy's expired / changed-after-reset) raises `PasswordChangeRequired`.
The configuration arrives complete (config.py fills the preset and checks the filters), so nothing here can be
unset or malformed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn

from ldap3 import BASE, Connection

from ...config import LdapConfig
from .. import (
    MAX_PASSWORD_LENGTH,
    BackendUnavailable,
    PasswordChangeRequired,
    PasswordRejected,
    UserDetails,
    acceptable_credentials,
)
from . import activedirectory, ppolicy
from .filters import expand_filter
from .passwords import WRONG_CURRENT_PASSWORD, Account, PasswordWriter
from .pool import DirectoryPool, Endpoint
from .search import Entry, first_value, search, search_all_pages

log = logging.getLogger("authportal.ldap")

NO_SUCH_ACCOUNT = "The directory has no such account, or it is disabled, locked or expired."
PROTECTED_ACCOUNT = ("This is an administrator's account (Active Directory adminCount=1): the portal does not reset "
                     "its password.")
UNACCEPTABLE_NEW_PASSWORD = "The new password is empty, too long, or contains a NUL character."


@dataclass
class _Found:
    """A user the search found, with their groups, and the server that found them (the bind goes there)."""

    dn: str
    attributes: dict[str, object]
    endpoint: Endpoint
    groups: tuple[str, ...]
    #: AD: the password must be changed before the account may sign in ("password expired" …), else None.
    password_state: str | None = None

    def account(self, name: str) -> Account:
        return Account(dn=self.dn, endpoint=self.endpoint, name=name)


class LdapUserProvider:
    """Search-then-bind authentication against OpenLDAP, Active Directory and the like (thread-safe)."""

    def __init__(self, config: LdapConfig):
        self.config = config
        self.attribute_names = {
            "username_attribute": config.username_attribute,
            "mail_attribute": config.mail_attribute,
            "display_name_attribute": config.display_name_attribute,
            "group_name_attribute": config.group_name_attribute,
        }
        self.users_base = _join_dn(config.additional_users_dn, config.base_dn)
        self.groups_base = _join_dn(config.additional_groups_dn, config.base_dn)
        self.is_active_directory = config.implementation == "activedirectory"
        self.user_attributes = [config.username_attribute, config.mail_attribute, config.display_name_attribute,
                                *config.extra_attributes]
        if self.is_active_directory:
            self.user_attributes += activedirectory.STATE_ATTRIBUTES
        self.pool = DirectoryPool(config)
        self.passwords = PasswordWriter(self.pool, self.is_active_directory)
        #: AD says why in its bind error; the others may have the ppolicy overlay, which answers this control.
        self.bind_controls = None if self.is_active_directory else [ppolicy.REQUEST]

    # ------------------------------------------------------------------ the protocol
    def check_password(self, username: str, password: str) -> UserDetails | None:
        if not acceptable_credentials(username, password):
            log.info("LDAP login refused before any bind: unacceptable username or password (empty, too long "
                     "or control characters)")
            return None
        found = self.pool.run(lambda conn, endpoint: self._find(conn, endpoint, username, "login",
                                                                password_change_ok=True))
        if found is None or not self._bind_user(found, username, password):
            return None
        return self._details(found)

    def username_for_email(self, email: str) -> str | None:
        """The one user whose `mail_attribute` is `email` and whom the users filter finds as get_details does."""
        if not acceptable_credentials(email, "x") or "@" not in email:
            return None

        def lookup(conn: Connection, endpoint: Endpoint) -> str | None:
            filter_ = expand_filter("({mail_attribute}={input})", self.attribute_names, input=email.strip())
            entries = search(conn, self.users_base, filter_, [self.config.username_attribute],
                             time_limit=self.pool.receive_timeout, size_limit=2)
            names = [name for _, attributes in entries if (name := first_value(attributes, self.config.username_attribute))]
            if len(entries) != 1 or len(names) != 1:
                log.info("LDAP lookup by e-mail: %d entries have that address", len(entries))
                return None
            found = self._find(conn, endpoint, names[0], "lookup by e-mail", exact=True, with_groups=False)
            return None if found is None else self._name(found)

        return self.pool.run(lookup)

    def change_password(self, username: str, old_password: str, new_password: str) -> None:
        if not acceptable_credentials(username, old_password):
            raise PasswordRejected(WRONG_CURRENT_PASSWORD)
        _check_new_password(new_password)
        found = self.pool.run(lambda conn, endpoint: self._find(conn, endpoint, username, "password change",
                                                                password_change_ok=True, with_groups=False))
        if found is None:
            raise PasswordRejected(WRONG_CURRENT_PASSWORD)
        self.passwords.change(found.account(self._name(found) or username), old_password, new_password)

    def set_password(self, username: str, new_password: str) -> None:
        if not acceptable_credentials(username, "x"):
            raise PasswordRejected(NO_SUCH_ACCOUNT)
        _check_new_password(new_password)
        found = self.pool.run(lambda conn, endpoint: self._find(conn, endpoint, username, "password reset",
                                                                exact=True, password_change_ok=True,
                                                                with_groups=False))
        if found is None:
            raise PasswordRejected(NO_SUCH_ACCOUNT)
        name = self._name(found) or username
        if self.is_active_directory and activedirectory.is_protected(found.attributes):
            log.warning("LDAP password reset refused for %r: an administrator's account (adminCount=1)", name)
            raise PasswordRejected(PROTECTED_ACCOUNT)
        self.passwords.reset(found.account(name), new_password)

    def get_details(self, username: str) -> UserDetails | None:
        if not username or len(username) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in username):
            return None
        found = self.pool.run(lambda conn, endpoint: self._find(conn, endpoint, username, "refresh", exact=True))
        return None if found is None else self._details(found)

    def health(self) -> str | None:
        def probe(conn: Connection, endpoint: Endpoint) -> None:
            search(conn, self.config.base_dn, "(objectClass=*)", ["1.1"], time_limit=self.pool.receive_timeout,
                   scope=BASE, size_limit=1, missing_base_is_broken=True)

        try:
            self.pool.run(probe)
        except BackendUnavailable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        self.pool.close()

    # ------------------------------------------------------------------ search
    def _find(self, conn: Connection, endpoint: Endpoint, username: str, purpose: str, exact: bool = False,
              password_change_ok: bool = False, with_groups: bool = True) -> _Found | None:
        """The one user `username` names, or None (logged why). `password_change_ok`: an AD account whose password
        expired or must be changed is found (its password may still be checked and changed), else refused."""
        entries = self._search_users(conn, self.config.users_filter, username)
        if not entries:
            if self.is_active_directory:
                self._explain_ad_refusal(conn, username, purpose)
            else:
                log.info("LDAP %s: no user matches %r", purpose, username)
            return None
        if len(entries) > 1:
            log.warning("LDAP %s refused for %r: the users filter matches several entries", purpose, username)
            return None
        dn, attributes = entries[0]
        if not dn:
            log.warning("LDAP %s refused for %r: the directory returned an entry without a DN", purpose, username)
            return None
        found_name = first_value(attributes, self.config.username_attribute)
        if not found_name:
            log.warning("LDAP %s refused for %r: entry %s has no %s attribute", purpose, username, dn,
                        self.config.username_attribute)
            return None
        if exact and found_name.casefold() != username.casefold():
            log.info("LDAP %s: %r matched %r, not the same user", purpose, username, found_name)
            return None
        password_state = None
        if self.is_active_directory:
            problem = activedirectory.account_problem(attributes)
            if password_change_ok and problem in activedirectory.PASSWORD_CHANGE_STATES:
                log.info("LDAP %s for %r: %s", purpose, found_name, problem)
                password_state = problem
            elif problem:
                log.warning("LDAP %s refused for %r: %s", purpose, found_name, problem)
                return None
        groups = self._groups(conn, dn, found_name, username) if with_groups else ()
        return _Found(dn=dn, attributes=attributes, endpoint=endpoint, groups=groups, password_state=password_state)

    def _search_users(self, conn: Connection, template: str, username: str) -> list[Entry]:
        """At most two entries: two means the filter is ambiguous, and the login is refused."""
        filter_ = expand_filter(template, self.attribute_names, input=username)
        return search(conn, self.users_base, filter_, self.user_attributes, time_limit=self.pool.receive_timeout,
                      size_limit=2)

    def _explain_ad_refusal(self, conn: Connection, username: str, purpose: str) -> None:
        """The AD users filter leaves out disabled/expired accounts: say why, for the log only."""
        entries = self._search_users(conn, activedirectory.IDENTITY_FILTER, username)
        problem = activedirectory.account_problem(entries[0][1]) if len(entries) == 1 else None
        if problem:
            name = first_value(entries[0][1], self.config.username_attribute) or username
            log.warning("LDAP %s refused for %r: %s", purpose, name, problem)
        else:
            log.info("LDAP %s: no user matches %r", purpose, username)

    def _groups(self, conn: Connection, dn: str, found_name: str, input_: str) -> tuple[str, ...]:
        filter_ = expand_filter(self.config.groups_filter, self.attribute_names, input=input_, dn=dn,
                                username=found_name)
        name_attribute = self.config.group_name_attribute
        entries = search_all_pages(conn, self.groups_base, filter_, [name_attribute],
                                   time_limit=self.pool.receive_timeout)
        names = {name for _, attributes in entries if (name := first_value(attributes, name_attribute))}
        return tuple(sorted(names, key=str.casefold))

    def _name(self, found: _Found) -> str:
        """The directory's spelling of the username (`_find` made sure there is one)."""
        return first_value(found.attributes, self.config.username_attribute) or ""

    def _details(self, found: _Found) -> UserDetails:
        username = self._name(found)
        return UserDetails(
            username=username,
            display_name=first_value(found.attributes, self.config.display_name_attribute) or username,
            email=first_value(found.attributes, self.config.mail_attribute) or "",
            groups=found.groups,
            credential_stamp=first_value(found.attributes, "pwdLastSet") or "",  # AD: set anew by every password change
            attributes=tuple(sorted((name, first_value(found.attributes, name) or "")
                                    for name in self.config.extra_attributes)),
        )

    # ------------------------------------------------------------------ user bind
    def _bind_user(self, found: _Found, username: str, password: str) -> bool:
        """True when the directory accepts the password; a refusal is logged with AD's reason when it gives one.

        Raises PasswordChangeRequired when the password is right but must be changed first: AD's bind error data
        532 / 773 (given only for the right password), ppolicy's passwordExpired (likewise) or changeAfterReset.
        """
        if not password:  # acceptable_credentials already refused it; never send an unauthenticated bind
            return False
        answer = self.pool.bind(found.dn, password, found.endpoint, controls=self.bind_controls)
        policy = ppolicy.response(answer.controls) if self.bind_controls else None
        name = self._name(found) or username
        if answer.accepted:
            if policy is not None and policy.error == ppolicy.CHANGE_AFTER_RESET:
                self._change_required(name, "password must be changed after a reset")
            if found.password_state:  # AD said so in the account's state; the bind does not overrule it
                self._change_required(name, found.password_state)
            return True
        if answer.code == 49:  # invalidCredentials
            reason = activedirectory.bind_refusal_reason(answer.message)
            if self.is_active_directory and reason in activedirectory.PASSWORD_CHANGE_STATES:
                self._change_required(name, reason or "")
            if policy is not None and policy.error == ppolicy.PASSWORD_EXPIRED:
                self._change_required(name, activedirectory.PASSWORD_EXPIRED)
            if reason and reason != "wrong password":
                log.warning("LDAP login refused for %r: %s", username, reason)
            else:
                log.info("LDAP login failed for %r: invalid credentials", username)
        else:
            log.warning("LDAP login refused for %r: %s %s", username, answer.description, answer.message)
        return False

    @staticmethod
    def _change_required(name: str, reason: str) -> NoReturn:
        log.info("LDAP login for %r: the password is right but must be changed first (%s)", name, reason)
        raise PasswordChangeRequired(name, reason)


def _check_new_password(password: str) -> None:
    """The backend's own bounds (the password policy, with words per rule, is the portal's, before this)."""
    if not password or len(password) > MAX_PASSWORD_LENGTH or "\x00" in password:
        raise PasswordRejected(UNACCEPTABLE_NEW_PASSWORD)


def _join_dn(prefix: str | None, base: str) -> str:
    return f"{prefix},{base}" if prefix else base
