"""Security keys and passkeys in the browser: adding one (after a fresh password check, and the second factor
the user already has), proving one as the second factor, passkey sign-in, and removing one.

The pages work without JavaScript except for the key itself: `static/webauthn.js` asks the portal for a
ceremony (`/api/webauthn/.../options`, a JSON body for navigator.credentials), lets the browser talk to the
key, and posts the key's answer back. The ceremony's id travels in an HttpOnly cookie of its own; the
challenge stays in the database (`SecurityKeys`), single-use.
"""
from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, abort, make_response, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from ..audit import audit
from ..credentials import Attempt, Busy
from ..identity import ONE_FACTOR, TWO_FACTOR, session_fields
from ..security_keys import Ceremony, KeyRefused
from ..sessions import SessionStoreUnavailable
from ..storage import StorageUnavailable
from .flow import (
    BUSY,
    UNAVAILABLE,
    confirm_password,
    form_rd,
    has_second_factor,
    next_step,
    promote_session,
    reauthenticate_page,
    recently_authenticated,
    require_session,
    start_session,
    target_url,
    usable_keys,
)
from .shared import check_csrf, current_portal, current_session, session_id, set_session_cookie

bp = Blueprint("keys", __name__)

#: The JSON answers' `error` is shown by static/webauthn.js as it is: every one is translated.
NOT_ACCEPTED = _l("The key was not accepted. Try again, or use another factor.")


def _ceremony_cookie() -> str:
    return "__Host-authportal_webauthn" if current_portal().config.session.cookie_secure else "authportal_webauthn"


def _started(ceremony: Ceremony) -> Response:
    """The options for the browser, with the ceremony's id in its cookie (for this site only, not readable by
    scripts, gone when the ceremony expires)."""
    portal = current_portal()
    response = make_response(ceremony.options)
    response.mimetype = "application/json"
    response.set_cookie(_ceremony_cookie(), ceremony.id, max_age=int(portal.config.webauthn.timeout), path="/",
                        secure=portal.config.session.cookie_secure, httponly=True, samesite="Strict")
    return response


def _answer(status: int, error: str | None = None, go_to: str | None = None) -> Response:
    response = make_response({"error": str(error)} if error else {"redirect": go_to}, status)
    response.delete_cookie(_ceremony_cookie(), path="/", secure=current_portal().config.session.cookie_secure,
                           httponly=True, samesite="Strict")
    return response


def _followed(redirected: Response) -> Response:
    """A redirect (with its cookies) as the JSON answer the script follows: the script changes the page."""
    if redirected.status_code != 302:
        return _answer(redirected.status_code, UNAVAILABLE)
    response = _answer(200, go_to=redirected.headers["Location"])
    for cookie in redirected.headers.getlist("Set-Cookie"):
        response.headers.add("Set-Cookie", cookie)
    return response


def _credential() -> dict[str, Any]:
    """The key's answer the script posted (a PublicKeyCredential as JSON)."""
    try:
        credential = json.loads(request.form.get("credential", ""))
    except ValueError:
        credential = None
    # The shape the checks below read without looking again: an object whose `response` is an object.
    if not isinstance(credential, dict) or not isinstance(credential.get("response"), dict):
        abort(400, description=_("The browser's answer could not be read. Try again."))
    return credential


def _require_keys() -> None:
    reason = current_portal().config.webauthn_unavailable
    if reason:
        # the reason is the configuration's (for whoever runs the portal): it stays English
        abort(404, description=_("Security keys are not available here: %(reason)s.", reason=reason))


def _json_session() -> dict[str, Any]:
    session = current_session()
    if session is None:
        abort(401, description=_("Not signed in (the session ended). Reload the page."))
    return session


def _attempt_failed(attempt: Attempt[Any]) -> Response | None:
    """The JSON answer for a refused key check, or None when it passed."""
    if attempt.ok:
        return None
    if attempt.result == "backend_error":
        return _answer(503, UNAVAILABLE)
    refusal = attempt.refusal
    if refusal is not None and refusal.reason == "cloned":
        audit("webauthn_key_blocked", ip=current_portal().proxies.client_ip(request.environ), reason="cloned")
    return _answer(401, refusal.message if refusal is not None else NOT_ACCEPTED)


# Adding a key.

def _setup_blocked(session: dict[str, Any]) -> Response | None:
    """What stands before adding a key: the user's existing second factor, proven recently, then a fresh
    password (the page asks for it). A stolen session alone cannot add a key."""
    portal = current_portal()
    window = portal.config.totp.reauthentication
    if has_second_factor(session) and (session["level"] < TWO_FACTOR
                                       or time.time() - session.get("second_factor_at", 0) > window):
        return redirect(url_for("login.second_factor", rd=url_for("keys.setup"), fresh=1))
    if not recently_authenticated(session):
        return reauthenticate_page(session, "keys.setup", form_rd())
    return None


@bp.route("/webauthn/setup", methods=["GET", "POST"])
def setup() -> Response:
    _require_keys()
    session = require_session()
    if request.method == "POST":
        check_csrf()
        return confirm_password(session, "keys.setup", form_rd())
    blocked = _setup_blocked(session)
    if blocked is not None:
        return blocked
    return make_response(render_template("security_key_setup.html", session=session,
                                         passkey=current_portal().config.webauthn.passkey_login))


def _adding_key() -> tuple[dict[str, Any], str]:
    """The session (and its id) of a script's request to add a key, once everything before it was done."""
    _require_keys()
    check_csrf()
    session = _json_session()
    sid = session_id()
    if sid is None or _setup_blocked(session) is not None:
        abort(403, description=_("Confirm your password (and second factor) first: reload the page."))
    return session, sid


