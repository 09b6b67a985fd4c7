"""The LDAP / Active Directory `UserProvider`: search the user, bind as them, read their details.

Search-then-bind, never a DN built from input: a pooled service-account connection finds the user with
`users_filter` (input escaped per RFC 4515) and their groups with `groups_filter`; the found DN is then bound
with the user's password on a short-lived connection. The configuration arrives complete (config.py fills
the preset and checks the filters), so nothing here can be unset or malformed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ldap3 import BASE, Connection

from ...config import LdapConfig
from .. import BackendUnavailable, UserDetails, acceptable_credentials
from . import activedirectory
from .filters import expand_filter
from .pool import DirectoryPool, Endpoint
from .search import Entry, first_value, search, search_all_pages

log = logging.getLogger("authportal.ldap")


@dataclass
class _Found:
    """A user the search found, with their groups, and the server that found them (the bind goes there)."""

    dn: str
    attributes: dict[str, object]
    endpoint: Endpoint
    groups: tuple[str, ...]


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
        self.user_attributes = [config.username_attribute, config.mail_attribute, config.display_name_attribute]
        if self.is_active_directory:
            self.user_attributes += activedirectory.STATE_ATTRIBUTES
        self.pool = DirectoryPool(config)

    # ------------------------------------------------------------------ the protocol
    def check_password(self, username: str, password: str) -> UserDetails | None:
        if not acceptable_credentials(username, password):
            log.info("LDAP login refused before any bind: unacceptable username or password (empty, too long "
                     "or control characters)")
            return None
        found = self.pool.run(lambda conn, endpoint: self._find(conn, endpoint, username, "login"))
        if found is None or not self._bind_user(found, username, password):
            return None
        return self._details(found)

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
    def _find(self, conn: Connection, endpoint: Endpoint, username: str, purpose: str,
              exact: bool = False) -> _Found | None:
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
        if self.is_active_directory:
            problem = activedirectory.account_problem(attributes)
            if problem:
                log.warning("LDAP %s refused for %r: %s", purpose, found_name, problem)
                return None
        groups = self._groups(conn, dn, found_name, username)
        return _Found(dn=dn, attributes=attributes, endpoint=endpoint, groups=groups)

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

    def _details(self, found: _Found) -> UserDetails:
        username = first_value(found.attributes, self.config.username_attribute) or ""
        return UserDetails(
            username=username,
            display_name=first_value(found.attributes, self.config.display_name_attribute) or username,
            email=first_value(found.attributes, self.config.mail_attribute) or "",
            groups=found.groups,
            credential_stamp=first_value(found.attributes, "pwdLastSet") or "",  # AD: set anew by every password change
        )

    # ------------------------------------------------------------------ user bind
    def _bind_user(self, found: _Found, username: str, password: str) -> bool:
        """True when the directory accepts the password; a refusal is logged with AD's reason when it gives one."""
        if not password:  # acceptable_credentials already refused it; never send an unauthenticated bind
            return False
        answer = self.pool.bind(found.dn, password, found.endpoint)
        if answer.accepted:
            return True
        if answer.code == 49:  # invalidCredentials
            reason = activedirectory.bind_refusal_reason(answer.message)
            if reason and reason != "wrong password":
                log.warning("LDAP login refused for %r: %s", username, reason)
            else:
                log.info("LDAP login failed for %r: invalid credentials", username)
        else:
            log.warning("LDAP login refused for %r: %s %s", username, answer.description, answer.message)
        return False


def _join_dn(prefix: str | None, base: str) -> str:
    return f"{prefix},{base}" if prefix else base
