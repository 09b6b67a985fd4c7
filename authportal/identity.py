"""Who is behind a request, as the verify path needs it: name, groups, factor level and the headers to pass."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .authentication import UserDetails
from .config import HeaderValue
from .identity_headers import DEFAULT_TEMPLATES, HeaderTemplates

ONE_FACTOR = 1
TWO_FACTOR = 2


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What a limited API token may ask for: these methods (empty: any) on paths one of `resources` finds."""

    methods: frozenset[str]
    resources: tuple[re.Pattern[str], ...]

    def allow(self, method: str, target: str) -> bool:
        """`target`: the normalised path plus ?query, as the rules see it."""
        if self.methods and method not in self.methods:
            return False
        return not self.resources or any(pattern.search(target) for pattern in self.resources)


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    groups: frozenset[str]
    level: int
    #: The headers of `identity.headers` for this user, ready for a verify answer.
    headers: tuple[tuple[str, str], ...]
    name: str = ""
    email: str = ""
    #: Extra LDAP attributes or users-file `attributes`, as (name, value) pairs (for a rule's header templates).
    attributes: tuple[tuple[str, str], ...] = ()
    #: A limited API token's limits (None: only the rules limit it).
    limits: RequestLimits | None = None
    #: When this session last proved the password and the second factor (0: never; machine clients: unused).
    authenticated_at: float = 0.0
    second_factor_at: float = 0.0

    def fresh(self, max_age: float, two_factor: bool, now: float) -> bool:
        """Whether a step-up rule (`max_age`) is met: the password, and for two_factor the second factor, recent."""
        return now - self.authenticated_at <= max_age and (not two_factor or now - self.second_factor_at <= max_age)

    def headers_with(self, rule: Mapping[str, HeaderValue], templates: HeaderTemplates) -> tuple[tuple[str, str], ...]:
        """The headers for a rule that adds (or overrides) some of its own."""
        return templates.render(self.user, sorted(self.groups), self.name, self.email, dict(self.attributes), rule)

    @classmethod
    def build(cls, user: str, groups: list[str] | tuple[str, ...], name: str, email: str, level: int,
              attributes: Mapping[str, str] | None = None,
              templates: HeaderTemplates = DEFAULT_TEMPLATES) -> Identity:
        attributes = attributes or {}
        headers = templates.render(user, groups, name, email, attributes)
        return cls(user, frozenset(groups), level, headers, name, email, tuple(sorted(attributes.items())))

    @classmethod
    def from_details(cls, details: UserDetails, level: int = ONE_FACTOR,
                     templates: HeaderTemplates = DEFAULT_TEMPLATES) -> Identity:
        return cls.build(details.username, details.groups, details.display_name, details.email, level,
                         dict(details.attributes), templates)

    @classmethod
    def from_session(cls, data: dict[str, Any], templates: HeaderTemplates = DEFAULT_TEMPLATES) -> Identity:
        built = cls.build(data["user"], data["groups"], data["name"], data["email"], data["level"],
                          data.get("attributes"), templates)
        return dataclasses.replace(built, authenticated_at=data.get("authenticated_at", 0.0),
                                   second_factor_at=data.get("second_factor_at", 0.0))


def session_fields(details: UserDetails) -> dict[str, Any]:
    """The user part of a session record (JSON-serialisable)."""
    return {"user": details.username, "groups": list(details.groups), "name": details.display_name,
            "email": details.email, "stamp": details.credential_stamp, "attributes": dict(details.attributes)}
