"""`/admin`: everyone's sessions, the bans in force, the active API tokens and the last audit events, with
buttons to end sessions, lift bans and revoke tokens.

Only for members of `administration.subject` (a rule's subject: `user:NAME`, `group:NAME`, a nested list
AND'ed) signed in with two factors; off (404) while that list is empty. Each form is a CSRF-checked POST, and
every view and every action is audited with who did it (`actor`) and whom it concerned (`user`).
"""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, abort, make_response, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from ..audit import audit, recent_events
from ..identity import TWO_FACTOR
from ..regulation import RegulationUnavailable, user_key
from ..sessions import SessionStoreUnavailable, audit_ended, session_handle
from ..storage import StorageUnavailable
from . import notices
from .errors import error_page
from .flow import UNAVAILABLE, has_second_factor, require_session
from .shared import check_csrf, current_portal, session_id

bp = Blueprint("admin", __name__)

#: Sessions shown at most (filter by user to see the rest) and audit events read from the file's end.
SHOWN_SESSIONS = 200
SHOWN_EVENTS = 50
#: Audit fields the events table shows in columns of their own (the rest go to "details").
_EVENT_COLUMNS = ("time", "level", "logger", "message", "event", "actor", "user", "ip", "request_id", "user_agent")


def _administrator() -> dict[str, Any]:
    """The session of an administrator with two factors, or (abort) 404 / sign-in / second factor / 403."""
    portal = current_portal()
    administration = portal.config.administration
    if not administration.subject:
        abort(404)
    session = require_session()
    if not administration.admits(session["user"], session.get("groups") or []):
        audit("access_denied", user=session["user"], ip=portal.proxies.client_ip(request.environ), resource="/admin",
              reason="not in administration.subject")
        abort(403, description=_("This page is for administrators."))
    if session["level"] < TWO_FACTOR:
        if has_second_factor(session):
            abort(redirect(url_for("login.second_factor", rd=request.url)))
        abort(403, description=_("The administration page needs two factors: add an authenticator app or a security "
                                 "key on your account page, then sign in with it."))
    return session


def _client_ip() -> str:
    return current_portal().proxies.client_ip(request.environ)


@bp.get("/admin")
def index() -> Response:
    session = _administrator()
    portal = current_portal()
    user = request.args.get("user", "").strip() or None
    sid = session_id()
    facts: dict[str, Any] = {"user": user, "sessions": None, "bans": None, "tokens": None, "events": None,
                             "audit_file": portal.config.log.audit_file, "events_error": None,
                             "current": session_handle(sid) if sid else None}
    try:
        facts["sessions"] = portal.sessions.sessions(user)
    except SessionStoreUnavailable:
        pass
    try:
        facts["bans"] = [ban for ban in portal.regulator.bans() if user is None or ban.user == user_key(user)]
    except RegulationUnavailable:
        pass
    try:
        now = time.time()
        facts["tokens"] = [t for t in portal.tokens.list(user) if t.state(now) == "active"]
    except StorageUnavailable:
        pass
    if facts["audit_file"] is not None:
        try:
            facts["events"] = recent_events(facts["audit_file"], SHOWN_EVENTS)
        except OSError as exc:
            facts["events_error"] = exc.strerror or str(exc)
    audit("admin_view", actor=session["user"], ip=_client_ip(), filter=user,
          sessions=None if facts["sessions"] is None else len(facts["sessions"]),
          bans=None if facts["bans"] is None else len(facts["bans"]))
    page = render_template("admin.html", session=session, facts=facts, shown=SHOWN_SESSIONS,
                           event_columns=_EVENT_COLUMNS, notice=notices.take())
    return make_response(page)


def _done(notice: str) -> Response:
    """Back to the page (with its user filter), saying what was done."""
    response = redirect(url_for("admin.index", user=request.form.get("filter") or None))
    notices.leave(response, notice)
    return response


@bp.post("/admin/sessions/end")
def end_sessions() -> Response:
    """End one session (`handle`) or every session of a user (`user`)."""
    session = _administrator()
    check_csrf()
    handle, user = request.form.get("handle"), request.form.get("user")
    if not handle and not user:
        abort(400, description=_("Say which session or whose sessions to end."))
    try:
        ended = current_portal().sessions.end_sessions(user or None, {handle} if handle else None)
    except SessionStoreUnavailable:
        return error_page(503, UNAVAILABLE)
    if handle and not ended:
        abort(404, description=_("That session has already ended."))
    audit_ended(ended, session["user"], "admin", _client_ip())
    return _done("sessions_ended")


@bp.post("/admin/bans/lift")
def lift_ban() -> Response:
    session = _administrator()
    check_csrf()
    try:
        lifted = current_portal().regulator.lift_ban(request.form.get("ban", ""))
    except RegulationUnavailable:
        return error_page(503, UNAVAILABLE)
    if lifted is None:
        abort(404, description=_("That ban is no longer in force."))
    audit("ban_lift", actor=session["user"], kind=lifted.kind, user=lifted.user, banned_ip=lifted.ip,
          ip=_client_ip(), via="admin")
    return _done("ban_lifted")


@bp.post("/admin/tokens/<int(max=9223372036854775807):token_id>/revoke")  # a database integer
def revoke_token(token_id: int) -> Response:
    session = _administrator()
    check_csrf()
    portal = current_portal()
    owner = next((t.username for t in portal.tokens.list() if t.id == token_id), None)
    if owner is None or not portal.tokens.revoke(token_id):
        abort(404, description=_("No such token."))
    # This worker forgets it now; the others within session.cache_ttl (their token cache's lifetime).
    portal.token_credentials.clear()
    audit("token_revoke", actor=session["user"], user=owner, token_id=token_id, ip=_client_ip(), via="admin")
    return _done("token_revoked")
