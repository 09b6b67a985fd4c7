"""Login (password, then TOTP when needed), logout and the page at / (sign-in, or the account page)."""
from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, g, make_response, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from ..audit import audit
from ..credentials import Busy
from ..identity import ONE_FACTOR, TWO_FACTOR, session_fields
from ..regulation import RegulationUnavailable
from ..secretbox import DecryptionError
from ..sessions import SessionStoreUnavailable
from ..storage import StorageUnavailable
from . import notices
from .account_page import account_page
from .errors import error_page
from .flow import (
    BAD_CODE,
    BAD_CREDENTIALS,
    BUSY,
    UNAVAILABLE,
    form_rd,
    next_step,
    promote_session,
    recheck_password,
    refused_page,
    start_session,
    target_url,
    usable_keys,
    with_rd,
)
from .passwords import hold_expired_password
from .shared import (
    admitted,
    busy,
    check_csrf,
    clear_session_cookie,
    current_cookie,
    current_portal,
    current_session,
    session_id,
    set_session_cookie,
)

bp = Blueprint("login", __name__)

def login_page(error: str | None = None, status: int = 200, username: str = "") -> Response:
    portal = current_portal()
    url = target_url()
    hide_password_form = portal.config.authentication.oidc.hide_password_form
    page = render_template(
        "login.html", error=error, notice=None if error else notices.take(), username=username, rd=form_rd(),
        site=urlsplit(url).hostname if url else None,
        remember_me=portal.config.session.remember_me > 0,
        passkey=portal.config.webauthn.passkey_login and not portal.config.webauthn_unavailable,
        reset=portal.config.password_reset.enable and not hide_password_form,
        providers=portal.identity_providers.buttons(), password_form=not hide_password_form,
    )
    return make_response(page, status)


@bp.get("/")
def index() -> Response:
    session = current_session()
    url = target_url()
    if session is None:
        if g.get("store_down"):
            return login_page(UNAVAILABLE, 503)
        return login_page()
    if url is not None:  # without a target one factor is enough: the account page
        return next_step(session, url)
    return account_page(session)


@bp.post("/login")
def login() -> Response:
    check_csrf()
    portal = current_portal()
    if portal.config.authentication.oidc.hide_password_form:  # only the providers' buttons sign in here
        return error_page(404, _("Sign in with one of the buttons on the sign-in page."))
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    remember = bool(request.form.get("remember")) and portal.config.session.remember_me > 0
    client_ip = portal.proxies.client_ip(request.environ)
    try:
        attempt = portal.checks.password(portal.checks.form, username, password, client_ip)
    except Busy:
        return busy(login_page(BUSY, 503, username))
    if attempt.result == "backend_error":
        return login_page(UNAVAILABLE, 503, username)
    if attempt.change is not None:  # the right password, expired or to be changed now: the change form
        response = redirect(with_rd("passwords.expired", target_url()))
        hold_expired_password(response, attempt.change.username, password)
        return response
    details = attempt.found
    if details is None:
        return login_page(BAD_CREDENTIALS, 401, username)

    data = dict(session_fields(details), level=ONE_FACTOR, authenticated_at=time.time())
    try:
        sid = start_session(data, remember)
    except SessionStoreUnavailable:
        return login_page(UNAVAILABLE, 503, username)
    audit("login_success", user=details.username, ip=client_ip, factor="password", remember=remember)
    response = next_step(data, target_url())
    set_session_cookie(response, sid, remember)
    return response


def _second_factor_page(error: str | None = None, status: int = 200) -> Response:
    """The code form, and the user's security keys first when they have some (the key needs JavaScript)."""
    session = current_session()
    keys = bool(session and usable_keys(session))
    has_totp = bool(session and current_portal().totp.has_totp(session["user"]))
    page = render_template("second_factor.html", error=error, rd=form_rd(), keys=keys, has_totp=has_totp,
                           fresh=bool(request.values.get("fresh")),
                           lost=current_portal().config.identity_validation.reset_second_factor)
    return make_response(page, status)