@bp.post("/api/webauthn/register/options")
def registration_options() -> Response:
    session, sid = _adding_key()
    return _started(current_portal().keys.start_registration(session["user"], session.get("name") or "", sid))


@bp.post("/api/webauthn/register")
def register() -> Response:
    session, sid = _adding_key()
    portal = current_portal()
    client_ip = portal.proxies.client_ip(request.environ)
    try:
        key = portal.keys.register(session["user"], sid, request.cookies.get(_ceremony_cookie(), ""),
                                   request.form.get("name", ""), _credential())
    except KeyRefused as refusal:
        audit("webauthn_register_refused", user=session["user"], ip=client_ip, reason=refusal.reason)
        return _answer(400, refusal.message)
    except StorageUnavailable:
        return _answer(503, UNAVAILABLE)
    audit("webauthn_register", user=session["user"], ip=client_ip, key_name=key.name, key_id=key.id,
          discoverable=key.discoverable)
    return _answer(200, go_to=url_for("login.index"))


@bp.post("/webauthn/keys/<int(max=9223372036854775807):key_id>/remove")  # a database integer
def remove(key_id: int) -> Response:
    session = require_session()
    check_csrf()
    portal = current_portal()
    if session["level"] < TWO_FACTOR and has_second_factor(session):
        # A password alone (a stolen one) must not take away the factor that guards the account.
        return redirect(url_for("login.second_factor", rd=url_for("login.index"), fresh=1))
    key = portal.keys.find(session["user"], str(key_id))
    if key is None or key.id != key_id:
        abort(404, description=_("No such key."))
    portal.keys.remove(key)
    audit("webauthn_remove", user=session["user"], ip=portal.proxies.client_ip(request.environ),
          key_name=key.name, key_id=key.id, via="account page")
    return redirect(url_for("login.index"))


# A key as the second factor.

@bp.post("/api/webauthn/authenticate/options")
def authentication_options() -> Response:
    _require_keys()
    check_csrf()
    session = _json_session()
    if not usable_keys(session):
        abort(400, description=_("You have no security key to use here."))
    return _started(current_portal().keys.start_authentication(session["user"], session_id(),
                                                               exclude=session.get("first_factor_key")))


@bp.post("/api/webauthn/authenticate")
def authenticate() -> Response:
    _require_keys()
    check_csrf()
    session = _json_session()
    portal = current_portal()
    client_ip = portal.proxies.client_ip(request.environ)
    credential = _credential()
    ceremony = request.cookies.get(_ceremony_cookie(), "")
    try:
        attempt = portal.checks.key(portal.checks.security_key, session["user"], client_ip, lambda: portal.keys.authenticate(
            ceremony, session_id(), credential, session["user"], exclude=session.get("first_factor_key")))
    except Busy:
        return _answer(503, BUSY)
    failed = _attempt_failed(attempt)
    if failed is not None or attempt.found is None:
        return failed or _answer(401, NOT_ACCEPTED)
    audit("login_success", user=session["user"], ip=client_ip, factor="security_key", key_name=attempt.found.key.name)
    return _followed(promote_session(session, target_url()))


# Passkey sign-in: no username typed; the key says whose it is.

@bp.post("/api/webauthn/passkey/options")
def passkey_options() -> Response:
    _require_keys()
    check_csrf()
    if not current_portal().config.webauthn.passkey_login:
        abort(404, description=_("Passkey sign-in is off (%(setting)s).", setting="webauthn.passkey_login"))
    return _started(current_portal().keys.start_authentication(None, None))


@bp.post("/api/webauthn/passkey")
def passkey() -> Response:
    _require_keys()
    check_csrf()
    portal = current_portal()
    if not portal.config.webauthn.passkey_login:
        abort(404, description=_("Passkey sign-in is off (%(setting)s).", setting="webauthn.passkey_login"))
    client_ip = portal.proxies.client_ip(request.environ)
    credential = _credential()
    ceremony = request.cookies.get(_ceremony_cookie(), "")
    try:
        owner = portal.keys.owner(credential)
    except KeyRefused as refusal:
        return _answer(400, refusal.message)
    except StorageUnavailable:
        return _answer(503, UNAVAILABLE)

    def check() -> Any:
        use = portal.keys.authenticate(ceremony, None, credential)
        details = portal.provider.get_details(use.key.username)
        if details is None:  # removed from the users file or the directory, or disabled
            raise KeyRefused("unknown_user", _("This account cannot sign in."))
        return use, details

    try:
        attempt = portal.checks.key(portal.checks.passkey, owner, client_ip, check)
    except Busy:
        return _answer(503, BUSY)
    failed = _attempt_failed(attempt)
    if failed is not None or attempt.found is None:
        return failed or _answer(401, NOT_ACCEPTED)
    use, details = attempt.found
    # Verified by a PIN or biometrics the key holds, a passkey is two factors (something you have and know or
    # are); without, it is one, and the second must be another key or the app (`first_factor_key`).
    data: dict[str, Any] = dict(session_fields(details), level=TWO_FACTOR if use.user_verified else ONE_FACTOR)
    if use.user_verified:
        data["second_factor_at"] = time.time()
    else:
        data["first_factor_key"] = use.key.id
    try:
        sid = start_session(data, False)
    except SessionStoreUnavailable:
        return _answer(503, UNAVAILABLE)
    audit("login_success", user=details.username, ip=client_ip, factor="passkey", key_name=use.key.name,
          user_verified=use.user_verified)
    redirected = next_step(data, target_url())
    set_session_cookie(redirected, sid, False)
    return _followed(redirected)

