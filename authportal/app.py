"""The WSGI application: the verify endpoints to the lean `Verifier`, everything else to Flask.

`create_app(config)` builds the components (`portal.build_portal`) and the Flask
app with its views (login, logout, pages, health, metrics), and joins them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from .client_certificates import open_client_certificates
from .config import Config
from .identity_headers import HeaderTemplates
from .machine_auth import MachineAuthenticator
from .portal import Portal, build_portal
from .verify import FORWARD_AUTH_PATH, VERIFY_PATH, Verifier
from .views import register_views


class PortalApp:
    """WSGI entry point: verify paths to the lean handler, the rest to Flask."""

    def __init__(self, portal: Portal, flask_app: Flask):
        self.portal = portal
        self.flask = flask_app
        # A portal_url with a path (https://example.com/auth) is served under that prefix.
        self.prefix = urlsplit(portal.config.portal_url).path.rstrip("/")
        templates = HeaderTemplates(portal.config.identity.headers)
        self.verifier = Verifier(
            portal.config, portal.sessions, portal.rules,
            MachineAuthenticator(portal.checks, portal.tokens, portal.credentials, portal.token_credentials,
                                 templates),
            portal.metrics, portal.refresher, portal.proxies, templates,
            open_client_certificates(portal.config, portal.provider, portal.checks, portal.metrics, templates),
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if self.prefix:
            if path == self.prefix or path.startswith(self.prefix + "/"):
                path = environ["PATH_INFO"] = path[len(self.prefix):] or "/"
            environ["SCRIPT_NAME"] = self.prefix  # links and redirects carry the prefix
        if path == VERIFY_PATH or path == FORWARD_AUTH_PATH:
            return self.verifier(environ, start_response)
        return self.flask(environ, start_response)

    def close(self) -> None:
        self.portal.close()


def _asset_dir(name: str) -> Path:
    """templates/ and static/: inside the installed package (wheel), or at the top of a source checkout."""
    package = Path(__file__).resolve().parent
    installed = package / name
    return installed if installed.is_dir() else package.parent / name


def create_app(config: Config) -> PortalApp:
    portal = build_portal(config)
    flask_app = Flask(
        "authportal",
        template_folder=str(_asset_dir("templates")),
        static_folder=str(_asset_dir("static")),
        static_url_path="/static",
    )
    flask_app.config.update(SECRET_KEY=config.secret_key.get_secret_value(), MAX_CONTENT_LENGTH=64 * 1024)
    flask_app.extensions["authportal"] = portal
    register_views(flask_app)
    return PortalApp(portal, flask_app)


__all__ = ["create_app", "PortalApp"]
