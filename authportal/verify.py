"""The verify endpoints, a plain WSGI callable on the hot path (no Flask request machinery).

One decision function (`Verifier.decide`) and two thin adapters:
`/api/verify` (nginx auth_request, ingress-nginx auth-url: 200/401/403, never
a redirect) and `/api/forward-auth` (Caddy, Traefik, HAProxy: browsers get a
302 to the portal). Any exception denies: fail closed, never a 5xx.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .audit import audit
from .authorization import AccessRules, Decision, normalise_path
from .client_certificates import ClientCertificates, Presented, ProxyHeaderError, presented
from .config import Config, CookieDomain
from .credentials import Busy
from .identity import TWO_FACTOR, Identity
from .identity_headers import DEFAULT_TEMPLATES, HeaderTemplates
from .logs import RateLimitedLog
from .machine_auth import MachineAuthenticator
from .metrics import Metrics
from .proxies import TrustedProxies, UnreadableClientAddress
from .sessions import SessionStore, SessionStoreUnavailable

log = logging.getLogger("authportal.verify")

VERIFY_PATH = "/api/verify"
FORWARD_AUTH_PATH = "/api/forward-auth"
MAX_IDENTITIES = 100_000
#: What `_unauthorized` is told was refused when it was a client certificate: no Basic challenge, no login page.
CLIENT_CERTIFICATE = "client certificate"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to answer: status, headers, and for metrics the policy and the result label."""

    status: int
    headers: list[tuple[str, str]]
    policy: str
    result: str


class BadRequest(Exception):
    """The proxy did not say which request to check, or is not a trusted proxy: a 400 with the reason."""


