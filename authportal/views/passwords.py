"""Passwords the user manages: change one (`/password`), change an expired one at sign-in (`/password/expired`),
reset a forgotten one by e-mail (`/reset-password`), and remove a lost second factor by e-mail.

Every check of a current password goes through `CredentialChecks` (bans, timing, audit). A request for a
link always gets the same answer at once; the lookup and the e-mail happen in the outbox, so neither the
answer nor its time says whether the account exists.
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, abort, current_app, make_response, redirect, render_template, request, url_for
from flask_babel import force_locale, get_locale
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from ..audit import audit
from ..authentication import BackendUnavailable, PasswordRejected, UserDetails
from ..credentials import Busy
from ..identity import session_fields
from ..identity_links import RESET_PASSWORD, RESET_SECOND_FACTOR, Link
from ..notifier import Message
from ..portal import Portal
from ..secretbox import DecryptionError
from ..sessions import SessionStoreUnavailable
from ..storage import StorageUnavailable
from . import notices
from .flow import BUSY, UNAVAILABLE, form_rd, next_step, require_session, start_session, target_url
from .shared import check_csrf, current_portal, duration, set_session_cookie

bp = Blueprint("passwords", __name__)

#: How long the expired-password form keeps the old password (sealed, in a cookie of its own).
EXPIRED_FORM_SECONDS = 300


def _enabled(feature: str) -> None:
    config = current_portal().config
    if not getattr(config, feature).enable:
        abort(404, description=_("This is turned off on this portal."))


def _link_sent(portal: Portal) -> Response:
    """The same answer whether the account exists or not."""
    lifetime = portal.config.identity_validation.reset_password.expiration
    return _page("link_sent.html", message=_(
        "If the account exists and has an e-mail address, a message with a link is on its way to it. "
        "The link works for %(duration)s.", duration=duration(lifetime)))


def _page(template: str, status: int = 200, **context: Any) -> Response:
    rules = current_portal().policy.rules()
    return make_response(render_template(template, rules=rules, rd=form_rd(), **context), status)


def _client_ip() -> str:
    return current_portal().proxies.client_ip(request.environ)


def _language() -> str | None:
    """This request's language, for an e-mail the outbox writes later (outside this request)."""
    locale = get_locale()
    return None if locale is None else str(locale)


def _new_password_problems(username: str, old: str | None = None) -> list[str]:
    return current_portal().policy.problems(request.form.get("new_password", ""),
                                            request.form.get("confirm_password", ""), username, old)


def _write(change: Any) -> str | None:
    """Run a password write; None when done, else what to tell the person."""
    try:
        change()
    except PasswordRejected as exc:
        return str(exc)
    except BackendUnavailable:
        return UNAVAILABLE
    return None


# Changing a password while signed in.

@bp.route("/password", methods=["GET", "POST"])
def change() -> Response:
    _enabled("password_change")
    session = require_session()
    if request.method == "GET":
        return _page("password_change.html", session=session)
    check_csrf()
    portal = current_portal()
    user, current = session["user"], request.form.get("current_password", "")
    try:
        attempt = portal.checks.password(portal.checks.password_change, user, current, _client_ip())
    except Busy:
        return _page("password_change.html", 503, session=session, errors=[BUSY])
    if attempt.result == "backend_error":
        return _page("password_change.html", 503, session=session, errors=[UNAVAILABLE])
    if not attempt.ok and attempt.result != "change_required":
        return _page("password_change.html", 401, session=session, errors=[_("The current password is wrong.")])
    problems = _new_password_problems(user, current)
    new = request.form.get("new_password", "")
    refused = problems or [r for r in [_write(lambda: portal.provider.change_password(user, current, new))] if r]
    if refused:
        return _page("password_change.html", 400, session=session, errors=refused)
    audit("password_change", user=user, ip=_client_ip(), via="account page")
    # This session goes on under a new id with the new password's stamp; the others end with the old stamp.
    details = portal.provider.get_details(user)
    data = dict(session, **(session_fields(details) if details else {}), authenticated_at=time.time())
    try:
        sid = start_session(data, session["remember"])
    except SessionStoreUnavailable:
        return _page("password_change.html", 503, session=session, errors=[UNAVAILABLE])
    response = redirect(url_for("login.index"))
    set_session_cookie(response, sid, session["remember"])
    notices.leave(response, "password_changed")
    return response


