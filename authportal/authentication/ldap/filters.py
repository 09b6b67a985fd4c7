"""Filter templates: the placeholders, their expansion (RFC 4515 escaping), and the checks config.py runs."""
from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from ldap3.core.exceptions import LDAPException
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars

_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*(?::[A-Za-z0-9_\-]+)?)\}")
#: The configured attribute names a filter may name, as `{username_attribute}` etc.
ATTRIBUTE_KEYS = ("username_attribute", "mail_attribute", "display_name_attribute", "group_name_attribute")
_DATE_PLACEHOLDERS = ("date-time:microsoft-nt", "date-time:generalized", "date-time:unix")
#: Placeholders whose value comes from the user or the directory: always escaped (RFC 4515).
_ESCAPED_PLACEHOLDERS = ("input", "dn", "username")
USERS_FILTER_PLACEHOLDERS = frozenset(("input", *ATTRIBUTE_KEYS, *_DATE_PLACEHOLDERS))
GROUPS_FILTER_PLACEHOLDERS = frozenset(("input", "dn", "username", *ATTRIBUTE_KEYS, *_DATE_PLACEHOLDERS))

_NT_EPOCH_OFFSET = 11644473600  # seconds from 1601-01-01 to 1970-01-01


def microsoft_nt_time(moment: float) -> int:
    """AD's file time (100 ns since 1601), the unit of accountExpires and pwdLastSet."""
    return int((moment + _NT_EPOCH_OFFSET) * 10_000_000)


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
            return str(escape_filter_chars(values[name]))
        if name in attributes:
            return attributes[name]
        if name == "date-time:microsoft-nt":
            return str(microsoft_nt_time(moment))
        if name == "date-time:generalized":
            return datetime.fromtimestamp(moment, UTC).strftime("%Y%m%d%H%M%SZ")
        if name == "date-time:unix":
            return str(int(moment))
        raise ValueError(f"unknown placeholder {{{name}}}")

    return _PLACEHOLDER_RE.sub(replace, template)


def check_filter(template: str, attributes: Mapping[str, str], allowed: frozenset[str],
                 needs_one_of: tuple[str, ...]) -> None:
    """Raise ValueError (without the key: the caller's validator has it) unless `template` is a usable filter.

    It must name one of `needs_one_of` (a users filter without `{input}` would match anyone) and nothing
    outside `allowed`, and parse as an LDAP filter once expanded with sample values.
    """
    unknown = placeholders(template) - allowed
    if unknown:
        raise ValueError(f"unknown placeholder(s) {', '.join(f'{{{name}}}' for name in sorted(unknown))}")
    if not placeholders(template) & set(needs_one_of):
        names = [f"{{{name}}}" for name in needs_one_of]
        raise ValueError(f"must contain {names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' or ' + names[-1]}")
    if not (template.startswith("(") and template.endswith(")")) or template.count("(") != template.count(")"):
        raise ValueError(f"not an LDAP filter (unbalanced parentheses): {template!r}")
    sample = expand_filter(template, attributes, input="x", dn="cn=x", username="x")
    try:
        parse_filter(sample, None, True, False, None, False)
    except LDAPException as exc:
        raise ValueError(f"invalid LDAP filter {template!r}: {exc}") from None


_ATTRIBUTE_NAME_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9\-]*|\d+(?:\.\d+)+)$")


def check_attribute_name(name: str) -> str:
    """An attribute name (RFC 4512 descr or OID): it is put into filters as it is, so nothing else may pass."""
    if not _ATTRIBUTE_NAME_RE.match(name):
        raise ValueError(f"not an LDAP attribute name: {name!r}")
    return name
