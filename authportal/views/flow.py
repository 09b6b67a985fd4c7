"""What the login, account and security-key views share: their messages, the target (`rd`) of a sign-in, the
factor level it needs, the fresh password check before a second factor is changed, and raising a session to
two factors once a second factor is proven (a code, a key or an enrollment)."""
from __future__ import annotations

import re
import time
from typing import Any

from flask import abort, make_response, redirect, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from ..authorization import Decision
from ..credentials import Busy
from ..identity import ONE_FACTOR, TWO_FACTOR
from ..redirects import safe_redirect
from ..security_keys import SecurityKey
from ..sessions import Origin, SessionStoreUnavailable
from .errors import error_page
from .shared import busy, current_cookie, current_portal, current_session, session_id, set_session_cookie

# Lazy: translated into the language of the request that shows them (str() or a template renders them).
BAD_CREDENTIALS = _l("Incorrect username or password.")
BAD_CODE = _l("That code was already used or is wrong. Wait for the next code in your app and enter it.")
UNAVAILABLE = _l("The login service is unavailable right now. Please try again in a moment.")
_METHOD = re.compile(r"[A-Z]{1,16}")
#: What a page behind the password check adds, as its reason says ("Add an authenticator app: …"). Not shown as
#: such (not translated): totp_setup_reason.html picks its whole translated sentence by this value.
ADDING = {"account.totp_setup": "an authenticator app", "keys.setup": "a security key"}
BUSY = _l("Many people are signing in right now. Please try again in a second.")



def target_url() -> str | None:
    """The validated `rd` of this request (query or form), or None: only under the domain of the cookie that
    this portal URL sets (with several cookie domains, a sign-in on one never sends the browser to another)."""
    return safe_target(request.values.get("rd"))


def safe_target(rd: str | None) -> str | None:
    """`rd` when this portal may send the browser there (see `target_url`), else None."""
    cookie = current_cookie()
    return safe_redirect(rd, cookie_domain=cookie.domain, portal_url=cookie.portal_url,
                         allow_http=not current_portal().config.session.cookie_secure)


def form_rd() -> str:
    """The `rd` to carry in a form's hidden field: the one received, when it is a safe target; else none."""
    return request.values.get("rd", "") if target_url() else ""


def requested_method() -> str:
    """The method of the request that sent the browser here (`rm`, set by the verify path for a POST, DELETE…:
    a step-up rule may be for one method only); GET when not said or not a method."""
    method = request.values.get("rm", "GET")
    return method if _METHOD.fullmatch(method) else "GET"


def requirement(url: str | None, session: dict[str, Any]) -> Decision | None:
    """What the rules ask of this user for the target (None when there is no target)."""
    if url is None:
        return None
    portal = current_portal()
    return portal.rules.required(url, requested_method(), portal.proxies.client_ip(request.environ),
                                 session["user"], frozenset(session["groups"]))


def required_level(url: str | None, session: dict[str, Any]) -> int:
    """The factor level the target needs for this user (ONE_FACTOR when no target)."""
    decision = requirement(url, session)
    return TWO_FACTOR if decision is not None and decision.policy == "two_factor" else ONE_FACTOR


def stale_factor(session: dict[str, Any], decision: Decision | None) -> str | None:
    """Which check a step-up rule (`max_age`) wants again: "password", "second_factor", or None."""
    if decision is None or decision.max_age is None:
        return None
    now = time.time()
    if now - session.get("authenticated_at", 0) > decision.max_age:
        return "password"
    if decision.policy == "two_factor" and now - session.get("second_factor_at", 0) > decision.max_age:
        return "second_factor"
    return None


def with_rd(endpoint: str, url: str | None) -> str:
    """`endpoint` with the target (and the method that asked for it, when not a GET) in its query."""
    method = requested_method()
    return url_for(endpoint, rd=url, rm=None if method == "GET" else method) if url else url_for(endpoint)


def next_step(session: dict[str, Any], url: str | None) -> Response:
    """Where a (partly) logged-in user goes: the code page, enrollment, "Confirm it's you" (a step-up rule),
    the target or the home page."""
    decision = requirement(url, session)
    if session["level"] < TWO_FACTOR:
        if has_second_factor(session):
            return redirect(with_rd("login.second_factor", url))
        if decision is not None and decision.policy == "two_factor":
            return redirect(with_rd("account.totp_setup", url))
    stale = stale_factor(session, decision)
    if stale == "password":
        return redirect(with_rd("login.confirm", url))
    if stale == "second_factor":
        return redirect(with_rd("login.second_factor", url) + "&fresh=1")
    return redirect(url or url_for("login.index"))


