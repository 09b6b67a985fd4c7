"""What the HAProxy, Caddy and Traefik tests share: the portal behind a proxy, clients, and what reached the app.

The seed layout (tests/support/portal.py `SEED_RULES`) plus one open health path, so a
protected location can also be reached anonymously (a `bypass` rule answers 200
with no identity — the case where a proxy could let a client-sent Remote-User
through).
"""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

from tests.servers.upstream import RecordedRequest, Upstream
from tests.support.portal import SEED_RULES, USERS, PortalSetup, login

#: Prometheus' health endpoint, open to anyone (monitoring systems poll it).
OPEN_HEALTH_RULE = {"domain": ["app.example.test"], "resources": [r"^/prometheus/-/healthy(\?|$)"], "policy": "bypass"}

#: What a browser sends on a page load, and what curl or a scraper sends.
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
           "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"}
SCRIPT = {"Accept": "*/*", "User-Agent": "curl/7.88.1"}

#: Headers a client might send to impersonate someone. "Remote_User" is the same variable as
#: Remote-User for a WSGI, CGI or PHP app (REMOTE_USER / HTTP_REMOTE_USER).
FORGED_IDENTITY = {"Remote-User": "alice", "Remote-Groups": "admins", "Remote-Name": "Alice Admin",
                   "Remote-Email": "alice@example.test", "Remote_User": "alice", "Remote_Groups": "admins"}

IDENTITY_HEADERS = ("remote-user", "remote-groups", "remote-name", "remote-email")


def smuggled_urls(app_host: str) -> list[dict[str, str]]:
    """Headers that would make the portal check an open URL instead of the one requested, one set per try.

    The portal reads X-Original-URL (nginx) before X-Forwarded-*; behind a WSGI server
    "X_Forwarded_Uri" is the same environ key as X-Forwarded-Uri. A proxy must keep all
    of these from reaching the portal, or overwrite them with the real values.
    """
    open_url = f"http://{app_host}/public/open"
    return [
        {"X-Original-URL": open_url, "X-Original-Method": "GET"},
        {"X_Original_URL": open_url},
        {"X-Forwarded-Uri": "/public/open", "X-Forwarded-Host": app_host, "X-Forwarded-Method": "GET"},
        {"X_Forwarded_Uri": "/public/open"},
        {"X-Forwarded_Uri": "/public/open"},
    ]


def portal_behind_proxy(directory: Path, portal_url: str) -> PortalSetup:
    """The portal's config when clients reach it at `portal_url` through the proxy (auth.example.test)."""
    return PortalSetup(directory, overrides={
        "server": {"portal_url": portal_url},
        "access_control": {"rules": [OPEN_HEALTH_RULE, *SEED_RULES]},
    })


#: A client pretending to come from elsewhere (per-IP login bans, audit log).
FORGED_ADDRESS = {"X-Forwarded-For": "198.51.100.9", "X_Forwarded_For": "198.51.100.9", "X-Real-IP": "198.51.100.9"}


def audit_events(setup: PortalSetup, event: str) -> list[dict]:
    """The portal's audit records of one kind (log.audit_file, JSON lines), oldest first."""
    lines = (setup.directory / "audit.log").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("event") == event]


def reached(upstream: Upstream, path: str) -> list[RecordedRequest]:
    """The requests for `path` (with query) that got through to the app."""
    return [request for request in upstream.requests if request.path == path]


def rd_of(location: str) -> str:
    """The `rd` parameter of a login-page URL, decoded."""
    [rd] = parse_qs(urlsplit(location).query)["rd"]
    return rd


def logged_in(portal_url: str, user: str) -> requests.Session:
    """A client holding `user`'s session cookie (domain example.test), logged in through the proxy."""
    http = requests.Session()
    http.headers.update(BROWSER)
    answer = login(http, portal_url, user)
    assert answer.status_code == 302, answer.text
    return http


def identity_of(seen: RecordedRequest) -> dict[str, list[str]]:
    """The Remote-* headers that reached the app, names lowercased with "_" read as "-" (as WSGI/CGI would)."""
    found: dict[str, list[str]] = {}
    for name, value in seen.headers.items():
        key = name.lower().replace("_", "-")
        if key in IDENTITY_HEADERS:
            found.setdefault(key, []).append(value)
    return found


def assert_identity(seen: RecordedRequest, user: str) -> None:
    """The app received exactly the identity the portal vouches for, once, and nothing forged."""
    fields = USERS[user]
    assert identity_of(seen) == {"remote-user": [user], "remote-groups": [",".join(fields["groups"])],
                                 "remote-name": [fields["displayname"]], "remote-email": [fields["email"]]}


def assert_no_identity(seen: RecordedRequest) -> None:
    assert identity_of(seen) == {}, "identity headers reached the app"
