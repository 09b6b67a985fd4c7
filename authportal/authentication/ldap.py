"""LDAP and Active Directory user provider (ldap3).

How a password is checked (search-then-bind, never a DN built from input):

1. A pooled connection bound as the service account searches the user with
   ``users_filter`` (user input escaped per RFC 4515) and then the user's groups
   with ``groups_filter``.
2. The found entry's DN is bound with the user's password on a separate,
   short-lived connection to the same server.

Presets (``implementation``) fill every filter and attribute left unset. For
Active Directory the account state (disabled, locked out, expired, must change
password) is also checked in Python and the reason logged, so a refusal is
explained in the log while the user only sees "wrong credentials".

The directory being unreachable raises ``BackendUnavailable`` (the caller
denies); the outage is logged once, its end once, and the next call reconnects.
"""
from __future__ import annotations

import logging
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ldap3 import (
    AUTO_BIND_NONE,
    BASE,
    IP_V4_PREFERRED,
    NONE,
    SIMPLE,
    SUBTREE,
    SYNC,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import LDAPException
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars

from ..config import LdapConfig
from . import BackendUnavailable, UserDetails, acceptable_credentials

log = logging.getLogger("authportal.ldap")

T = TypeVar("T")

# --------------------------------------------------------------------------- presets

_AD_ACCOUNT_ENABLED = (
    "(!(userAccountControl:1.2.840.113556.1.4.803:=2))"
    "(!(pwdLastSet=0))"
    "(|(!(accountExpires=*))(accountExpires=0)(accountExpires>={date-time:microsoft-nt}))"
)

#: What each `implementation` fills in when the key is unset.
PRESETS: dict[str, dict[str, str]] = {
    "custom": {
        "username_attribute": "uid",
        "mail_attribute": "mail",
        "display_name_attribute": "displayName",
        "group_name_attribute": "cn",
        "users_filter": "(&({username_attribute}={input})(objectClass=person))",
        "groups_filter": "(|(member={dn})(uniqueMember={dn}))",
    },
    "openldap": {
        "username_attribute": "uid",
        "mail_attribute": "mail",
        "display_name_attribute": "displayName",
        "group_name_attribute": "cn",
        "users_filter": "(&({username_attribute}={input})(objectClass=inetOrgPerson))",
        "groups_filter": (
            "(|(&(member={dn})(objectClass=groupOfNames))"
            "(&(uniqueMember={dn})(objectClass=groupOfUniqueNames)))"
        ),
    },
    "activedirectory": {
        "username_attribute": "sAMAccountName",
        "mail_attribute": "mail",
        "display_name_attribute": "displayName",
        "group_name_attribute": "cn",
        # Login by sAMAccountName or userPrincipalName; normal user accounts only; enabled, not expired,
        # no pending password change.
        "users_filter": (
            "(&(|({username_attribute}={input})(userPrincipalName={input}))"
            "(sAMAccountType=805306368)" + _AD_ACCOUNT_ENABLED + ")"
        ),
        # LDAP_MATCHING_RULE_IN_CHAIN: every group the user is in, directly or through nested groups.
        "groups_filter": "(&(member:1.2.840.113556.1.4.1941:={dn})(objectClass=group))",
    },
    "freeipa": {
        "username_attribute": "uid",
        "mail_attribute": "mail",
        "display_name_attribute": "displayName",
        "group_name_attribute": "cn",
        "users_filter": (
            "(&({username_attribute}={input})(objectClass=person)(!(nsAccountLock=TRUE))"
            "(|(!(krbPrincipalExpiration=*))(krbPrincipalExpiration>={date-time:generalized})))"
        ),
        "groups_filter": "(&(member={dn})(objectClass=groupOfNames))",
        "additional_users_dn": "cn=users,cn=accounts",
        "additional_groups_dn": "cn=groups,cn=accounts",
    },
    "rfc2307bis": {
        "username_attribute": "uid",
        "mail_attribute": "mail",
        "display_name_attribute": "displayName",
        "group_name_attribute": "cn",
        "users_filter": "(&({username_attribute}={input})(|(objectClass=inetOrgPerson)(objectClass=posixAccount)))",
        "groups_filter": (
            "(&(|(member={dn})(uniqueMember={dn}))"
            "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup)))"
        ),
    },
}

#: AD only: finds the account whatever its state, to log why the users filter refused it.
_AD_IDENTITY_FILTER = "(&(|({username_attribute}={input})(userPrincipalName={input}))(sAMAccountType=805306368))"
_AD_STATE_ATTRIBUTES = ("userAccountControl", "msDS-User-Account-Control-Computed", "pwdLastSet", "accountExpires")

# userAccountControl / msDS-User-Account-Control-Computed bits
_UF_ACCOUNTDISABLE = 0x2
_UF_LOCKOUT = 0x10
_UF_PASSWORD_EXPIRED = 0x800000
_AD_NEVER = 0x7FFFFFFFFFFFFFFF
#: AD bind errors: the `data XXX` code in the diagnostic message.
_AD_BIND_REASONS = {
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
_AD_DATA_RE = re.compile(r"\bdata ([0-9a-f]{3})\b", re.IGNORECASE)

# --------------------------------------------------------------------------- filters

_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*(?::[A-Za-z0-9_\-]+)?)\}")
_ATTRIBUTE_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9\-]*|\d+(?:\.\d+)+)$")
_ATTRIBUTE_PLACEHOLDERS = ("username_attribute", "mail_attribute", "display_name_attribute", "group_name_attribute")
_DATE_PLACEHOLDERS = ("date-time:microsoft-nt", "date-time:generalized", "date-time:unix")
#: Placeholders whose value comes from the user or the directory: always escaped (RFC 4515).
_ESCAPED_PLACEHOLDERS = ("input", "dn", "username")
USERS_FILTER_PLACEHOLDERS = frozenset(("input", *_ATTRIBUTE_PLACEHOLDERS, *_DATE_PLACEHOLDERS))
GROUPS_FILTER_PLACEHOLDERS = frozenset(("input", "dn", "username", *_ATTRIBUTE_PLACEHOLDERS, *_DATE_PLACEHOLDERS))