class Verifier:
    def __init__(self, config: Config, sessions: SessionStore, rules: AccessRules,
                 machines: MachineAuthenticator, metrics: Metrics,
                 refresh: Callable[[str, dict[str, Any]], dict[str, Any] | None], proxies: TrustedProxies,
                 templates: HeaderTemplates = DEFAULT_TEMPLATES, certificates: ClientCertificates | None = None):
        self.templates = templates
        #: None: client_certificates.enable is false, and the X-SSL-Client-* headers are never read.
        self.certificates = certificates
        #: (identity, rule index) -> the headers of a rule that adds its own: built once per user and rule.
        self._rule_headers: dict[tuple[Identity, int], list[tuple[str, str]]] = {}
        self.sessions = sessions
        self.rules = rules
        self.machines = machines
        self.metrics = metrics
        self.refresh = refresh
        self.portal_url = config.portal_url
        self.basic_default = config.authentication.basic_auth
        self.www_authenticate = f'Basic realm="{config.authentication.basic_auth_realm}"'
        self.bearer_challenge = f'Bearer realm="{config.authentication.basic_auth_realm}", error="invalid_token"'
        self.proxies = proxies
        #: session id -> (the session record it was built from, its Identity): rebuilt when the record changes.
        self._identities: dict[str, tuple[dict[str, Any], Identity]] = {}
        self._styles: dict[str, ProxyStyle] = {VERIFY_PATH: AuthRequest(), FORWARD_AUTH_PATH: ForwardAuth()}
        self._bad_requests = RateLimitedLog(log, interval=60.0)
        self._config = config
        #: cookie name -> the pattern that finds it in a Cookie header
        self._cookie_res = {cookie.name: re.compile(r"(?:^|[;,]\s*)" + re.escape(cookie.name)
                                                    + r"=([A-Za-z0-9_\-]{43})(?![^;,\s])")
                            for cookie in config.cookie_domains}
        #: host -> its cookie domain (None: no portal cookie reaches it), cached: hosts are few
        self._cookie_domains: dict[str, CookieDomain | None] = {}
        #: several cookie domains: a session is valid only on the domain it was made on
        self._one_domain = len(config.cookie_domains) == 1

    # WSGI adapter

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        style = self._styles[environ.get("PATH_INFO", "")]
        try:
            outcome = self.decide(environ, style)
        except BadRequest as exc:
            reason = str(exc)
            self._bad_requests.warning(reason, "refused a verify request from %s (400): %s",
                                       environ.get("REMOTE_ADDR", "-"), reason)
            body = f"{reason}\n".encode()
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                               ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
            self.metrics.verify_done("bad_request", "none", started)
            return [body]
        except Exception:
            log.exception("verify failed; denying (fail closed)")
            outcome = Outcome(401, [], "none", "error")
        status = _STATUS_LINES[outcome.status]
        start_response(status, outcome.headers + [("Content-Length", "0"), ("Cache-Control", "no-store")])
        self.metrics.verify_done(outcome.result, outcome.policy, started)
        if log.isEnabledFor(logging.DEBUG):  # an access line per verify, only when asked for: the hot path
            log.debug("verify %s -> %d %s policy=%s request_id=%s", environ.get("PATH_INFO"),
                      outcome.status, outcome.result, outcome.policy, environ.get("HTTP_X_REQUEST_ID", "-"))
        return [b""]

    # The decision

    def decide(self, environ: dict[str, Any], style: ProxyStyle) -> Outcome:
        peer = environ.get("REMOTE_ADDR", "")
        if not self.proxies.is_trusted(peer):
            raise BadRequest(f"the peer {peer} is not in server.trusted_proxies, so the headers that say which "
                             "request to check are not believed: add the proxy's address there")
        original = style.read(environ)
        host, method = original.host, original.method
        try:  # the rules judge the path the proxy routes on; the login page's rd keeps the URL as sent
            target = normalise_path(original.target)
        except ValueError as exc:
            raise BadRequest(f"malformed original URL: {exc}") from None
        try:
            client_ip = self.proxies.client_ip(environ)
        except UnreadableClientAddress as exc:
            raise BadRequest(exc.description) from None
        url = original.url

        identity: Identity | None = None
        cookie = self._cookie_domain(host)
        machine_header = self._credential(environ)
        certificate = self._certificate(environ) if machine_header is None and self.certificates else None
        anonymous = machine_header is not None or certificate is not None  # decided without the session
        if not anonymous:
            identity = self._session_identity(environ, cookie)
        # the rules normalise the host (case, port, trailing dot) the same way as their own domains, cached
        decision = self.rules.decide(host, target, method, client_ip,
                                     identity.user if identity else None,
                                     identity.groups if identity else frozenset())
        basic_allowed = self.basic_default if decision.basic_auth is None else decision.basic_auth
        if machine_header is not None:  # decided anonymously so far: who asks depends on what this rule takes
            if not basic_allowed:
                # This rule takes no credentials on the request: the header is the application's (its own Basic
                # login, say), so the session decides, as if the header were not there.
                machine_header = None
                identity = self._session_identity(environ, cookie)
            elif decision.policy not in ("bypass", "deny"):
                try:
                    identity = self.machines.authenticate(machine_header, client_ip)
                except Busy:
                    log.debug("all password-check slots busy: refusing a %s check (retry)",
                              machine_header.split(" ")[0])
                    return Outcome(401, [("Retry-After", "1"), ("WWW-Authenticate", self.www_authenticate)],
                                   decision.policy, "busy")
        elif certificate is not None and decision.policy not in ("bypass", "deny"):
            try:
                identity = self._certificate_identity(certificate, client_ip)
            except Busy:
                log.debug("all credential-check slots busy: refusing a client certificate check (retry)")
                return Outcome(401, [("Retry-After", "1")], decision.policy, "busy")
        machine = machine_header is not None or certificate is not None
        if identity is not None and anonymous:  # decided anonymously so far: now who asks decides
            decision = self.rules.decide(host, target, method, client_ip, identity.user, identity.groups)
            if identity.limits is not None and not identity.limits.allow(method, target):
                self._audit_denied(identity, client_ip, url, method, decision.rule, environ,
                                   "outside the token's methods and resources")
                return Outcome(403, [], decision.policy, "forbidden")
        policy = decision.policy

        if policy == "bypass":
            return Outcome(200, self._headers(identity, decision) if identity else [], policy, "allowed")
        if policy == "deny":
            self._audit_denied(identity, client_ip, url, method, decision.rule, environ)
            return Outcome(403, [], policy, "forbidden")
        if identity is None:
            credentials = CLIENT_CERTIFICATE if certificate is not None else machine_header
            return self._unauthorized(url, style, basic_allowed, environ, method, policy, credentials, cookie)
        if policy == "two_factor" and identity.level < TWO_FACTOR:
            if machine:  # a script cannot answer a TOTP prompt
                self._audit_denied(identity, client_ip, url, method, decision.rule, environ, "second factor required")
                return Outcome(403, [], policy, "forbidden")
            return self._unauthorized(url, style, False, environ, method, policy, None, cookie)
        if decision.max_age is not None and not machine and not identity.fresh(
                decision.max_age, policy == "two_factor", time.time()):
            # a step-up rule: the sign-in is too old for this path; the portal asks "Confirm it's you"
            return self._unauthorized(url, style, False, environ, method, policy, None, cookie)
        return Outcome(200, self._headers(identity, decision), policy, "allowed")

    def _headers(self, identity: Identity, decision: Decision) -> list[tuple[str, str]]:
        """`identity.headers`, with the deciding rule's own headers when it has some."""
        if not decision.headers or decision.rule is None:
            return list(identity.headers)
        key = (identity, decision.rule)
        headers = self._rule_headers.get(key)
        if headers is None:
            if len(self._rule_headers) >= MAX_IDENTITIES:
                self._rule_headers.clear()
            headers = self._rule_headers[key] = list(identity.headers_with(decision.headers, self.templates))
        return headers

    def _credential(self, environ: dict[str, Any]) -> str | None:
        """The portal credential on the request (Authorization, else Proxy-Authorization); others' are ignored."""
        for key in ("HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION"):
            header = environ.get(key)
            if header and self.machines.ours(header):
                return header
        return None

    def _certificate(self, environ: dict[str, Any]) -> Presented | None:
        """The client certificate the proxy passed (client_certificates.enable only): one dict lookup without."""
        try:
            return presented(environ)
        except ProxyHeaderError as exc:
            raise BadRequest(str(exc)) from None

    def _certificate_identity(self, certificate: Presented, client_ip: str) -> Identity | None:
        assert self.certificates is not None
        try:
            return self.certificates.authenticate(certificate, client_ip)
        except ProxyHeaderError as exc:
            raise BadRequest(str(exc)) from None

    def _cookie_domain(self, host: str) -> CookieDomain | None:
        if host not in self._cookie_domains:
            if len(self._cookie_domains) >= MAX_IDENTITIES:
                self._cookie_domains.clear()
            self._cookie_domains[host] = self._config.cookie_for(host)
        return self._cookie_domains[host]

    def _session_identity(self, environ: dict[str, Any], cookie: CookieDomain | None) -> Identity | None:
        cookies = environ.get("HTTP_COOKIE")
        if not cookies or cookie is None:
            return None
        match = self._cookie_res[cookie.name].search(cookies)
        if match is None:
            return None
        session_id = match.group(1)
        try:
            data = self.sessions.get(session_id)
            if data is not None:
                data = self.refresh(session_id, data)
        except SessionStoreUnavailable as exc:
            log.warning("session store unavailable, answering as for an unknown session: %s", exc)
            return None
        if not data:
            return None
        if not self._one_domain and data.get("cookie_domain") != cookie.domain:
            return None  # a session of another cookie domain: not valid here
        known = self._identities.get(session_id)
        if known is not None and known[0] is data:  # the same session record as last time: same identity
            return known[1]
        identity = Identity.from_session(data, self.templates)
        if len(self._identities) >= MAX_IDENTITIES:
            self._identities.clear()
        self._identities[session_id] = (data, identity)
        return identity

    def _unauthorized(self, url: str, style: ProxyStyle, basic_allowed: bool, environ: dict[str, Any], method: str,
                      policy: str, credentials: str | None, cookie: CookieDomain | None) -> Outcome:
        portal_url = cookie.portal_url if cookie is not None else self.portal_url
        location = f"{portal_url}/?rd={quote(url, safe='')}"
        if method not in ("GET", "HEAD"):  # a step-up rule may be for this method only: the portal must know it
            location += f"&rm={method}"
        browser = method in ("GET", "HEAD") and "text/html" in environ.get("HTTP_ACCEPT", "") and credentials is None
        if style.redirects_browsers and browser:
            return Outcome(302, [("Location", location)], policy, "redirect")
        headers = [("Location", location)]
        if credentials is not None and credentials[:7].lower() == "bearer ":
            headers.append(("WWW-Authenticate", self.bearer_challenge))  # RFC 6750: the token was refused
        elif basic_allowed and not browser and credentials is not CLIENT_CERTIFICATE:
            headers.append(("WWW-Authenticate", self.www_authenticate))
        return Outcome(401, headers, policy, "unauthorized")

    def _audit_denied(self, identity: Identity | None, client_ip: str, url: str, method: str, rule: int | None,
                      environ: dict[str, Any], reason: str = "policy") -> None:
        audit("access_denied", user=identity.user if identity else None, ip=client_ip, url=url, method=method,
              rule="default" if rule is None else rule, reason=reason, user_agent=environ.get("HTTP_USER_AGENT"),
              request_id=environ.get("HTTP_X_REQUEST_ID"))


