"""The account page (`/` when signed in): who you are and what you own, one section each.

A section is a template (`templates/account_*.html`) plus the facts it shows,
gathered by one function here. A later account feature joins by adding its `Section` to `SECTIONS`; the page itself
does not change. A section whose facts cannot be read right now (storage down)
says so instead of failing the whole page.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import make_response, render_template
from werkzeug.wrappers import Response

from ..identity import TWO_FACTOR
from ..portal import Portal
from ..security_keys import SecurityKey
from ..sessions import SessionInfo, SessionStoreUnavailable, session_handle
from ..storage import StorageUnavailable
from . import notices
from .flow import has_second_factor
from .shared import current_portal, session_id

Facts = dict[str, Any]


@dataclass(frozen=True)
class Section:
    template: str
    facts: Callable[[Portal, dict[str, Any]], Facts]


def _identity(portal: Portal, session: dict[str, Any]) -> Facts:
    return {"user": session["user"], "name": session.get("name"), "email": session.get("email"),
            "groups": session.get("groups") or []}


def _second_factors(portal: Portal, session: dict[str, Any]) -> Facts:
    try:
        has_totp: bool | None = portal.totp.has_totp(session["user"])
    except StorageUnavailable:
        has_totp = None
    return {"has_totp": has_totp, "allow_enrollment": portal.config.totp.allow_enrollment}


def _security_keys(portal: Portal, session: dict[str, Any]) -> Facts:
    unavailable = portal.config.webauthn_unavailable
    if unavailable:
        return {"unavailable": None if not portal.config.webauthn.enable else unavailable, "registered": None,
                "hidden": not portal.config.webauthn.enable}
    try:
        keys: list[SecurityKey] | None = portal.keys.keys_of(session["user"])
        # Removing a factor needs the factors: a password alone (a stolen one) must not take one away.
        can_remove = session["level"] >= TWO_FACTOR or not has_second_factor(session)
    except StorageUnavailable:
        keys, can_remove = None, False
    return {"unavailable": None, "registered": keys, "can_remove": can_remove, "hidden": False}


def _password(portal: Portal, session: dict[str, Any]) -> Facts:
    return {"change": portal.config.password_change.enable}


def _api_tokens(portal: Portal, session: dict[str, Any]) -> Facts:
    try:
        now = time.time()
        active: int | None = sum(1 for t in portal.tokens.list(session["user"]) if t.state(now) == "active")
    except StorageUnavailable:
        active = None
    return {"active": active}


def _sessions(portal: Portal, session: dict[str, Any]) -> Facts:
    sid = session_id()
    try:
        sessions: list[SessionInfo] | None = portal.sessions.sessions(session["user"])
    except SessionStoreUnavailable:
        sessions = None
    return {"sessions": sessions, "current": session_handle(sid) if sid else None}


def _administration(portal: Portal, session: dict[str, Any]) -> Facts:
    administration = portal.config.administration
    return {"administrator": bool(administration.subject)
            and administration.admits(session["user"], session.get("groups") or [])}


SECTIONS: tuple[Section, ...] = (
    Section("account_identity.html", _identity),
    Section("account_password.html", _password),
    Section("account_second_factors.html", _second_factors),
    Section("account_security_keys.html", _security_keys),
    Section("account_sessions.html", _sessions),
    Section("account_api_tokens.html", _api_tokens),
    Section("account_administration.html", _administration),
)


def account_page(session: dict[str, Any]) -> Response:
    portal = current_portal()
    sections = [(section.template, section.facts(portal, session)) for section in SECTIONS]
    return make_response(render_template("account.html", session=session, sections=sections, notice=notices.take()))