_NT_EPOCH_OFFSET = 11644473600  # seconds from 1601-01-01 to 1970-01-01


def placeholders(template: str) -> set[str]:
    return set(_PLACEHOLDER_RE.findall(template))


def expand_filter(template: str, attributes: Mapping[str, str], now: float | None = None, **values: str) -> str:
    """Fill a filter template in one pass (a value can never introduce another placeholder).

    `input`, `dn` and `username` are escaped with RFC 4515 rules (``*`` → ``\\2a``,
    ``(`` → ``\\28``, ``)`` → ``\\29``, ``\\`` → ``\\5c``, NUL → ``\\00``); attribute
    names come from the configuration and are inserted as they are; the
    ``{date-time:…}`` placeholders give the current time as AD file time
    (``microsoft-nt``), LDAP generalized time or Unix seconds.
    """
    moment = time.time() if now is None else now

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in _ESCAPED_PLACEHOLDERS:
            if name not in values:
                raise ValueError(f"placeholder {{{name}}} has no value here")
            return escape_filter_chars(values[name])
        if name in attributes:
            return attributes[name]
        if name == "date-time:microsoft-nt":
            return str(int((moment + _NT_EPOCH_OFFSET) * 10_000_000))
        if name == "date-time:generalized":
            return datetime.fromtimestamp(moment, UTC).strftime("%Y%m%d%H%M%SZ")
        if name == "date-time:unix":
            return str(int(moment))
        raise ValueError(f"unknown placeholder {{{name}}}")

    return _PLACEHOLDER_RE.sub(replace, template)


