"""The OpenID Connect relying party: discovery, the authorization code flow with PKCE, and ID token validation.

joserfc checks the JOSE parts (the signature against the provider's JWKS, the registered claims); this module
decides what to ask and what to believe:

- the provider's metadata comes from `issuer/.well-known/openid-configuration` on first need, in the
  background, so the portal starts (and the login page renders) while the provider is down; a failed
  discovery is retried after `RETRY_AFTER`, and the button says the provider is unavailable meanwhile;
- an ID token must be signed with an asymmetric algorithm by a key of the provider's JWKS; a token naming an
  unknown `kid` makes the JWKS be fetched again (a key rotation), at most `JWKS_REFETCHES_PER_MINUTE` times a
  minute, so forged tokens with random kids cannot make the portal hammer the provider;
- `iss`, `aud` (and `azp` with several audiences), `exp`, `iat`, `sub` and the sign-in's `nonce` must hold;
- claims missing from the ID token (groups, e-mail) are read from the userinfo endpoint.

The client secret is only ever sent to the token endpoint: never logged, never in a URL or a page.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests
from flask_babel import gettext as _
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..config import LOOPBACK_HOSTS, OidcProviderConfig
from ..credentials import Refused
from . import BackendUnavailable

log = logging.getLogger("authportal.oidc")

#: After a failed discovery, the provider counts as down (and is not asked) for this long.
RETRY_AFTER = 10.0
#: An unknown `kid` refetches the JWKS at most this many times per minute (the first one at once: a rotation).
JWKS_REFETCHES_PER_MINUTE = 3
#: Clock skew allowed on `exp` and `iat`.
LEEWAY = 60
#: Signature algorithms accepted for ID tokens: asymmetric only (no `none`, no HMAC keyed by the client secret).
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_RESPONSE = 1 << 20


class ProviderUnavailable(BackendUnavailable):
    """The provider does not answer, or answers nonsense: try again later (a 503, never a ban)."""


class SignInRefused(Refused):
    """The provider's answer is not accepted: a tampered or foreign token, a used code, a refused user."""


@dataclass(frozen=True)
class Metadata:
    """What discovery says about a provider (only what the portal uses)."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    algorithms: tuple[str, ...]


@dataclass(frozen=True)
class Tokens:
    """A token endpoint's answer, the ID token validated (`claims`: its claims, with userinfo's added)."""

    id_token: str
    claims: dict[str, Any]
    access_token: str | None
    refresh_token: str | None


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _endpoint(value: Any, name: str, required: bool = True) -> str | None:
    """An endpoint from the metadata: https, or http on this machine (as for the issuer)."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ProviderUnavailable(f"discovery: {name} is missing")
    parts = urlsplit(value)
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        raise ProviderUnavailable(f"discovery: {name} is not an https URL")
    return value


