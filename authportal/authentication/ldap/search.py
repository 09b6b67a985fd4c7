"""Reading the directory: a search for a few entries, a paged search for all of them, and attribute values.

A connection or server failure raises `Broken`, so the pool discards the connection; an answer the
directory gave (no such base, size limit) is handled here.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Literal

from ldap3 import SUBTREE, Connection
from ldap3.core.exceptions import LDAPException

from .pool import Broken, describe, is_timeout

log = logging.getLogger("authportal.ldap")

#: A search result: the DN and the attributes asked for (ldap3 gives lists of str, bytes or numbers).
Entry = tuple[str, dict[str, object]]
Scope = Literal["BASE", "LEVEL", "SUBTREE"]

_PAGED_RESULTS_CONTROL = "1.2.840.113556.1.4.319"


def search(conn: Connection, base: str, filter_: str, attributes: list[str], *, time_limit: int,
           scope: Scope = SUBTREE, size_limit: int = 0, missing_base_is_broken: bool = False) -> list[Entry]:
    """Entries matching `filter_`; with `size_limit` more matches than that come back as `size_limit` entries."""
    _run(conn, base, filter_, attributes, time_limit, scope=scope, size_limit=size_limit)
    code = _result_code(conn)
    if code in (0, 4):  # success, sizeLimitExceeded (more entries than asked for: the caller sees them)
        pass
    elif code == 32:  # noSuchObject: the search base does not exist
        if missing_base_is_broken:
            raise Broken(f"base DN {base!r} does not exist (noSuchObject)")
        log.warning("LDAP search base %r does not exist (check base_dn / additional_*_dn)", base)
    else:
        raise Broken(f"search failed: {_result_text(conn)}")
    return _entries(conn)


def search_all_pages(conn: Connection, base: str, filter_: str, attributes: list[str], *,
                     time_limit: int) -> list[Entry]:
    """Every entry matching `filter_`, 500 per page (AD answers at most 1000 per search)."""
    found: list[Entry] = []
    cookie: bytes | None = None
    while True:
        _run(conn, base, filter_, attributes, time_limit, paged_size=500, paged_cookie=cookie)
        code = _result_code(conn)
        if code == 32:
            log.warning("LDAP groups search base %r does not exist (check base_dn / additional_groups_dn)", base)
            return found
        if code == 4:
            log.warning("LDAP groups search hit the server's size limit: some groups may be missing")
        elif code != 0:
            raise Broken(f"groups search failed: {_result_text(conn)}")
        found += _entries(conn)
        try:
            cookie = conn.result["controls"][_PAGED_RESULTS_CONTROL]["value"]["cookie"] or None
        except (KeyError, TypeError):
            cookie = None
        if not cookie:
            return found


def first_value(attributes: Mapping[str, object], name: str) -> str | None:
    """The attribute's first value as text; attribute names are case-insensitive."""
    value = attributes.get(name)
    if value is None:
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


def int_value(attributes: Mapping[str, object], name: str) -> int | None:
    value = first_value(attributes, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _run(conn: Connection, base: str, filter_: str, attributes: list[str], time_limit: int, scope: Scope = SUBTREE,
         size_limit: int = 0, paged_size: int | None = None, paged_cookie: bytes | None = None) -> None:
    try:
        conn.search(base, filter_, scope, attributes=attributes, size_limit=size_limit, time_limit=time_limit,
                    paged_size=paged_size, paged_cookie=paged_cookie)
    except LDAPException as exc:
        raise Broken(describe(exc), timed_out=is_timeout(exc)) from None
    except OSError as exc:
        raise Broken(str(exc), timed_out=isinstance(exc, socket.timeout)) from None


def _result_code(conn: Connection) -> int:
    return int(conn.result.get("result", 0)) if conn.result else 0


def _result_text(conn: Connection) -> str:
    return f"{conn.result.get('description')} {conn.result.get('message', '')}".strip()


def _entries(conn: Connection) -> list[Entry]:
    return [
        (entry.get("dn", ""), dict(entry.get("attributes") or {}))
        for entry in (conn.response or [])
        if entry.get("type") == "searchResEntry"
    ]
