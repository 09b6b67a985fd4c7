"""Error pages: a heading a person understands and what to do next, never a stack trace; JSON for API paths.

Werkzeug's names ("Bad Request", "Method Not Allowed") are for programs: the API
keeps them in its JSON, pages say what happened in plain words. A view that knows
more (the form expired, metrics are not served here) says so in the description,
which then replaces the generic advice.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify, make_response, render_template, request
from flask_babel import lazy_gettext as _l
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed
from werkzeug.wrappers import Response

from .shared import current_session

log = logging.getLogger("authportal.http")

#: status -> (heading, advice when the error carries no message of its own), translated when a page shows them
PAGES: dict[int, tuple[str, str]] = {
    400: (_l("Please try that again"),
          _l("The portal could not use what your browser sent. Go back, reload the page and try again.")),
    401: (_l("Please sign in"), _l("This page is for signed-in users. Sign in, then try again.")),
    403: (_l("You don't have access to this"),
          _l("Your account is not allowed here. If you need access, ask your administrator.")),
    404: (_l("Page not found"),
          _l("There is nothing at this address. Check it for typing mistakes, or start again from the portal.")),
    405: (_l("That can't be done from here"),
          _l("This address does not take that kind of request. Go back and use the buttons and links on the page.")),
    429: (_l("Too many attempts"), _l("Wait a minute, then try again.")),
    500: (_l("Something went wrong on our side"),
          _l("Please try again in a moment. If it keeps happening, tell your administrator the time it happened.")),
    503: (_l("Sign-in is unavailable right now"),
          _l("The portal cannot reach a service it needs. Please try again in a moment.")),
}
BUSY_HEADING = _l("The portal is busy")


def error_page(status: int, message: str | None = None, heading: str | None = None) -> Response:
    """The HTML error page for `status`: its human heading (or `heading`) and `message` or the usual advice."""
    default_heading, advice = PAGES.get(status, PAGES[500] if status >= 500 else PAGES[400])
    # str(): a lazy text in the request's language, escaped by the template like any other text
    page = render_template("error.html", status=status, title=str(heading or default_heading),
                           message=str(message or advice), signed_in=_signed_in())
    return make_response(page, status)


def _signed_in() -> bool:
    """Whether to offer "your account" rather than "sign in"; an error page never fails on this."""
    try:
        return current_session() is not None
    except Exception:  # the error being shown may be the session store's own
        return False


def _own_message(error: HTTPException) -> str | None:
    """The view's description, unless it is Werkzeug's stock text for the class."""
    stock = type(error).description
    return error.description if error.description and error.description != stock else None


def _render(error: HTTPException):
    if request.path.startswith("/api/"):
        return jsonify(error=error.name, message=None if error.description is None else str(error.description)), error.code
    response = error_page(error.code or 500, _own_message(error))
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _unexpected(error: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _render(InternalServerError())


def register(app: Flask) -> None:
    app.register_error_handler(HTTPException, _render)
    app.register_error_handler(Exception, _unexpected)