# An expired (or must-change) password at sign-in: the login view proved it and sent the browser here.

def _expired_cookie() -> str:
    return "__Host-authportal_expired" if current_portal().config.session.cookie_secure else "authportal_expired"


def hold_expired_password(response: Response, username: str, password: str) -> None:
    """Keep the proven old password for the change form: sealed with the portal's key, in an HttpOnly cookie
    that lives a few minutes (the directory needs the old password to change it)."""
    portal = current_portal()
    held = json.dumps({"user": username, "password": password, "until": time.time() + EXPIRED_FORM_SECONDS})
    sealed = portal.box.seal(held.encode(), b"expired-password").hex()
    response.set_cookie(_expired_cookie(), sealed, max_age=EXPIRED_FORM_SECONDS, path="/",
                        secure=portal.config.session.cookie_secure, httponly=True, samesite="Strict")


def _held_expired_password() -> tuple[str, str] | None:
    sealed = request.cookies.get(_expired_cookie(), "")
    try:
        held = json.loads(current_portal().box.open(bytes.fromhex(sealed), b"expired-password"))
    except (ValueError, DecryptionError):
        return None
    if held.get("until", 0) < time.time():
        return None
    return held["user"], held["password"]


@bp.route("/password/expired", methods=["GET", "POST"])
def expired() -> Response:
    held = _held_expired_password()
    if held is None:
        return redirect(url_for("login.index", rd=target_url()))
    username, old = held
    if request.method == "GET":
        return _page("password_expired.html", username=username)
    check_csrf()
    portal = current_portal()
    new = request.form.get("new_password", "")
    refused = _new_password_problems(username, old) or [
        r for r in [_write(lambda: portal.provider.change_password(username, old, new))] if r]
    if refused:
        return _page("password_expired.html", 400, username=username, errors=refused)
    audit("password_change", user=username, ip=_client_ip(), via="expired at sign-in")
    try:
        attempt = portal.checks.password(portal.checks.form, username, new, _client_ip())
    except Busy:
        return _page("password_expired.html", 503, username=username, errors=[BUSY])
    if attempt.found is None:  # the directory has not taken it yet: sign in with it
        response = redirect(url_for("login.index", rd=target_url()))
    else:
        response = _signed_in(attempt.found)
    response.delete_cookie(_expired_cookie(), path="/", secure=portal.config.session.cookie_secure,
                           httponly=True, samesite="Strict")
    return response


def _signed_in(details: UserDetails) -> Response:
    data = dict(session_fields(details), level=1, authenticated_at=time.time())
    try:
        sid = start_session(data, False)
    except SessionStoreUnavailable:
        return _page("password_expired.html", 503, username=details.username, errors=[UNAVAILABLE])
    audit("login_success", user=details.username, ip=_client_ip(), factor="password")
    response = next_step(data, target_url())
    set_session_cookie(response, sid, False)
    return response


# Reset links by e-mail.

def _link_url(portal: Portal, endpoint: str, token: str) -> str:
    return f"{portal.config.portal_url.rstrip('/')}{url_for(endpoint, token='')}{quote(token)}"


def _send_link(app: Flask, portal: Portal, purpose: str, details: UserDetails, client_ip: str,
               language: str | None = None) -> None:
    """In the outbox: a new link for `details`, e-mailed to them (rate-limited per user and address), in
    `language` (the one the request for it was made in; else the portal's default)."""
    if portal.notifier is None or not details.email:
        return
    if not portal.regulator.allow_reset_request(details.username, client_ip):
        audit("identity_link_throttled", user=details.username, ip=client_ip, purpose=purpose)
        return
    lifetime = portal.config.identity_validation.reset_password.expiration
    token, link = portal.links.issue(purpose, details.username, details.credential_stamp, lifetime)
    endpoint = "passwords.reset_confirm" if purpose == RESET_PASSWORD else "passwords.second_factor_reset_confirm"
    in_language = force_locale(language) if language else contextlib.nullcontext()
    with app.test_request_context(base_url=portal.config.portal_url), in_language:
        context = {"name": details.display_name or details.username, "url": _link_url(portal, endpoint, token),
                   "lifetime": lifetime, "ip": client_ip, "purpose": purpose}
        message = Message(details.email, render_template("email/link_subject.txt", **context).strip(),
                          render_template("email/link.txt", **context), render_template("email/link.html", **context))
    portal.notifier.send(message)
    audit("identity_link_sent", user=details.username, ip=client_ip, purpose=purpose,
          expires_at=round(link.expires_at))