def _check_filter(key: str, template: str, allowed: frozenset[str], attributes: Mapping[str, str]) -> None:
    unknown = placeholders(template) - allowed
    if unknown:
        names = ", ".join("{" + n + "}" for n in sorted(unknown))
        raise ValueError(f"authentication.ldap.{key}: unknown placeholder(s) {names}")
    if not (template.startswith("(") and template.endswith(")")) or template.count("(") != template.count(")"):
        raise ValueError(f"authentication.ldap.{key}: not an LDAP filter (unbalanced parentheses): {template!r}")
    sample = expand_filter(template, attributes, input="x", dn="cn=x", username="x")
    try:
        parse_filter(sample, None, True, False, None, False)
    except LDAPException as exc:
        raise ValueError(f"authentication.ldap.{key}: invalid LDAP filter {template!r}: {exc}") from None


# --------------------------------------------------------------------------- TLS


_TLS_VERSIONS = {
    "TLS1.0": ssl.TLSVersion.TLSv1,
    "TLS1.1": ssl.TLSVersion.TLSv1_1,
    "TLS1.2": ssl.TLSVersion.TLSv1_2,
    "TLS1.3": ssl.TLSVersion.TLSv1_3,
}


def build_ssl_context(config: LdapConfig) -> ssl.SSLContext:
    """A client context: certificate and host name verified unless `tls.skip_verify`."""
    tls = config.tls
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file or tls.key_file:
            if not tls.cert_file:
                raise ValueError("authentication.ldap.tls: key_file is set but cert_file is not")
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"authentication.ldap.tls: cannot load certificates: {exc}") from None
    minimum = _TLS_VERSIONS[tls.minimum_version]
    if minimum < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS < 1.2 at the default level
    context.minimum_version = minimum
    if tls.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _ContextTls(Tls):
    """ldap3's Tls with our SSLContext: OpenSSL checks the host name / IP (ldap3's own check is bypassed)."""

    def __init__(self, context: ssl.SSLContext):
        super().__init__(validate=context.verify_mode)
        self.context = context

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:  # called by ldap3
        _no_delay(connection.socket)
        connection.socket = self.context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host if self.context.check_hostname else None,
        )


# --------------------------------------------------------------------------- provider


