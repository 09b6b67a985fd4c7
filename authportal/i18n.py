"""The language a page speaks: Flask-Babel with the portal's own catalogs, and the picker that changes it.

Every user-visible string goes through gettext (`_()` in Python and templates);
the catalogs live in `authportal/translations/` and ship compiled (`.mo`) in the
package, so an installed wheel serves them without a build step. The language
of a request is, in order: the picker's cookie, the browser's `Accept-Language`,
`i18n.default_locale`. A string a catalog lacks falls back to English.

Only the Flask side translates: the verify endpoints answer proxies, not people
(their 401/403 have no body; a 400's reason is for the operator's proxy log).
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from flask import Blueprint, Flask, current_app, redirect, request
from flask_babel import Babel, get_locale
from werkzeug.wrappers import Response

from .languages import BY_TAG, LANGUAGES, Language, find

TRANSLATIONS = Path(__file__).resolve().parent / "translations"
#: How long the picker's choice is remembered (seconds): a year, like Authelia's language setting.
COOKIE_LIFETIME = 365 * 24 * 3600


def cookie_name(secure: bool) -> str:
    # __Host-: host-only and Secure, so a sibling subdomain cannot choose the language for this portal
    return "__Host-authportal_lang" if secure else "authportal_lang"


def _negotiate(accept: list[str]) -> Language | None:
    """The best shipped language for the browser's list, in its order: exact tags first, then the language alone
    (`de-AT` -> German, `pt` -> Brazilian Portuguese, `zh-TW` -> Simplified Chinese rather than nothing)."""
    for wanted in accept:
        parts = wanted.replace("_", "-").lower().split("-")
        exact = BY_TAG.get("-".join(parts))
        if exact is not None:
            return exact
        same_language = next((lang for lang in LANGUAGES if lang.tag.lower().split("-")[0] == parts[0]), None)
        if same_language is not None:
            return same_language
    return None


def current_language() -> Language:
    """This request's language (see the module docstring)."""
    portal = current_app.extensions["authportal"]
    chosen = find(request.cookies.get(cookie_name(portal.config.session.cookie_secure)))
    if chosen is None:
        chosen = _negotiate([value for value, _quality in request.accept_languages])
    return chosen or find(portal.config.i18n.default_locale) or LANGUAGES[0]


def _select_locale() -> str:
    return current_language().catalog


def page_language() -> dict[str, object]:
    """What the layout needs: the page's `lang` and `dir`, and the picker's choices."""
    locale = get_locale()
    language = find(str(locale)) if locale is not None else None
    language = language or LANGUAGES[0]
    return {"page_lang": language.tag, "page_dir": language.direction, "languages": LANGUAGES,
            "language": language, "language_return": _return_path()}


def _return_path() -> str:
    """Where the picker leads back to: this page, or for the answer to a form (a POST) the portal with its rd."""
    if request.method == "GET":
        return request.full_path if request.query_string else request.path
    rd = request.form.get("rd")
    return "/?" + urlencode({"rd": rd}) if rd else "/"


bp = Blueprint("i18n", __name__)


@bp.route("/language")
def choose() -> Response:
    """The picker: remember `lang` in a cookie and go back to `next` (a path on this portal, nothing else)."""
    language = find(request.args.get("lang"))
    back = request.args.get("next", "/")
    if not back.startswith("/") or back.startswith("//") or "\\" in back or any(c < " " for c in back):
        back = "/"
    response = redirect(request.script_root + back, 303)
    if language is not None:
        secure = current_app.extensions["authportal"].config.session.cookie_secure
        response.set_cookie(cookie_name(secure), language.catalog, max_age=COOKIE_LIFETIME, path="/",
                            secure=secure, httponly=True, samesite="Lax")
    return response


def init_app(app: Flask) -> None:
    Babel(app, locale_selector=_select_locale, default_translation_directories=str(TRANSLATIONS))
    app.register_blueprint(bp)
    app.context_processor(page_language)