@dataclass(frozen=True, slots=True)
class OriginalRequest:
    """The request the proxy asks about, read once from the headers of one proxy style."""

    scheme: str
    host: str
    #: path plus raw ``?query``, as the client sent it (the login page's rd keeps it)
    target: str
    method: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.target}"


class ProxyStyle:
    """How one kind of proxy says which request it asks about, and how it wants a sign-in answered.

    Each style reads only its own header family, with no fallback and no default: a proxy that did not
    set a header leaves whatever the client sent, so a guess would judge the client's words. A header
    that is missing, empty, sent twice or unreadable is a 400. granian hands a value holding non-ASCII
    bytes to the application as an empty string, and joins a header sent twice with a bare comma.
    """

    #: Browsers that are not signed in get a 302 to the portal (forward-auth) or a 401 whose Location
    #: the proxy turns into a redirect itself (auth-request).
    redirects_browsers = False

    def read(self, environ: dict[str, Any]) -> OriginalRequest:
        raise NotImplementedError


class AuthRequest(ProxyStyle):
    """nginx ``auth_request`` and ingress-nginx ``auth-url`` (``/api/verify``): X-Original-URL and -Method."""

    def read(self, environ: dict[str, Any]) -> OriginalRequest:
        original = _header(environ, "X-Original-URL")
        if _JOINED_URL_RE.search(original):
            raise BadRequest("X-Original-URL was sent twice (the values arrive joined by a comma)")
        scheme, sep, rest = original.partition("://")
        if not sep:
            raise BadRequest("X-Original-URL must be an absolute http(s) URL")
        slash = rest.find("/")
        host, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
        return _checked(scheme, host, target, _method(environ, "X-Original-Method"), "X-Original-URL")