@bp.route("/2fa", methods=["GET", "POST"])
@admitted(lambda: _second_factor_page(BUSY))
def second_factor() -> Response:
    session = current_session()
    url = target_url()
    if session is None:
        return redirect(with_rd("login.index", url))
    # `fresh`: a page that changes a second factor asks for it again, also in a two-factor session.
    if session["level"] >= TWO_FACTOR and not request.values.get("fresh"):
        return redirect(url or url_for("login.index"))
    if request.method == "GET":
        return _second_factor_page()
    check_csrf()
    portal = current_portal()
    client_ip = portal.proxies.client_ip(request.environ)
    user = session["user"]
    try:
        if portal.regulator.is_banned(user, client_ip):
            ok, reason = False, "banned"
        else:
            ok = portal.totp.check(user, request.form.get("code", ""))
            reason = "totp_failed"
            if not ok:
                for kind in portal.regulator.record_failure(user, client_ip):
                    portal.metrics.bans.labels(kind).inc()
    except (RegulationUnavailable, StorageUnavailable, DecryptionError) as exc:
        portal.metrics.logins.labels("backend_error").inc()
        portal.metrics.backend_failed(exc, portal.config.authentication.backend)
        return _second_factor_page(UNAVAILABLE, 503)
    if not ok:
        portal.metrics.logins.labels(reason if reason == "banned" else "totp_failed").inc()
        audit("totp_failure", user=user, ip=client_ip, reason=reason)
        return _second_factor_page(BAD_CODE, 401)
    portal.metrics.logins.labels("success").inc()
    audit("login_success", user=user, ip=client_ip, factor="totp")
    return promote_session(session, url)


@bp.route("/confirm", methods=["GET", "POST"])
def confirm() -> Response:
    """Step-up: a rule with `max_age` wants the password again, even in a live session ("Confirm it's you")."""
    session = current_session()
    url = target_url()
    if session is None:
        return redirect(with_rd("login.index", url))
    if request.method == "GET":
        return _confirm_page(session)
    check_csrf()
    refusal = recheck_password(session)
    if refusal is not None:
        return refused_page(_confirm_page(session, *refusal), refusal)
    portal = current_portal()
    data = dict(session, authenticated_at=time.time())
    try:  # a new id for the stepped-up session, as for every privilege change
        sid = start_session(data, session["remember"])
    except SessionStoreUnavailable:
        return _confirm_page(session, UNAVAILABLE, 503)
    audit("step_up", user=session["user"], ip=portal.proxies.client_ip(request.environ), factor="password")
    response = next_step(dict(data, remember=session["remember"]), url)
    set_session_cookie(response, sid, session["remember"])
    return response


def _confirm_page(session: dict[str, Any], error: str | None = None, status: int = 200) -> Response:
    url = target_url()
    page = render_template("confirm.html", session=session, error=error, rd=form_rd(),
                           site=urlsplit(url).hostname if url else None)
    return make_response(page, status)


@bp.get("/logout")
def logout_form() -> Response:
    return make_response(render_template("logout.html", rd=form_rd(),
                                         session=current_session()))


@bp.post("/logout")
def logout() -> Response:
    check_csrf()
    portal = current_portal()
    session = current_session()
    sid = session_id()
    if sid:
        try:
            portal.sessions.end(sid)
        except SessionStoreUnavailable:
            return error_page(503, UNAVAILABLE)
    if session:
        audit("logout", user=session["user"], ip=portal.proxies.client_ip(request.environ))
    # Signed in through a provider: signed out there too (RP-initiated logout), back to the sign-in page.
    at_provider = session and portal.identity_providers.logout_url(session, current_cookie().portal_url + "/")
    response = redirect(at_provider or target_url() or url_for("login.index"))
    clear_session_cookie(response)
    # shown by the sign-in page, here or after the app sends the user back
    notices.leave(response, "signed_out_one_domain" if len(portal.config.cookie_domains) > 1 else "signed_out")
    return response