def has_second_factor(session: dict[str, Any]) -> bool:
    """Whether the session's user has a second factor to prove: an app, or a key other than the one they
    signed in with (a one-factor passkey sign-in)."""
    portal = current_portal()
    return portal.totp.has_totp(session["user"]) or bool(usable_keys(session))


def usable_keys(session: dict[str, Any]) -> list[SecurityKey]:
    """The user's keys that can be their second factor now (none when security keys cannot work here)."""
    portal = current_portal()
    if portal.config.webauthn_unavailable:
        return []
    return portal.keys.usable(session["user"], exclude=session.get("first_factor_key"))


def start_session(data: dict[str, Any], remember: bool) -> str:
    """End this browser's session, if it has one, and start `data` under a new id (a sign-in, or a privilege
    change: no fixation), noting where it comes from (address, browser) for the sessions lists. Raises
    SessionStoreUnavailable."""
    portal = current_portal()
    old = session_id()
    if old:
        portal.sessions.end(old)
    origin = Origin(portal.proxies.client_ip(request.environ), request.headers.get("User-Agent", ""))
    return portal.sessions.create(data, remember, origin, current_cookie())


def promote_session(session: dict[str, Any], url: str | None) -> Response:
    """Raise a session to two factors under a new id (a privilege change gets a fresh id, too)."""
    data = dict(session, level=TWO_FACTOR, second_factor_at=time.time())
    try:
        sid = start_session(data, session["remember"])
    except SessionStoreUnavailable:
        return error_page(503, UNAVAILABLE)
    response = redirect(url or url_for("login.index"))
    set_session_cookie(response, sid, session["remember"])
    return response


def require_session() -> dict[str, Any]:
    """The signed-in session, or (abort) a redirect to the sign-in page that comes back here."""
    session = current_session()
    if session is None:
        abort(redirect(url_for("login.index", rd=request.url)))
    return session


def save_session(session: dict[str, Any]) -> None:
    sid = session_id()
    assert sid is not None
    current_portal().sessions.update(sid, session)


def recently_authenticated(session: dict[str, Any]) -> bool:
    """Whether the password was checked within `totp.reauthentication` (sign-in or a fresh check)."""
    window = current_portal().config.totp.reauthentication
    return time.time() - session.get("authenticated_at", 0) <= window


def reauthenticate_page(session: dict[str, Any], endpoint: str, rd: str, error: str | None = None,
                        status: int = 200) -> Response:
    """The password form in front of `endpoint` (a page that changes a second factor)."""
    page = render_template("reauthenticate.html", rd=rd, session=session, error=error, action=url_for(endpoint),
                           adding=ADDING[endpoint])
    return make_response(page, status)


def recheck_password(session: dict[str, Any]) -> tuple[str, int] | None:
    """The signed-in user's password from the form, checked again (bans, timing, audit): None when right,
    else what to say and the status."""
    portal = current_portal()
    try:
        attempt = portal.checks.password(portal.checks.reauthentication, session["user"],
                                         request.form.get("password", ""), portal.proxies.client_ip(request.environ))
    except Busy:
        return BUSY, 503
    if attempt.result == "backend_error":
        return UNAVAILABLE, 503
    return None if attempt.ok else (BAD_CREDENTIALS, 401)


def refused_page(page: Response, refusal: tuple[str, int]) -> Response:
    """A form shown again after `recheck_password` refused: busy answers also say when to retry."""
    return busy(page) if refusal[0] == BUSY else page


def confirm_password(session: dict[str, Any], endpoint: str, rd: str) -> Response:
    """The password again before a second factor is changed: a stolen session alone cannot add or swap one."""
    refusal = recheck_password(session)
    if refusal is not None:
        return refused_page(reauthenticate_page(session, endpoint, rd, *refusal), refusal)
    save_session(dict(session, authenticated_at=time.time()))
    return redirect(url_for(endpoint, rd=rd or None))
