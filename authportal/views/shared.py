"""What every view shares: the current portal and session, the session cookie, CSRF tokens
and the security headers every page carries."""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from babel.dates import format_date, format_time, get_datetime_format
from flask import abort, current_app, g, request, url_for
from flask_babel import format_timedelta, get_locale
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from ..config import CookieDomain
from ..logs import RateLimitedLog
from ..portal import Portal
from ..sessions import SessionStoreUnavailable

log = logging.getLogger("authportal.http")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self' https: http:; "
       "frame-ancestors 'none'; base-uri 'none'")
#: A page with a security-key form runs the portal's own script file, which talks to the portal (no inline code).
CSP_WITH_SCRIPT = CSP + "; script-src 'self'; connect-src 'self'"


def current_portal() -> Portal:
    return current_app.extensions["authportal"]


def csrf_cookie_name() -> str:
    # __Host- cookies cannot be set by a sibling subdomain (cookie tossing), but require Secure.
    return "__Host-authportal_csrf" if current_portal().config.session.cookie_secure else "authportal_csrf"


def csrf_token() -> str:
    """The form token for this browser: an HMAC of its random CSRF cookie (set on first use)."""
    seed = request.cookies.get(csrf_cookie_name(), "")
    if len(seed) != 43:
        seed = g.get("new_csrf_seed") or secrets.token_urlsafe(32)
        g.new_csrf_seed = seed
    return _csrf_for(seed)


def _csrf_for(seed: str) -> str:
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, b"csrf:" + seed.encode(), hashlib.sha256).hexdigest()


def check_csrf() -> None:
    seed = request.cookies.get(csrf_cookie_name(), "")
    sent = request.form.get("csrf_token", "")
    # bytes: compare_digest raises on non-ASCII text, and a form field may hold anything
    if len(seed) != 43 or not hmac.compare_digest(sent.encode(), _csrf_for(seed).encode()):
        over_http = None if seed else _secure_cookie_lost_over_http()
        # the reason over http is for whoever set the portal up (a trial): it stays English
        abort(400, description=_("This form cannot work here: %(reason)s.", reason=over_http) if over_http else
              _("The form expired or was not sent by this site. Reload the page and try again."))


def _secure_cookie_lost_over_http() -> str | None:
    """Why the form's cookie did not come back, when the reason is that this request came over http.

    With session.cookie_secure the cookie is Secure, and a browser never sends it back over http: behind a
    plain-http proxy every form fails and reloading never helps. The page says so, and the log too, at most
    once a minute (each failed form would otherwise log the same line).
    """
    portal = current_portal()
    if not portal.config.session.cookie_secure or portal.proxies.scheme(request.environ) != "http":
        return None
    portal_url = portal.config.portal_url
    if portal_url.startswith("https://"):
        problem = f"the portal URL is https ({portal_url}) but this request came over http"
        fix = ("serve the portal over https (a proxy that terminates TLS must send X-Forwarded-Proto: https), "
               "or for a plain-http trial set server.portal_url to http://… and session.cookie_secure: false")
    else:
        problem = "session.cookie_secure is true but this request came over http"
        fix = "serve the portal over https, or for a plain-http trial set session.cookie_secure: false"
    reason = (f"{problem}: the browser does not send back the Secure cookie the form needs, "
              f"so reloading does not help; {fix}")
    once_a_minute = current_app.extensions.get("authportal.csrf_log") or current_app.extensions.setdefault(
        "authportal.csrf_log", RateLimitedLog(log, interval=60.0))
    once_a_minute.warning("secure_cookie_over_http", "%s %s refused: %s", request.method, request.path, reason)
    return reason


def busy(response: Response) -> Response:
    """A page answered at once because every password-check slot is taken: 503, try again in a second."""
    response.status_code = 503
    response.headers["Retry-After"] = "1"
    return response


def admitted(busy_page: Callable[[], Response]) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Run a password-checking POST only while request threads stay free for verifies.

    Beyond that the answer comes at once: `busy_page()` (the same form again, with a message) as a 503 with
    `Retry-After`, so the thread goes back to the verifies instead of waiting for a slot. GETs are not gated.
    """

    def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
        @functools.wraps(view)
        def gated(*args: Any, **kwargs: Any) -> Response:
            if request.method != "POST":
                return view(*args, **kwargs)
            gate = current_portal().login_gate
            if not gate.acquire(blocking=False):
                return busy(busy_page())
            try:
                return view(*args, **kwargs)
            finally:
                gate.release()

        return gated

    return decorate


def current_cookie() -> CookieDomain:
    """The cookie domain of this request: the one that covers the host the browser asked for (the portal is
    served on each domain's portal URL); the first one when none does."""
    config = current_portal().config
    return config.cookie_for(request.host) or config.cookie_domains[0]


def session_id() -> str | None:
    return request.cookies.get(current_cookie().name)


def current_session() -> dict[str, Any] | None:
    """The logged-in session (cached per request); None when anonymous or the store is down."""
    if "session" not in g:
        portal = current_portal()
        sid = session_id()
        try:
            data = portal.sessions.get(sid)
            if data and len(portal.config.cookie_domains) > 1 and data.get("cookie_domain") != current_cookie().domain:
                data = None  # a session of another cookie domain: not valid here
            g.session = portal.refresher(sid, data) if data and sid else None
        except SessionStoreUnavailable:
            g.session = None
            g.store_down = True
    return g.session


def set_session_cookie(response: Response, sid: str, remember: bool) -> None:
    cookie = current_cookie()
    response.set_cookie(
        cookie.name, sid, max_age=int(cookie.remember_me) if remember else None, path="/",
        domain=cookie.domain, secure=current_portal().config.session.cookie_secure, httponly=True, samesite="Lax",
    )


def clear_session_cookie(response: Response) -> None:
    cookie = current_cookie()
    response.delete_cookie(cookie.name, path="/", domain=cookie.domain,
                           secure=current_portal().config.session.cookie_secure, httponly=True, samesite="Lax")


def timestamp(seconds: float) -> str:
    """A stored time in the reader's language, to the minute ("Dec 3, 2026, 9:29 AM", "3. Dez. 2026, 09:29"), in
    UTC and saying so: the portal does not know the reader's time zone."""
    value, locale = datetime.fromtimestamp(seconds, UTC), get_locale()
    both = str(get_datetime_format("medium", locale=locale))  # "{1}, {0}": where the language puts date and time
    return (both.replace("{1}", format_date(value, "medium", locale=locale))
            .replace("{0}", format_time(value, "short", tzinfo=UTC, locale=locale)) + " UTC")


def duration(seconds: float, granularity: str = "second") -> str:
    """A length of time in the reader's language ("5 minutes", "5 Minuten"), rounded to its largest unit."""
    return format_timedelta(timedelta(seconds=seconds), granularity=granularity, threshold=1.0)


def page_script(name: str) -> str:
    """The URL of a script in static/ for a page's <script src>; the page's CSP then allows the portal's scripts
    (every other page forbids scripts altogether)."""
    g.page_script = True
    return url_for("static", filename=name)


def security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP_WITH_SCRIPT if g.get("page_script") else CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint not in ("static", "branding.asset"):  # those carry their own long cache
        response.headers["Cache-Control"] = "no-store"
    seed = g.get("new_csrf_seed")
    if seed:
        response.set_cookie(csrf_cookie_name(), seed, path="/", secure=current_portal().config.session.cookie_secure,
                            httponly=True, samesite="Lax")
    return response
