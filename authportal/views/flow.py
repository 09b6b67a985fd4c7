"""What the login and account views share: their messages, the target (`rd`) of a sign-in, the factor level
it needs, and raising a session to two factors once a second factor is proven (by a code or an enrollment)."""
from __future__ import annotations

from typing import Any

from flask import redirect, request, url_for
from werkzeug.wrappers import Response

from ..identity import ONE_FACTOR, TWO_FACTOR
from ..redirects import safe_redirect
from ..sessions import SessionStoreUnavailable
from .errors import error_page
from .shared import current_portal, session_id, set_session_cookie

BAD_CREDENTIALS = "Incorrect username or password."
BAD_CODE = "That code was already used or is wrong. Wait for the next code in your app and enter it."
UNAVAILABLE = "The login service is unavailable right now. Please try again in a moment."
BUSY = "Many people are signing in right now. Please try again in a second."



def target_url() -> str | None:
    """The validated `rd` of this request (query or form), or None."""
    config = current_portal().config
    rd = request.values.get("rd")
    return safe_redirect(rd, cookie_domain=config.session.domain, portal_url=config.portal_url,
                         allow_http=not config.session.cookie_secure)


def form_rd() -> str:
    """The `rd` to carry in a form's hidden field: the one received, when it is a safe target; else none."""
    return request.values.get("rd", "") if target_url() else ""


def required_level(url: str | None, session: dict[str, Any]) -> int:
    """The factor level the target needs for this user (ONE_FACTOR when no target)."""
    if url is None:
        return ONE_FACTOR
    portal = current_portal()
    policy = portal.rules.required_policy(url, "GET", portal.proxies.client_ip(request.environ),
                                          session["user"], frozenset(session["groups"]))
    return TWO_FACTOR if policy == "two_factor" else ONE_FACTOR


def promote_session(session: dict[str, Any], url: str | None) -> Response:
    """Raise a session to two factors under a new id (a privilege change gets a fresh id, too)."""
    portal = current_portal()
    old = session_id()
    data = {k: v for k, v in session.items() if k not in ("created", "last_seen", "expires", "remember")}
    data["level"] = TWO_FACTOR
    try:
        if old:
            portal.sessions.end(old)
        sid = portal.sessions.create(data, session["remember"])
    except SessionStoreUnavailable:
        return error_page(503, UNAVAILABLE)
    response = redirect(url or url_for("login.index"))
    set_session_cookie(response, sid, session["remember"])
    return response
