"""The portal's WSGI app driven in-process, as a browser behind nginx would: fast HTTP-level tests.

`ProxiedClient` sends every request from 127.0.0.1, a trusted proxy. The
functions take the client they act for (a test with several browsers passes
each); `AuthActions` binds them to one client, flaskr-style: the `auth` fixture
(`auth.login("bob")`, `auth.verify(url)`, `auth.csrf()`, `auth.submit(path, **form)`).
"""
from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.test import Client, TestResponse

from tests.support.portal import USERS, csrf_from

#: The portal's and the protected app's host names, as nginx passes them on (both resolve nowhere: in-process).
PORTAL = "http://auth.example.test"
PROM = "http://app.example.test/prometheus/graph"
#: The two headers nginx's auth_request sends for a GET of PROM.
VERIFY_PROM = {"X-Original-URL": PROM, "X-Original-Method": "GET"}
SESSION_COOKIE = "authportal_session"


class ProxiedClient(Client):
    """In-process client whose requests arrive from 127.0.0.1, a trusted proxy, as they do behind nginx."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        kwargs.setdefault("environ_overrides", {}).setdefault("REMOTE_ADDR", "127.0.0.1")
        return super().open(*args, **kwargs)


def page(client: Client, path: str = "/", **kwargs: Any) -> TestResponse:
    """GET a portal page (redirects not followed)."""
    return client.get(path, base_url=PORTAL, **kwargs)


def csrf(client: Client, path: str = "/") -> str:
    """The CSRF token of the form on `path`, as a browser that loaded the page holds it."""
    return csrf_from(page(client, path).get_data(as_text=True))


def post_login(client: Client, user: str, password: str | None = None, rd: str | None = None,
               **extra: str) -> TestResponse:
    """Submit the login form as `user` (their real password unless one is given)."""
    form = {"username": user, "password": USERS[user]["password"] if password is None else password,
            "csrf_token": csrf(client), **extra}
    if rd:
        form["rd"] = rd
    return client.post("/login", base_url=PORTAL, data=form)


def session_cookie(client: Client) -> Any:
    """The portal's session cookie the client holds for example.test, or None."""
    return client.get_cookie(SESSION_COOKIE, domain="example.test")


def verify(client: Client, url: str = PROM, method: str = "GET", **headers: str) -> TestResponse:
    """nginx's auth_request for `method url`, with the client's cookies and any extra headers."""
    return client.get("/api/verify", base_url=PORTAL,
                      headers={"X-Original-URL": url, "X-Original-Method": method, **headers})


def verify_as(app: Flask, session_id: str, url: str = PROM) -> TestResponse:
    """A verify from another browser that presents `session_id` (a stolen or replayed cookie)."""
    other = ProxiedClient(app, use_cookies=False)
    return other.get("/api/verify", base_url=PORTAL,
                     headers={"X-Original-URL": url, "X-Original-Method": "GET",
                              "Cookie": f"{SESSION_COOKIE}={session_id}"})


def forward_auth(client: Client, host: str = "app.example.test", uri: str = "/prometheus/graph",
                 method: str = "GET", proto: str = "https", **headers: str) -> TestResponse:
    """Caddy's or Traefik's forward-auth question for `method proto://host uri`."""
    return client.get("/api/forward-auth", base_url=PORTAL, headers={
        "X-Forwarded-Proto": proto, "X-Forwarded-Host": host, "X-Forwarded-Uri": uri,
        "X-Forwarded-Method": method, **headers})


class AuthActions:
    """What a person (and the proxy in front of the portal) does, through one in-process client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def page(self, path: str = "/", **kwargs: Any) -> TestResponse:
        return page(self.client, path, **kwargs)

    def csrf(self, path: str = "/") -> str:
        return csrf(self.client, path)

    def login(self, user: str, password: str | None = None, rd: str | None = None, **extra: str) -> TestResponse:
        return post_login(self.client, user, password, rd, **extra)

    def submit(self, path: str, **form: str) -> TestResponse:
        """Load the form on `path` and post it back with its CSRF token and these fields."""
        return self.client.post(path, base_url=PORTAL, data={"csrf_token": self.csrf(path), **form})

    def logout(self, rd: str | None = None) -> TestResponse:
        return self.submit("/logout", **({"rd": rd} if rd else {}))

    def verify(self, url: str = PROM, method: str = "GET", **headers: str) -> TestResponse:
        return verify(self.client, url, method, **headers)

    def forward_auth(self, **request: str) -> TestResponse:
        return forward_auth(self.client, **request)

    @property
    def session_id(self) -> str | None:
        cookie = session_cookie(self.client)
        return None if cookie is None else cookie.value