class _Broken(Exception):
    """The connection or the server failed: discard the connection."""

    def __init__(self, reason: str, timed_out: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


@dataclass
class _Endpoint:
    url: str
    host: str
    port: int
    use_ssl: bool
    tls: Tls
    connect_timeout: float
    failed_at: float = 0.0

    def server(self) -> Server:
        # A new Server per connection: ldap3 keeps per-connection state (current_address) on the Server object.
        # IP_V4_PREFERRED tries every address of the name (IPv4 first); the default mode tries only the first one.
        return Server(self.host, port=self.port, use_ssl=self.use_ssl, tls=self.tls, get_info=NONE,
                      connect_timeout=self.connect_timeout, mode=IP_V4_PREFERRED)


@dataclass
class _Pooled:
    conn: Connection
    endpoint: _Endpoint
    created: float
    last_used: float


@dataclass
class _Found:
    dn: str
    attributes: dict[str, list[Any]]
    endpoint: _Endpoint
    groups: tuple[str, ...]


_TIMEOUT_WORDS = ("timed out", "timeout")


class LdapUserProvider:
    """Search-then-bind authentication against OpenLDAP, Active Directory and the like.

    Thread-safe: a bounded pool of service-account connections (each used by one
    thread at a time), user binds on their own short-lived connections.
    """

    #: A pooled connection idle longer than this is closed rather than reused (firewalls drop idle TCP).
    MAX_IDLE = 60.0
    #: Connections are recycled after this long, so the pool drifts back to the first URL after a failover.
    MAX_AGE = 600.0
    #: A URL that failed is tried after the others for this long.
    RETRY_FAILED_AFTER = 30.0

    def __init__(self, config: LdapConfig):
        self.config = config
        preset = PRESETS[config.implementation]
        self.implementation = config.implementation

        def pick(key: str) -> str | None:
            value = getattr(config, key)
            return value if value is not None else preset.get(key)

        self.username_attribute = pick("username_attribute")
        self.mail_attribute = pick("mail_attribute")
        self.display_name_attribute = pick("display_name_attribute")
        self.group_name_attribute = pick("group_name_attribute")
        self.attributes = {
            "username_attribute": self.username_attribute,
            "mail_attribute": self.mail_attribute,
            "display_name_attribute": self.display_name_attribute,
            "group_name_attribute": self.group_name_attribute,
        }
        for key, value in self.attributes.items():
            if not value or not _ATTRIBUTE_RE.match(value):
                raise ValueError(f"authentication.ldap.{key}: not an LDAP attribute name: {value!r}")
        self.users_filter = pick("users_filter")
        self.groups_filter = pick("groups_filter")
        _check_filter("users_filter", self.users_filter, USERS_FILTER_PLACEHOLDERS, self.attributes)
        _check_filter("groups_filter", self.groups_filter, GROUPS_FILTER_PLACEHOLDERS, self.attributes)
        if "input" not in placeholders(self.users_filter):
            raise ValueError("authentication.ldap.users_filter: must contain {input}")
        if not placeholders(self.groups_filter) & {"dn", "username", "input"}:
            raise ValueError("authentication.ldap.groups_filter: must contain {dn}, {username} or {input}")
        self.users_base = _join_dn(pick("additional_users_dn"), config.base_dn)
        self.groups_base = _join_dn(pick("additional_groups_dn"), config.base_dn)
        self.is_ad = config.implementation == "activedirectory"
        self.user_attributes = [self.username_attribute, self.mail_attribute, self.display_name_attribute]
        if self.is_ad:
            self.user_attributes += list(_AD_STATE_ATTRIBUTES)

        self.timeout = config.timeout
        # ldap3 packs the receive timeout into SO_RCVTIMEO as an integer
        self._receive_timeout = max(1, math.ceil(config.timeout))
        self._service_user = config.user
        self._service_password = config.password.get_secret_value() if config.password is not None else None
        tls = _ContextTls(build_ssl_context(config))
        self._endpoints = [self._endpoint(url, tls) for url in config.url]

        self._idle: list[_Pooled] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.pool_size)
        self._closed = False
        self._down_since: float | None = None
        self._down_reason: str | None = None

    def _endpoint(self, url: str, tls: Tls) -> _Endpoint:
        parts = urlsplit(url)
        use_ssl = parts.scheme == "ldaps"
        host = parts.hostname
        if not host:
            raise ValueError(f"authentication.ldap.url: no host in {url!r}")
        try:
            port = parts.port or (636 if use_ssl else 389)
        except ValueError:
            raise ValueError(f"authentication.ldap.url: bad port in {url!r}") from None
        return _Endpoint(url=f"{parts.scheme}://{parts.netloc}", host=host, port=port, use_ssl=use_ssl, tls=tls,
                         connect_timeout=self.timeout)

    # ------------------------------------------------------------------ the protocol
    def check_password(self, username: str, password: str) -> UserDetails | None:
        if not acceptable_credentials(username, password):
            log.info("LDAP login refused before any bind: unacceptable username or password (empty, too long "
                     "or control characters)")
            return None
        found = self._service(lambda conn, endpoint: self._find(conn, endpoint, username, "login"))
        if found is None:
            return None
        if not self._bind_user(found, username, password):
            return None
        return self._details(found)

    def get_details(self, username: str) -> UserDetails | None:
        if not username or len(username) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in username):
            return None
        found = self._service(lambda conn, endpoint: self._find(conn, endpoint, username, "refresh", exact=True))
        return None if found is None else self._details(found)

    def health(self) -> str | None:
        def probe(conn: Connection, endpoint: _Endpoint) -> None:
            self._search(conn, self.config.base_dn, "(objectClass=*)", ["1.1"], scope=BASE, size_limit=1,
                         not_found_ok=False)

        try:
            self._service(probe)
        except BackendUnavailable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for pooled in idle:
            _quietly_unbind(pooled.conn)

    # ------------------------------------------------------------------ search
    def _find(self, conn: Connection, endpoint: _Endpoint, username: str, purpose: str,
              exact: bool = False) -> _Found | None:
        filter_ = expand_filter(self.users_filter, self.attributes, input=username)
        entries = self._search(conn, self.users_base, filter_, self.user_attributes, size_limit=2)
        if not entries:
            if self.is_ad:
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
        found_name = _first(attributes, self.username_attribute)
        if not found_name:
            log.warning("LDAP %s refused for %r: entry %s has no %s attribute", purpose, username, dn,
                        self.username_attribute)
            return None
        if exact and found_name.casefold() != username.casefold():
            log.info("LDAP %s: %r matched %r, not the same user", purpose, username, found_name)
            return None
        if self.is_ad:
            problem = _ad_account_problem(attributes)
            if problem:
                log.warning("LDAP %s refused for %r: %s", purpose, found_name, problem)
                return None
        groups = self._groups(conn, dn, found_name, username)
        return _Found(dn=dn, attributes=attributes, endpoint=endpoint, groups=groups)

    def _explain_ad_refusal(self, conn: Connection, username: str, purpose: str) -> None:
        """The AD users filter leaves out disabled/expired accounts: say why, for the log only."""
        filter_ = expand_filter(_AD_IDENTITY_FILTER, self.attributes, input=username)
        entries = self._search(conn, self.users_base, filter_, self.user_attributes, size_limit=2)
        problem = _ad_account_problem(entries[0][1]) if len(entries) == 1 else None
        if problem:
            name = _first(entries[0][1], self.username_attribute) or username
            log.warning("LDAP %s refused for %r: %s", purpose, name, problem)
        else:
            log.info("LDAP %s: no user matches %r", purpose, username)

    def _groups(self, conn: Connection, dn: str, found_name: str, input_: str) -> tuple[str, ...]:
        filter_ = expand_filter(self.groups_filter, self.attributes, input=input_, dn=dn, username=found_name)
        names: set[str] = set()
        cookie: bytes | None = None
        while True:
            entries, cookie = self._search_page(conn, self.groups_base, filter_, [self.group_name_attribute], cookie)
            for _, attributes in entries:
                name = _first(attributes, self.group_name_attribute)
                if name:
                    names.add(name)
            if not cookie:
                break
        return tuple(sorted(names, key=str.casefold))

    def _search(self, conn: Connection, base: str, filter_: str, attributes: list[str], scope: str = SUBTREE,
                size_limit: int = 0, not_found_ok: bool = True) -> list[tuple[str, dict[str, list[Any]]]]:
        try:
            conn.search(base, filter_, scope, attributes=attributes, size_limit=size_limit,
                        time_limit=self._receive_timeout)
        except LDAPException as exc:
            raise _Broken(_describe(exc), timed_out=_is_timeout(exc)) from None
        except OSError as exc:
            raise _Broken(str(exc), timed_out=isinstance(exc, socket.timeout)) from None
        code = conn.result.get("result", 0) if conn.result else 0
        if code in (0, 4):  # success, sizeLimitExceeded (more entries than asked for: the caller sees 2)
            pass
        elif code == 32:  # noSuchObject: the search base does not exist
            if not not_found_ok:
                raise _Broken(f"base DN {base!r} does not exist (noSuchObject)")
            log.warning("LDAP search base %r does not exist (check base_dn / additional_*_dn)", base)
        else:
            raise _Broken(f"search failed: {conn.result.get('description')} {conn.result.get('message', '')}".strip())
        return [
            (entry.get("dn", ""), dict(entry.get("attributes") or {}))
            for entry in (conn.response or [])
            if entry.get("type") == "searchResEntry"
        ]

    def _search_page(self, conn: Connection, base: str, filter_: str, attributes: list[str],
                     cookie: bytes | None) -> tuple[list[tuple[str, dict[str, list[Any]]]], bytes | None]:
        try:
            conn.search(base, filter_, SUBTREE, attributes=attributes, time_limit=self._receive_timeout,
                        paged_size=500, paged_cookie=cookie)
        except LDAPException as exc:
            raise _Broken(_describe(exc), timed_out=_is_timeout(exc)) from None
        except OSError as exc:
            raise _Broken(str(exc), timed_out=isinstance(exc, socket.timeout)) from None
        code = conn.result.get("result", 0) if conn.result else 0
        if code == 32:
            log.warning("LDAP groups search base %r does not exist (check base_dn / additional_groups_dn)", base)
            return [], None
        if code == 4:
            log.warning("LDAP groups search hit the server's size limit: some groups may be missing")
        elif code != 0:
            raise _Broken(f"groups search failed: {conn.result.get('description')} "
                          f"{conn.result.get('message', '')}".strip())
        entries = [
            (entry.get("dn", ""), dict(entry.get("attributes") or {}))
            for entry in (conn.response or [])
            if entry.get("type") == "searchResEntry"
        ]
        try:
            next_cookie = conn.result["controls"]["1.2.840.113556.1.4.319"]["value"]["cookie"]
        except (KeyError, TypeError):
            next_cookie = None
        return entries, next_cookie or None

    def _details(self, found: _Found) -> UserDetails:
        username = _first(found.attributes, self.username_attribute) or ""
        return UserDetails(
            username=username,
            display_name=_first(found.attributes, self.display_name_attribute) or username,
            email=_first(found.attributes, self.mail_attribute) or "",
            groups=found.groups,
            credential_stamp=_first(found.attributes, "pwdLastSet") or "",  # AD: set anew by every password change
        )

    # ------------------------------------------------------------------ user bind
    def _bind_user(self, found: _Found, username: str, password: str) -> bool:
        """Bind as the found DN on a fresh connection: True on success, False for a refused password."""
        if not password:  # acceptable_credentials already refused it; never send an unauthenticated bind
            return False
        endpoints = [found.endpoint] + [e for e in self._ordered_endpoints() if e is not found.endpoint]
        failures: list[str] = []
        for endpoint in endpoints:
            conn = Connection(endpoint.server(), user=found.dn, password=password, authentication=SIMPLE,
                              client_strategy=SYNC, auto_bind=AUTO_BIND_NONE, raise_exceptions=False, read_only=True,
                              receive_timeout=self._receive_timeout, auto_referrals=False, check_names=False)
            try:
                self._open(conn)
                ok = conn.bind(read_server_info=False)
                result = dict(conn.result or {})
            except _Broken as exc:
                failures.append(f"{endpoint.url}: {exc.reason}")
                self._mark_failed(endpoint)
                continue
            except (LDAPException, OSError) as exc:
                failures.append(f"{endpoint.url}: {_describe(exc)}")
                self._mark_failed(endpoint)
                continue
            finally:
                _quietly_unbind(conn)
            if ok:
                return True
            code = result.get("result")
            message = result.get("message") or ""
            if code == 49:  # invalidCredentials
                reason = _ad_bind_reason(message)
                if reason and reason != "wrong password":
                    log.warning("LDAP login refused for %r: %s", username, reason)
                else:
                    log.info("LDAP login failed for %r: invalid credentials", username)
                return False
            if code in (48, 50, 53):  # inappropriateAuthentication, insufficientAccessRights, unwillingToPerform
                log.warning("LDAP login refused for %r: %s %s", username, result.get("description"), message)
                return False
            if code == 8:  # strongerAuthRequired
                reason = "the directory requires TLS for simple binds (use ldaps:// or start_tls)"
            else:
                reason = f"user bind failed: {result.get('description')} {message}".strip()
            failures.append(f"{endpoint.url}: {reason}")
            break
        self._mark_down("; ".join(failures))
        raise BackendUnavailable(f"LDAP directory unavailable: {'; '.join(failures)}")

    # ------------------------------------------------------------------ connections
    def _open(self, conn: Connection) -> None:
        try:
            conn.open(read_server_info=False)
            _no_delay(conn.socket)
            if self.config.start_tls:
                conn.start_tls(read_server_info=False)
        except LDAPException as exc:
            raise _Broken(_describe(exc), timed_out=_is_timeout(exc)) from None
        except (OSError, ssl.SSLError) as exc:
            raise _Broken(_describe(exc), timed_out=isinstance(exc, socket.timeout)) from None

    def _ordered_endpoints(self) -> list[_Endpoint]:
        now = time.monotonic()
        fresh = [e for e in self._endpoints if now - e.failed_at >= self.RETRY_FAILED_AFTER]
        failed = sorted((e for e in self._endpoints if e not in fresh), key=lambda e: e.failed_at)
        return fresh + failed

    def _mark_failed(self, endpoint: _Endpoint) -> None:
        endpoint.failed_at = time.monotonic()

    def _connect_service(self) -> _Pooled:
        failures = []
        for endpoint in self._ordered_endpoints():
            conn = Connection(endpoint.server(), user=self._service_user, password=self._service_password,
                              authentication=SIMPLE if self._service_user else None, client_strategy=SYNC,
                              auto_bind=AUTO_BIND_NONE, raise_exceptions=False, read_only=True,
                              receive_timeout=self._receive_timeout, auto_referrals=False, check_names=False,
                              return_empty_attributes=True)
            try:
                self._open(conn)
                if self._service_user:
                    try:
                        ok = conn.bind(read_server_info=False)
                    except LDAPException as exc:
                        raise _Broken(_describe(exc), timed_out=_is_timeout(exc)) from None
                    if not ok:
                        result = conn.result or {}
                        if result.get("result") == 8:
                            raise _Broken("the directory requires TLS for simple binds (use ldaps:// or start_tls)")
                        raise _Broken(f"service account bind as {self._service_user!r} failed: "
                                      f"{result.get('description')} {result.get('message', '')}".strip())
            except _Broken as exc:
                _quietly_unbind(conn)
                self._mark_failed(endpoint)
                failures.append(f"{endpoint.url}: {exc.reason}")
                continue
            now = time.monotonic()
            if endpoint.failed_at:
                endpoint.failed_at = 0.0
            return _Pooled(conn=conn, endpoint=endpoint, created=now, last_used=now)
        reason = "; ".join(failures)
        self._mark_down(reason)
        raise BackendUnavailable(f"LDAP directory unavailable: {reason}")

    def _take_idle(self) -> _Pooled | None:
        now = time.monotonic()
        stale = []
        taken = None
        with self._lock:
            while self._idle:
                pooled = self._idle.pop()
                if (pooled.conn.closed or now - pooled.last_used > self.MAX_IDLE
                        or now - pooled.created > self.MAX_AGE):
                    stale.append(pooled)
                    continue
                taken = pooled
                break
        for pooled in stale:
            _quietly_unbind(pooled.conn)
        return taken

    def _give_back(self, pooled: _Pooled) -> None:
        pooled.last_used = time.monotonic()
        with self._lock:
            if not self._closed:
                self._idle.append(pooled)
                return
        _quietly_unbind(pooled.conn)

    def _service(self, operation: Callable[[Connection, _Endpoint], T]) -> T:
        """Run `operation` on a pooled service connection; retry once on a fresh one if a reused one broke."""
        if self._closed:
            raise BackendUnavailable("LDAP provider is closed")
        if not self._slots.acquire(timeout=self.timeout):
            raise BackendUnavailable(
                f"LDAP directory unavailable: all {self.config.pool_size} connections busy for {self.timeout:g}s"
            )
        try:
            pooled = self._take_idle()
            reused = pooled is not None
            while True:
                if pooled is None:
                    pooled = self._connect_service()
                try:
                    result = operation(pooled.conn, pooled.endpoint)
                except _Broken as exc:
                    endpoint = pooled.endpoint
                    _quietly_unbind(pooled.conn)
                    self._mark_failed(endpoint)
                    pooled = None
                    if reused and not exc.timed_out:
                        reused = False  # a stale pooled connection: try once more on a new one
                        continue
                    reason = f"{endpoint.url}: {exc.reason}"
                    self._mark_down(reason)
                    raise BackendUnavailable(f"LDAP directory unavailable: {reason}") from None
                except BaseException:
                    _quietly_unbind(pooled.conn)
                    raise
                self._give_back(pooled)
                self._mark_up()
                return result
        finally:
            self._slots.release()

    # ------------------------------------------------------------------ outage bookkeeping
    def _mark_down(self, reason: str) -> None:
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            self._down_reason = reason
        if first:
            log.warning("LDAP directory unavailable: %s — logins are denied until it answers again", reason)
        else:
            log.debug("LDAP directory still unavailable: %s", reason)

    def _mark_up(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since, self._down_reason = self._down_since, None, None
        if since is not None:
            log.warning("LDAP directory reachable again after %.1fs", time.monotonic() - since)


# --------------------------------------------------------------------------- helpers


def _join_dn(prefix: str | None, base: str) -> str:
    return f"{prefix},{base}" if prefix else base


def _first(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if value is None:
        # attribute names are case-insensitive
        for key, candidate in attributes.items():
            if key.lower() == name.lower():
                value = candidate
                break
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return None
    return str(value)


def _int_attribute(attributes: Mapping[str, Any], name: str) -> int | None:
    value = _first(attributes, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _ad_account_problem(attributes: Mapping[str, Any], now: float | None = None) -> str | None:
    """Why an AD account may not log in (None when it may)."""
    moment = time.time() if now is None else now
    uac = _int_attribute(attributes, "userAccountControl") or 0
    computed = _int_attribute(attributes, "msDS-User-Account-Control-Computed") or 0
    if uac & _UF_ACCOUNTDISABLE:
        return "account disabled"
    if computed & _UF_LOCKOUT:
        return "account locked out"
    expires = _int_attribute(attributes, "accountExpires")
    if expires and expires != _AD_NEVER and expires <= int((moment + _NT_EPOCH_OFFSET) * 10_000_000):
        return "account expired"
    if _int_attribute(attributes, "pwdLastSet") == 0:
        return "password must be changed at next logon"
    if computed & _UF_PASSWORD_EXPIRED:
        return "password expired"
    return None


def _ad_bind_reason(message: str) -> str | None:
    match = _AD_DATA_RE.search(message or "")
    return _AD_BIND_REASONS.get(match.group(1).lower()) if match else None


def _is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in _TIMEOUT_WORDS)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ssl.SSLCertVerificationError):
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl.c", 1)[0].strip(" :")
        return f"TLS certificate verification failed ({detail or text})"
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if _is_timeout(exc):
        return "timed out"
    for prefix in ("socket connection error while opening: ", "socket ssl wrapping error: ", "wrap socket error: "):
        text = text.replace(prefix, "")
    return text or type(exc).__name__


def _no_delay(sock: Any) -> None:
    """Small request/response exchanges: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to TLS logins."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def _quietly_unbind(conn: Connection) -> None:
    try:
        if not conn.closed:
            conn.unbind()
    except Exception:
        try:
            conn.strategy.close()
        except Exception as exc:
            log.debug("closing an LDAP connection: %s", exc)
