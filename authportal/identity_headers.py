"""The headers a verify answer carries for the application: `identity.headers` and a rule's own `headers`.

Templates say `{username}`, `{groups}`, `{name}`, `{email}` and `{attributes.NAME}` (extra LDAP attributes, or a
users file entry's `attributes`); a rule's header may instead pick a value by group (Grafana's role header).
A value that would hold a line break or NUL (directory data can) is not sent at all: no header injection,
and no half value. Non-ASCII text travels as UTF-8 bytes, as WSGI carries them.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .config import DEFAULT_IDENTITY_HEADERS, FromGroups, HeaderValue
from .logs import RateLimitedLog

log = logging.getLogger("authportal.verify")
_refused = RateLimitedLog(log, interval=60.0)

Headers = tuple[tuple[str, str], ...]


class _Values(dict[str, Any]):
    """The fields a template can name; `{attributes.NAME}` reads the user's attributes ("" when absent)."""

    def __missing__(self, key: str) -> str:
        return ""


class _Attributes:
    def __init__(self, attributes: Mapping[str, str]):
        self._attributes = attributes

    def __getattr__(self, name: str) -> str:
        return self._attributes.get(name, "")


def _values(user: str, groups: Iterable[str], name: str, email: str, attributes: Mapping[str, str]) -> _Values:
    return _Values(username=user, groups=",".join(groups), name=name, email=email, attributes=_Attributes(attributes))


def _header_value(header: str, text: str, user: str) -> str | None:
    """The value as WSGI carries it, or None (not sent) when it holds a line break or NUL."""
    if any(c in text for c in "\r\n\x00"):
        _refused.warning(header, "header %s not sent for %s: its value holds a line break or NUL", header, user)
        return None
    return text.encode("utf-8").decode("latin-1")


def _render(spec: HeaderValue, values: _Values, groups: frozenset[str]) -> str | None:
    if isinstance(spec, FromGroups):
        chosen = next((value for group, value in spec.from_groups.items() if group in groups), spec.default)
        return None if chosen is None else chosen.format_map(values)
    return spec.format_map(values)


class HeaderTemplates:
    """`identity.headers`, and rendering them (and a rule's additions) for one user."""

    def __init__(self, templates: Mapping[str, str] | None = None):
        self.templates: dict[str, HeaderValue] = dict(templates or DEFAULT_IDENTITY_HEADERS)

    def render(self, user: str, groups: Iterable[str], name: str, email: str, attributes: Mapping[str, str],
               rule: Mapping[str, HeaderValue] | None = None) -> Headers:
        """The headers for this user; `rule`'s headers are added, or replace one of the same name."""
        group_list = list(groups)
        values = _values(user, group_list, name, email, attributes)
        specs = dict(self.templates)
        if rule:
            lowered = {header.lower() for header in rule}
            specs = {header: spec for header, spec in specs.items() if header.lower() not in lowered} | dict(rule)
        rendered = []
        for header, spec in specs.items():
            text = _render(spec, values, frozenset(group_list))
            value = None if text is None else _header_value(header, text, user)
            if value is not None:
                rendered.append((header, value))
        return tuple(rendered)


DEFAULT_TEMPLATES = HeaderTemplates()
