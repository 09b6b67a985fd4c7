"""Error pages: a short message, never a stack trace; JSON for API paths."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger("authportal.http")


def _render(error: HTTPException):
    if request.path.startswith("/api/"):
        return jsonify(error=error.name, message=error.description), error.code
    return render_template("error.html", title=error.name, message=error.description), error.code


def _unexpected(error: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _render(InternalServerError(description="Something went wrong on our side. Please try again."))


def register(app: Flask) -> None:
    app.register_error_handler(HTTPException, _render)
    app.register_error_handler(Exception, _unexpected)
