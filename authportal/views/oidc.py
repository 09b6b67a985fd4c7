"""Sign in with an OpenID Provider: the button's POST sends the browser there, `/oidc/callback/<name>` brings it back.

The callback goes through `CredentialChecks.provider_sign_in` like every other credential (bans, metrics,
audit); then the session starts as after a password, and the portal's rules and second factor apply.
"""
from __future__ import annotations

import secrets
import time

from flask import Blueprint, redirect, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from ..audit import audit
from ..authentication.oidc import OidcClient, ProviderUnavailable
from ..authentication.oidc_flows import FLOW_LIFETIME
from ..credentials import Busy
from ..identity import TWO_FACTOR, session_fields
from ..identity_providers import ProviderSignIn
from ..sessions import SessionStoreUnavailable
from ..storage import StorageUnavailable
from .errors import error_page
from .flow import BUSY, UNAVAILABLE, next_step, requested_method, safe_target, start_session, target_url
from .login import login_page
from .shared import busy, check_csrf, current_cookie, current_portal, set_session_cookie

bp = Blueprint("oidc", __name__)

#: Holds a random value naming this browser while it signs in at a provider (only its digest is stored).
BROWSER_COOKIE = "authportal_oidc"
#: Refusals that are about the person, not a broken or replayed request.
NOT_ADMITTED = {"domain_not_allowed", "group_not_allowed", "unknown_user", "no_username", "banned"}


def _client(name: str) -> OidcClient | None:
    return current_portal().identity_providers.get(name)


def _callback_url(name: str) -> str:
    """This provider's redirect URI on the portal URL the browser uses (register it at the provider)."""
    return f"{current_cookie().portal_url}/oidc/callback/{name}"


@bp.post("/oidc/start/<name>")
def start(name: str) -> Response:
    check_csrf()
    client = _client(name)
    if client is None:
        return error_page(404, _("There is no such identity provider here."))
    browser = request.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(32)
    method = requested_method()
    try:
        flow = current_portal().identity_providers.flows.start(name, browser, target_url(),
                                                                None if method == "GET" else method)
        response = redirect(client.authorization_url(_callback_url(name), flow.state, flow.nonce, flow.challenge))
    except (ProviderUnavailable, StorageUnavailable):
        return login_page(_("Signing in with %(name)s is unavailable right now. Please try again in a moment.",
                            name=client.config.label), 503)
    response.set_cookie(BROWSER_COOKIE, browser, max_age=int(FLOW_LIFETIME), path="/oidc/",
                        secure=current_portal().config.session.cookie_secure, httponly=True, samesite="Lax")
    return response


@bp.get("/oidc/callback/<name>")
def callback(name: str) -> Response:
    portal = current_portal()
    client = _client(name)
    if client is None:
        return error_page(404, _("There is no such identity provider here."))
    label = client.config.label
    providers = portal.identity_providers
    client_ip = portal.proxies.client_ip(request.environ)
    state, code = request.args.get("state", ""), request.args.get("code", "")
    if request.args.get("error"):  # the person cancelled, or the provider refused them
        audit("login_failure", ip=client_ip, reason=f"provider error: {request.args.get('error', '')[:64]}",
              via="oidc", provider=name)
        return login_page(_("Signing in with %(name)s did not complete. Try again.", name=label), 401)
    browser = request.cookies.get(BROWSER_COOKIE)

    def check() -> tuple[ProviderSignIn, str | None, str | None]:
        pending = providers.flows.take(state, name, browser)
        tokens = client.exchange(_callback_url(name), code, pending.verifier, pending.nonce)
        return providers.accept(client, tokens), pending.rd, pending.rm

    try:
        attempt = portal.checks.provider_sign_in(client_ip, check, lambda found: found[0].details.username)
    except Busy:
        return busy(login_page(BUSY, 503))
    if attempt.result == "backend_error":
        return login_page(_("Signing in with %(name)s is unavailable right now. Please try again in a moment.",
                            name=label), 503)
    if attempt.found is None:
        refusal = attempt.refusal
        if refusal is not None and refusal.reason in NOT_ADMITTED:
            return login_page(refusal.message, 403)
        return login_page(refusal.message if refusal else _("This sign-in was refused. Try again later."), 400)
    signed_in, rd, rm = attempt.found
    now = time.time()
    data = dict(session_fields(signed_in.details), level=signed_in.level, authenticated_at=now, oidc=signed_in.oidc)
    if signed_in.level >= TWO_FACTOR:
        data["second_factor_at"] = now
    try:
        sid = start_session(data, False)
    except SessionStoreUnavailable:
        return login_page(UNAVAILABLE, 503)
    audit("login_success", user=signed_in.details.username, ip=client_ip, factor="oidc", provider=name,
          two_factor=signed_in.level >= TWO_FACTOR)
    url = safe_target(rd)  # checked again: the configuration may have changed since the start
    # With a target, the sign-in page decides the next step as after a password (it reads rd and rm).
    response = redirect(url_for("login.index", rd=url, rm=rm)) if url else next_step(data, None)
    set_session_cookie(response, sid, False)
    response.delete_cookie(BROWSER_COOKIE, path="/oidc/")
    return response
