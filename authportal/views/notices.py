"""One-time notices carried across a redirect ("You have been signed out"), in a short-lived cookie.

After sign-out there is no session to hold a flash message, and a flag in the URL
would outlive the moment: it stays in the history, in bookmarks and in links people
share, and anyone could send a link that claims the reader was signed out. The cookie
holds only a key from `MESSAGES` (never text from the request), lives on the portal's
own host for two minutes (long enough for a redirect through the application and
back to the sign-in page), and is cleared by the page that shows it. It works
without JavaScript.
"""
from __future__ import annotations

from flask import Flask, g, request
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from .shared import current_portal

#: Translated when shown, into the language of the page that shows them.
MESSAGES = {
    "signed_out": _l("You have been signed out."),
    "signed_out_one_domain": _l("You have been signed out here. Your sessions on the portal's other domains remain: "
                                "sign out there too."),
    "password_changed": _l("Your password was changed. Your other sessions have ended."),
    "password_reset": _l("Your password was changed. Sign in with the new one."),
    "session_ended": _l("That session was signed out."),
    "other_sessions_ended": _l("You were signed out everywhere else."),
    "sessions_ended": _l("The sessions were ended."),
    "ban_lifted": _l("The ban was lifted."),
    "token_revoked": _l("The token was revoked."),
}
LIFETIME = 120  # seconds


def _cookie_name() -> str:
    # __Host-: host-only, Secure, path / (a sibling subdomain cannot plant one)
    return "__Host-authportal_notice" if current_portal().config.session.cookie_secure else "authportal_notice"


def leave(response: Response, key: str) -> None:
    """Have the next page that shows notices say `MESSAGES[key]`."""
    assert key in MESSAGES
    response.set_cookie(_cookie_name(), key, max_age=LIFETIME, path="/", httponly=True, samesite="Lax",
                        secure=current_portal().config.session.cookie_secure)


def take() -> str | None:
    """The notice waiting for this browser, if any; it is cleared with this response."""
    key = request.cookies.get(_cookie_name())
    if key is None:
        return None
    g.notice_taken = True
    message = MESSAGES.get(key)
    return None if message is None else str(message)


def _clear_taken(response: Response) -> Response:
    if g.get("notice_taken"):
        response.delete_cookie(_cookie_name(), path="/", httponly=True, samesite="Lax",
                               secure=current_portal().config.session.cookie_secure)
    return response


def init_app(app: Flask) -> None:
    app.after_request(_clear_taken)