class OidcClient:
    """One configured provider, as the portal talks to it. Thread-safe; one per worker."""

    def __init__(self, config: OidcProviderConfig, clock: Callable[[], float] = time.time,
                 http: requests.Session | None = None):
        self.config = config
        self.clock = clock
        self.http = http or requests.Session()
        self._metadata: Metadata | None = None
        self._failed_at: float | None = None
        self._keys: KeySet | None = None
        self._refetches: deque[float] = deque()
        self._lock = threading.Lock()
        self._discovering = False

    @property
    def name(self) -> str:
        return self.config.name

    # Discovery.

    def status(self) -> str:
        """"ready", "pending" (being asked now) or "down", without waiting: for the login page."""
        if self._metadata is not None:
            return "ready"
        if self._failed_at is not None and self.clock() - self._failed_at < RETRY_AFTER:
            return "down"
        with self._lock:
            if not self._discovering:
                self._discovering = True
                threading.Thread(target=self._discover_quietly, name=f"oidc-discovery-{self.name}",
                                 daemon=True).start()
        return "pending"

    def _discover_quietly(self) -> None:
        try:
            self.metadata()
        except ProviderUnavailable:
            pass  # logged by metadata(); the button says the provider is unavailable
        finally:
            self._discovering = False

    def metadata(self) -> Metadata:
        """The provider's metadata, discovered once. Raises ProviderUnavailable (then not asked for a while)."""
        found = self._metadata
        if found is not None:
            return found
        if self._failed_at is not None and self.clock() - self._failed_at < RETRY_AFTER:
            raise ProviderUnavailable(f"{self.name}: discovery failed recently, retrying later")
        try:
            document = self._get_json(f"{self.config.issuer}/.well-known/openid-configuration")
            if str(document.get("issuer", "")).rstrip("/") != self.config.issuer:
                raise ProviderUnavailable(f"discovery: the document is for issuer {document.get('issuer')!r}, "
                                          f"not {self.config.issuer!r}")
            offered = document.get("id_token_signing_alg_values_supported") or ["RS256"]
            algorithms = tuple(a for a in ASYMMETRIC if a in offered)
            if not algorithms:
                raise ProviderUnavailable("discovery: the provider signs ID tokens with no asymmetric algorithm")
            metadata = Metadata(
                authorization_endpoint=str(_endpoint(document.get("authorization_endpoint"), "authorization_endpoint")),
                token_endpoint=str(_endpoint(document.get("token_endpoint"), "token_endpoint")),
                jwks_uri=str(_endpoint(document.get("jwks_uri"), "jwks_uri")),
                userinfo_endpoint=_endpoint(document.get("userinfo_endpoint"), "userinfo_endpoint", required=False),
                end_session_endpoint=_endpoint(document.get("end_session_endpoint"), "end_session_endpoint",
                                               required=False),
                algorithms=algorithms)
        except ProviderUnavailable as exc:
            self._failed_at = self.clock()
            log.warning("OpenID provider %s: %s", self.name, exc)
            raise
        self._metadata, self._failed_at = metadata, None
        log.info("OpenID provider %s discovered at %s", self.name, self.config.issuer)
        return metadata

    def _get_json(self, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            response = self.http.get(url, headers=headers, timeout=self.config.timeout)
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"{url}: {type(exc).__name__}") from None
        return self._json(response, url)

    @staticmethod
    def _json(response: requests.Response, url: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise ProviderUnavailable(f"{url}: HTTP {response.status_code}")
        if len(response.content) > MAX_RESPONSE:
            raise ProviderUnavailable(f"{url}: answer too large")
        try:
            document = response.json()
        except ValueError:
            raise ProviderUnavailable(f"{url}: not JSON") from None
        if not isinstance(document, dict):
            raise ProviderUnavailable(f"{url}: not a JSON object")
        return document

    # The authorization code flow.

    def authorization_url(self, redirect_uri: str, state: str, nonce: str, challenge: str) -> str:
        """Where the browser goes to sign in at the provider (`redirect_uri`: the portal's callback for it).
        Raises ProviderUnavailable."""
        query = urlencode({
            "response_type": "code", "client_id": self.config.client_id, "redirect_uri": redirect_uri,
            "scope": " ".join(self.config.scopes), "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        endpoint = self.metadata().authorization_endpoint
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def exchange(self, redirect_uri: str, code: str, verifier: str, nonce: str) -> Tokens:
        """Trade an authorization code for tokens and validate the ID token. Raises SignInRefused,
        ProviderUnavailable."""
        if not code or len(code) > 2048:
            raise SignInRefused("bad_code", _("The provider's answer was not accepted. Try again."))
        answer = self._token_request({"grant_type": "authorization_code", "code": code,
                                      "redirect_uri": redirect_uri, "code_verifier": verifier})
        if answer is None:
            raise SignInRefused("bad_code", _("The sign-in at the provider expired or was already used. Try again."))
        return self._tokens(answer, nonce)

    def refresh(self, refresh_token: str) -> Tokens | None:
        """New tokens for a signed-in user (None: the provider refuses, the user is gone or signed out there).
        Raises ProviderUnavailable, SignInRefused (an invalid ID token)."""
        answer = self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token})
        return None if answer is None else self._tokens(answer, None, refresh_token)

    def _token_request(self, form: dict[str, str]) -> dict[str, Any] | None:
        """The token endpoint's JSON answer; None when it refuses the grant (invalid_grant)."""
        endpoint = self.metadata().token_endpoint
        secret = self.config.client_secret.get_secret_value() if self.config.client_secret else ""
        auth = None
        if self.config.token_endpoint_auth_method == "client_secret_basic":
            auth = (quote(self.config.client_id, safe=""), quote(secret, safe=""))  # RFC 6749 2.3.1
        else:
            form = dict(form, client_id=self.config.client_id, client_secret=secret)
        try:
            response = self.http.post(endpoint, data=form, auth=auth, timeout=self.config.timeout,
                                      headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"{endpoint}: {type(exc).__name__}") from None
        if response.status_code == 400:
            error = response.json().get("error") if "json" in response.headers.get("Content-Type", "") else None
            if error == "invalid_grant":
                return None
            raise ProviderUnavailable(f"{endpoint}: the provider refused the request ({error})")
        return self._json(response, endpoint)

    def _tokens(self, answer: dict[str, Any], nonce: str | None, refresh_token: str | None = None) -> Tokens:
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused("no_id_token", _("The provider sent no ID token."))
        claims = self.validate_id_token(id_token, nonce)
        access_token = answer.get("access_token") if isinstance(answer.get("access_token"), str) else None
        if access_token and (self.config.username_claim not in claims or self.config.groups_claim not in claims):
            claims = {**(self.userinfo(access_token, claims["sub"]) or {}), **claims}
        new_refresh = answer.get("refresh_token")
        return Tokens(id_token, claims, access_token,
                      new_refresh if isinstance(new_refresh, str) else refresh_token)

    def userinfo(self, access_token: str, subject: str) -> dict[str, Any] | None:
        """The userinfo endpoint's claims for `subject` (empty when the provider has none; None when it no longer
        accepts the access token). Raises ProviderUnavailable, SignInRefused."""
        endpoint = self.metadata().userinfo_endpoint
        if endpoint is None:
            return {}
        try:
            response = self.http.get(endpoint, timeout=self.config.timeout,
                                     headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"})
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"{endpoint}: {type(exc).__name__}") from None
        if response.status_code == 401:
            return None
        claims = self._json(response, endpoint)
        if claims.get("sub") != subject:  # OpenID Connect Core 5.3.2: must match the ID token's
            raise SignInRefused("userinfo_subject", _("The provider's answer was not accepted. Try again."))
        return claims

    # ID tokens.

    def validate_id_token(self, id_token: str, nonce: str | None) -> dict[str, Any]:
        """The claims of a genuine ID token for this client (`nonce`: the sign-in's; None at a refresh).
        Raises SignInRefused, ProviderUnavailable (the JWKS cannot be had)."""
        refused = SignInRefused("bad_id_token", _("The provider's answer was not accepted. Try again."))
        metadata = self.metadata()
        try:
            kid = jws.extract_compact(id_token.encode("ascii")).headers().get("kid")
        except (JoseError, ValueError, UnicodeError):
            raise refused from None
        keys = self._key_set(kid)
        try:
            token = jwt.decode(id_token, keys, algorithms=list(metadata.algorithms))
        except (JoseError, ValueError) as exc:
            log.info("OpenID provider %s: ID token refused: %s", self.name, type(exc).__name__)
            raise refused from None
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": self.config.issuer},
            "aud": {"essential": True, "value": self.config.client_id},
            "sub": {"essential": True}, "exp": {"essential": True}, "iat": {"essential": True},
        }
        if nonce is not None:
            options["nonce"] = {"essential": True, "value": nonce}
        try:
            jwt.JWTClaimsRegistry(now=int(self.clock()), leeway=LEEWAY, **options).validate(token.claims)
        except JoseError as exc:
            log.info("OpenID provider %s: ID token refused: %s", self.name, exc)
            raise refused from None
        audience = token.claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and token.claims.get("azp") != self.config.client_id:
            raise refused
        return dict(token.claims)

    def _key_set(self, kid: str | None) -> KeySet:
        """The provider's keys, fetched again when `kid` is not among them (rate-limited)."""
        keys = self._keys
        known = keys is not None and (kid is None or any(key.kid == kid for key in keys))
        if known:
            assert keys is not None
            return keys
        with self._lock:
            now = self.clock()
            while self._refetches and now - self._refetches[0] > 60:
                self._refetches.popleft()
            if self._keys is None or len(self._refetches) < JWKS_REFETCHES_PER_MINUTE:
                if self._keys is not None:
                    self._refetches.append(now)
                document = self._get_json(self.metadata().jwks_uri)
                try:
                    self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
                except (JoseError, ValueError, KeyError, TypeError):
                    raise ProviderUnavailable(f"{self.name}: the JWKS could not be read") from None
            assert self._keys is not None
            return self._keys

    # Logout.

    def end_session_url(self, id_token: str | None, post_logout_redirect_uri: str) -> str | None:
        """RP-initiated logout at the provider, when it offers it (None otherwise or while it is down)."""
        try:
            endpoint = self.metadata().end_session_endpoint
        except ProviderUnavailable:
            return None
        if endpoint is None:
            return None
        query = {"client_id": self.config.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        if id_token:
            query["id_token_hint"] = id_token
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"
