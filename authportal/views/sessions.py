"""A signed-in user ends their own sessions from the account page: one ("Sign out" on another browser), or
every one but this browser's ("Sign out everywhere else")."""
from __future__ import annotations

from collections.abc import Collection

from flask import Blueprint, abort, redirect, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from ..sessions import SessionStoreUnavailable, audit_ended
from . import notices
from .errors import error_page
from .flow import UNAVAILABLE, require_session
from .shared import check_csrf, current_portal, session_id

bp = Blueprint("sessions", __name__)


def _end_own(handles: Collection[str] | None, notice: str) -> Response:
    session = require_session()
    check_csrf()
    try:  # never this browser's own session: that is "Sign out"
        ended = current_portal().sessions.end_sessions(session["user"], handles, keep=session_id())
    except SessionStoreUnavailable:
        return error_page(503, UNAVAILABLE)
    if handles is not None and not ended:
        abort(404, description=_("That session has already ended."))
    audit_ended(ended, session["user"], "account", current_portal().proxies.client_ip(request.environ))
    response = redirect(url_for("login.index") + "#sessions")
    notices.leave(response, notice)
    return response


@bp.post("/sessions/<string(length=12):handle>/end")
def end(handle: str) -> Response:
    return _end_own({handle}, "session_ended")


@bp.post("/sessions/end-others")
def end_others() -> Response:
    return _end_own(None, "other_sessions_ended")
