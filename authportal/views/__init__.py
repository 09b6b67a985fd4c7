"""Flask side of the portal: pages, login/logout, account, health and metrics."""
from __future__ import annotations

from flask import Flask

from .. import branding, i18n
from . import account, admin, errors, login, notices, oidc, ops, passwords, security_keys, sessions
from .shared import csrf_token, duration, page_script, security_headers, timestamp


def register_views(app: Flask) -> None:
    i18n.init_app(app)
    config = app.extensions["authportal"].config
    branding.init_app(app, branding.Brand(config.branding, config.theme))
    app.register_blueprint(login.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(security_keys.bp)
    app.register_blueprint(passwords.bp)
    app.register_blueprint(sessions.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(oidc.bp)
    errors.register(app)
    notices.init_app(app)
    app.after_request(security_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["page_script"] = page_script
    app.jinja_env.filters["timestamp"] = timestamp
    app.jinja_env.filters["duration"] = duration
