"""A logged-in user's own settings: TOTP enrollment (with a fresh password check) and API tokens."""
from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, make_response, redirect, render_template, request, url_for
from flask_babel import gettext as _
from markupsafe import Markup
from werkzeug.wrappers import Response

from ..audit import audit
from ..config import parse_duration
from ..identity import TWO_FACTOR
from ..storage import StorageUnavailable
from .errors import error_page
from .flow import (
    BAD_CODE,
    confirm_password,
    form_rd,
    promote_session,
    reauthenticate_page,
    recently_authenticated,
    require_session,
    required_level,
    save_session,
    target_url,
)
from .shared import check_csrf, current_portal, current_session

bp = Blueprint("account", __name__)

#: The "read-only" preset of a token made on the tokens page (a Grafana data source reads, never writes).
READ_ONLY = ("GET", "HEAD")


@bp.context_processor
def _why_second_factor() -> dict[str, Any]:
    """For the enrollment pages: the site whose rule sent the user here to add a second factor, if one did.

    Only a target that really needs two factors for this user counts: an `rd` alone proves nothing.
    """
    url = target_url()
    session = current_session() if url else None
    if url is None or session is None or required_level(url, session) != TWO_FACTOR:
        return {"second_factor_needed_by": None}
    return {"second_factor_needed_by": urlsplit(url).hostname}


@bp.route("/2fa/setup", methods=["GET", "POST"])
def totp_setup() -> Response:
    session = require_session()
    portal = current_portal()
    rd = form_rd()
    enrolled = portal.totp.has_totp(session["user"])
    if not portal.config.totp.allow_enrollment:
        return error_page(403, _("This resource needs a second factor and self-enrollment is off. Ask an "
                                 "administrator to enroll you (`%(command)s`).", command="authportal totp generate"),
                          heading=_("Two-factor authentication required"))
    if enrolled and session["level"] < TWO_FACTOR:
        # Replacing a device needs the current one: a stolen password alone cannot swap it.
        return redirect(url_for("login.second_factor", rd=rd or None))
    if request.method == "POST":
        check_csrf()
        if "password" in request.form:
            return confirm_password(session, "account.totp_setup", rd)
        return _confirm_code(session, rd)
    if not recently_authenticated(session):
        return reauthenticate_page(session, "account.totp_setup", rd)
    secret = _pending_secret(session)
    if not secret:
        secret = portal.totp.new_secret()
        session = dict(session, pending_totp=portal.totp.seal_pending(session["user"], secret))
        save_session(session)
    return _setup_page(session, secret, rd)


def _pending_secret(session: dict[str, Any]) -> str | None:
    """The secret being enrolled: the session record holds it only sealed, as the database holds a device's."""
    sealed = session.get("pending_totp")
    return current_portal().totp.open_pending(session["user"], sealed) if sealed else None


def _setup_page(session: dict[str, Any], secret: str, rd: str, error: str | None = None, status: int = 200) -> Response:
    portal = current_portal()
    uri = portal.totp.provisioning_uri(session["user"], secret)
    page = render_template("totp_setup.html", secret=secret, uri=uri, qr=Markup(portal.totp.qr_svg(uri)),
                           rd=rd, error=error, config=portal.config.totp)
    return make_response(page, status)


def _confirm_code(session: dict[str, Any], rd: str) -> Response:
    portal = current_portal()
    secret = _pending_secret(session)
    if not secret or not recently_authenticated(session):
        return redirect(url_for("account.totp_setup", rd=rd or None))
    if not portal.totp.enroll(session["user"], secret, request.form.get("code", "")):
        return _setup_page(session, secret, rd, BAD_CODE, 400)
    audit("totp_enroll", user=session["user"], ip=portal.proxies.client_ip(request.environ))
    portal.metrics.logins.labels("success").inc()
    session = {k: v for k, v in session.items() if k != "pending_totp"}
    return promote_session(session, target_url())


@bp.route("/tokens", methods=["GET", "POST"])
def tokens() -> Response:
    session = require_session()
    portal = current_portal()
    created = None
    error = None
    if request.method == "POST":
        check_csrf()
        name = request.form.get("name", "").strip()[:128]
        try:
            expires = parse_duration(request.form.get("expires") or "90d")
        except ValueError:  # parse_duration's reason is worded for the config file: the page says its own
            expires, error = None, _("The expiry must be a duration such as 90d or 12h, or 0 for never.")
        if not name:
            error = _("Give the token a name (what will use it).")
        elif not name.isprintable():
            error = _("The token name must be 1 to 128 printable characters.")
        if error is None:
            try:
                methods = READ_ONLY if request.form.get("read_only") else ()
                created, info = portal.tokens.create(session["user"], name, expires or None, [], methods)
            except ValueError as exc:  # checked above; anything else is said as the token store words it
                error = str(exc).capitalize() + "."
            else:
                audit("token_create", user=session["user"], token_name=name, token_id=info.id,
                      ip=portal.proxies.client_ip(request.environ))
    page = render_template("tokens.html", tokens=portal.tokens.list(session["user"]), created=created,
                           error=error, now=time.time())
    return make_response(page, 400 if error else 200)


@bp.post("/tokens/<int(max=9223372036854775807):token_id>/revoke")  # a database integer
def revoke_token(token_id: int) -> Response:
    session = require_session()
    check_csrf()
    portal = current_portal()
    if not portal.tokens.revoke(token_id, session["user"]):
        abort(404, description=_("No such token."))
    portal.token_credentials.clear()
    audit("token_revoke", user=session["user"], token_id=token_id, ip=portal.proxies.client_ip(request.environ))
    return redirect(url_for("account.tokens"))


@bp.get("/api/user/info")
def user_info() -> Response:
    session = current_session()
    if session is None:
        abort(401, description="Not logged in.")
    try:
        has_totp = current_portal().totp.has_totp(session["user"])
    except StorageUnavailable:
        has_totp = None
    return make_response({"user": session["user"], "name": session["name"], "email": session["email"],
                          "groups": session["groups"], "level": session["level"], "totp": has_totp})