class ForwardAuth(ProxyStyle):
    """Caddy, Traefik, HAProxy (``/api/forward-auth``): X-Forwarded-Proto, -Host, -Uri and -Method."""

    redirects_browsers = True

    def read(self, environ: dict[str, Any]) -> OriginalRequest:
        scheme = _header(environ, "X-Forwarded-Proto")
        host = _header(environ, "X-Forwarded-Host")
        target = _header(environ, "X-Forwarded-Uri")
        if ",/" in target:
            raise BadRequest("X-Forwarded-Uri was sent twice (the values arrive joined by a comma)")
        return _checked(scheme, host, target, _method(environ, "X-Forwarded-Method"), "X-Forwarded-Proto/-Host/-Uri")


def _header(environ: dict[str, Any], name: str) -> str:
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    if value is None:
        raise BadRequest(f"missing {name}: the proxy must set it on every verify request (see examples/)")
    if not value:
        raise BadRequest(f"empty {name}: the proxy sent an empty value, or one with bytes that are not ASCII "
                         "(they cannot be read, so the request is refused rather than guessed)")
    return value


def _method(environ: dict[str, Any], name: str) -> str:
    method = _header(environ, name)
    if not _METHOD_RE.fullmatch(method):
        raise BadRequest(f"malformed {name} (sent twice, or not an HTTP method)")
    return method.upper()


def _checked(scheme: str, host: str, target: str, method: str, names: str) -> OriginalRequest:
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise BadRequest(f"malformed {names}: the scheme must be http or https")
    if not _HOST_RE.fullmatch(host):
        raise BadRequest(f"malformed {names}: not a host name")
    if not target.startswith("/") or any(c in target for c in "\r\n\x00 \t"):
        raise BadRequest(f"malformed {names}: the path must start with / and hold no spaces or control characters")
    return OriginalRequest(scheme, host.lower(), target, method)


_HOST_RE = re.compile(r"(?:[A-Za-z0-9\-._~]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
#: RFC 9110 token characters; a comma (two values joined) or a space is not one.
_METHOD_RE = re.compile(r"[A-Za-z!#$%&'*+\-.^_`|~0-9]{1,32}")
#: Where a second absolute URL starts after a comma: X-Original-URL sent twice.
_JOINED_URL_RE = re.compile(r",\s*https?://", re.IGNORECASE)


_STATUS_LINES = {200: "200 OK", 302: "302 Found", 401: "401 Unauthorized", 403: "403 Forbidden"}