def _find_user(portal: Portal, identifier: str) -> UserDetails | None:
    identifier = identifier.strip()
    if not identifier or len(identifier) > 256:
        return None
    details = portal.provider.get_details(identifier)
    if details is None and "@" in identifier:
        username = portal.provider.username_for_email(identifier)
        details = portal.provider.get_details(username) if username else None
    return details


@bp.route("/reset-password", methods=["GET", "POST"])
def reset_request() -> Response:
    _enabled("password_reset")
    portal = current_portal()
    if request.method == "GET":
        return _page("reset_request.html")
    check_csrf()
    identifier, client_ip, language = request.form.get("identifier", ""), _client_ip(), _language()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]

    def job() -> None:
        details = _find_user(portal, identifier)
        if details is not None:
            _send_link(app, portal, RESET_PASSWORD, details, client_ip, language)

    portal.outbox.post(job)
    return _link_sent(portal)


def _usable_link(purpose: str, token: str) -> Link | None:
    """The link if it still works: unused, unexpired, and the password is still the one it was made under."""
    portal = current_portal()
    link = portal.links.peek(purpose, token)
    if link is None:
        return None
    details = portal.provider.get_details(link.username)
    return link if details is not None and details.credential_stamp == link.stamp else None


def _dead_link() -> Response:
    return _page("link_invalid.html", 410, reset_enabled=current_portal().config.password_reset.enable)


@bp.route("/reset-password/<token>", methods=["GET", "POST"])
def reset_confirm(token: str) -> Response:
    _enabled("password_reset")
    portal = current_portal()
    link = _usable_link(RESET_PASSWORD, token)
    if link is None:
        return _dead_link()
    if request.method == "GET":
        return _page("reset_password.html", username=link.username, token=token)
    check_csrf()
    new = request.form.get("new_password", "")
    refused = _new_password_problems(link.username) or [
        r for r in [_write(lambda: portal.provider.set_password(link.username, new))] if r]
    if refused:
        return _page("reset_password.html", 400, username=link.username, token=token, errors=refused)
    portal.links.take(RESET_PASSWORD, token)
    audit("password_reset", user=link.username, ip=_client_ip())
    response = redirect(url_for("login.index"))
    notices.leave(response, "password_reset")
    return response


# A lost second factor: after the password, an e-mailed link lets the user remove their second factors.

@bp.post("/2fa/lost")
def second_factor_reset_request() -> Response:
    portal = current_portal()
    if not portal.config.identity_validation.reset_second_factor:
        abort(404, description=_("This is turned off on this portal."))
    session = require_session()
    check_csrf()
    details = portal.provider.get_details(session["user"])
    if details is not None:
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        client_ip, language = _client_ip(), _language()
        portal.outbox.post(lambda: _send_link(app, portal, RESET_SECOND_FACTOR, details, client_ip, language))
    return _link_sent(portal)


@bp.route("/2fa/lost/<token>", methods=["GET", "POST"])
def second_factor_reset_confirm(token: str) -> Response:
    portal = current_portal()
    if not portal.config.identity_validation.reset_second_factor:
        abort(404, description=_("This is turned off on this portal."))
    session = require_session()  # the password first: the link alone removes nothing
    link = _usable_link(RESET_SECOND_FACTOR, token)
    if link is None or link.username != session["user"]:
        return _dead_link()
    if request.method == "GET":
        return _page("second_factor_reset.html", token=token)
    check_csrf()
    if portal.links.take(RESET_SECOND_FACTOR, token) is None:
        return _dead_link()
    try:
        portal.totp.reset(link.username)
        for key in portal.keys.keys_of(link.username):
            portal.keys.remove(key)
    except StorageUnavailable:
        abort(503, description=UNAVAILABLE)
    audit("second_factor_reset", user=link.username, ip=_client_ip(), via="e-mailed link")
    return redirect(url_for("account.totp_setup"))

