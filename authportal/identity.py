"""Who is behind a request, as the verify path needs it: name, groups, factor level and the headers to pass."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from .authentication import UserDetails

ONE_FACTOR = 1
TWO_FACTOR = 2


def header_value(text: str) -> str:
    """A WSGI-safe header value: UTF-8 bytes carried as latin-1, no CR/LF (no header injection)."""
    text = text.replace("\r", " ").replace("\n", " ")
    return text.encode("utf-8").decode("latin-1")


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
    headers: tuple[tuple[str, str], ...]
    #: A limited API token's limits (None: only the rules limit it).
    limits: RequestLimits | None = None
    #: When this session last proved the password and the second factor (0: never; machine clients: unused).
    authenticated_at: float = 0.0
    second_factor_at: float = 0.0

    def fresh(self, max_age: float, two_factor: bool, now: float) -> bool:
        """Whether a step-up rule (`max_age`) is met: the password, and for two_factor the second factor, recent."""
        return now - self.authenticated_at <= max_age and (not two_factor or now - self.second_factor_at <= max_age)

    @classmethod
    def build(cls, user: str, groups: list[str] | tuple[str, ...], name: str, email: str, level: int) -> Identity:
        headers = (
            ("Remote-User", header_value(user)),
            ("Remote-Groups", header_value(",".join(groups))),
            ("Remote-Name", header_value(name)),
            ("Remote-Email", header_value(email)),
        )
        return cls(user, frozenset(groups), level, headers)

    @classmethod
    def from_details(cls, details: UserDetails, level: int = ONE_FACTOR) -> Identity:
        return cls.build(details.username, details.groups, details.display_name, details.email, level)

    @classmethod
    def from_session(cls, data: dict[str, Any]) -> Identity:
        built = cls.build(data["user"], data["groups"], data["name"], data["email"], data["level"])
        return dataclasses.replace(built, authenticated_at=data.get("authenticated_at", 0.0),
                                   second_factor_at=data.get("second_factor_at", 0.0))


def session_fields(details: UserDetails) -> dict[str, Any]:
    """The user part of a session record (JSON-serialisable)."""
    return {"user": details.username, "groups": list(details.groups),
            "name": details.display_name, "email": details.email, "stamp": details.credential_stamp}
