"""From an OpenID Provider's claims to the portal's user and session, and keeping that session current.

The protocol is in authentication/oidc.py; this module holds the portal's decisions about what a provider
says: which claim names the user and their groups, who may sign in at all (`allowed_domains`,
`allowed_groups`), whether the provider's `amr`/`acr` already proved a second factor (`two_factor_claims`),
and, within `refresh_interval`, what the provider says now (a refresh token grant, else userinfo): new groups,
or the end of the session when it no longer vouches for the user.

A session signed in here carries `oidc`: the provider's name, the subject, where its groups come from, and
sealed by the SecretBox the ID token (the logout's `id_token_hint`: it names the user to whoever holds it) and
the refresh and access tokens.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask_babel import gettext as _

from .authentication import BackendUnavailable, UserDetails, UserProvider
from .authentication.oidc import OidcClient, SignInRefused, Tokens
from .authentication.oidc_flows import SignInFlows
from .config import Config, OidcProviderConfig
from .identity import ONE_FACTOR, TWO_FACTOR, session_fields
from .refresh import Lookup, UserGone
from .secretbox import DecryptionError, SecretBox
from .storage import Storage


@dataclass(frozen=True)
class ProviderSignIn:
    """A sign-in the provider vouched for and the portal accepts: the user, the factor level, the session part."""

    details: UserDetails
    level: int
    oidc: dict[str, Any]


def _groups(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class IdentityProviders:
    """The configured providers (one `OidcClient` each), the sign-ins in progress, and their sessions' refresh."""

    def __init__(self, config: Config, storage: Storage, box: SecretBox, directory: UserProvider,
                 clock: Callable[[], float] = time.time):
        self.settings = config.authentication.oidc
        self.clients = {p.name: OidcClient(p, clock) for p in self.settings.providers}
        self.flows = SignInFlows(storage, clock)
        self.box = box
        self.directory = directory

    def get(self, name: str) -> OidcClient | None:
        return self.clients.get(name)

    def buttons(self) -> list[dict[str, str]]:
        """The login page's buttons: name, label, and status (ready, pending, down)."""
        return [{"name": c.name, "label": c.config.label, "status": c.status()} for c in self.clients.values()]

    # Signing in.

    def accept(self, client: OidcClient, tokens: Tokens) -> ProviderSignIn:
        """The portal's verdict on a validated sign-in. Raises SignInRefused, BackendUnavailable (LDAP groups)."""
        config = client.config
        details = self.details(config, tokens.claims)
        answered = set(_groups(tokens.claims.get("amr"))) | set(_groups(tokens.claims.get("acr")))
        level = TWO_FACTOR if answered & set(config.two_factor_claims) else ONE_FACTOR
        oidc = {"provider": config.name, "sub": tokens.claims["sub"], "groups_from": config.groups_from}
        return ProviderSignIn(details, level, self._sealed(oidc, details.username, tokens))

    def details(self, config: OidcProviderConfig, claims: dict[str, Any]) -> UserDetails:
        """Who the claims name, refused when the provider's rules here do not admit them."""
        username = claims.get(config.username_claim)
        if not isinstance(username, str) or not username.strip() or len(username) > 256:
            raise SignInRefused("no_username", _("%(name)s did not say who you are (%(claim)s).", name=config.label,
                                                 claim=config.username_claim))
        email = _text(claims.get("email"))
        if config.allowed_domains:
            domain = email.rpartition("@")[2].lower()
            if claims.get("email_verified") is False or domain not in config.allowed_domains:
                raise SignInRefused("domain_not_allowed", _(
                    "Your %(name)s account (%(account)s) may not sign in here: its e-mail domain is not allowed.",
                    name=config.label, account=email or username))
        if config.groups_from == "ldap":
            found = self.directory.get_details(username)
            if found is None:
                raise SignInRefused("unknown_user", _("%(user)s is not in the directory: ask an administrator.",
                                                      user=username))
            details = found
        else:
            details = UserDetails(username=username, display_name=_text(claims.get("name")), email=email,
                                  groups=_groups(claims.get(config.groups_claim)))
        if config.allowed_groups and not set(details.groups) & set(config.allowed_groups):
            raise SignInRefused("group_not_allowed", _(
                "Your %(name)s account (%(account)s) is not in a group that may sign in here.",
                name=config.label, account=username))
        return details

    def _sealed(self, oidc: dict[str, Any], username: str, tokens: Tokens) -> dict[str, Any]:
        """`oidc` with the tokens that outlive the sign-in, sealed to this provider and user."""
        associated = f"oidc:{oidc['provider']}:{username}".encode()
        for key, token in (("id_token", tokens.id_token), ("refresh", tokens.refresh_token),
                           ("access", tokens.access_token)):
            oidc[key] = (base64.b64encode(self.box.seal(token.encode(), associated)).decode()
                         if token else None)
        return oidc

    def _opened(self, oidc: dict[str, Any], username: str, key: str) -> str | None:
        sealed = oidc.get(key)
        if not sealed:
            return None
        try:
            return self.box.open(base64.b64decode(sealed), f"oidc:{oidc['provider']}:{username}".encode()).decode()
        except (DecryptionError, ValueError):
            return None

    # Keeping a session current.

    def lookup(self, name: str) -> Lookup:
        """What provider `name` says now about a session's user (refresh.DetailsRefresher's lookup)."""
        client = self.clients[name]

        def lookup(data: dict[str, Any]) -> dict[str, Any]:
            oidc = data["oidc"]
            try:
                tokens = self._current_tokens(client, data)
                if tokens is None:
                    raise UserGone(f"no longer signed in at {client.config.label}")
                if tokens.claims.get("sub") != oidc["sub"]:
                    raise UserGone(f"{client.config.label} names another user")
                details = self.details(client.config, tokens.claims)
            except SignInRefused as refused:
                raise UserGone(refused.reason) from None
            if details.username != data["user"]:
                raise UserGone(f"{client.config.label} names another user")
            fields = session_fields(details)
            fields["oidc"] = self._sealed(dict(oidc), details.username, tokens)
            return fields

        return lookup

    def _current_tokens(self, client: OidcClient, data: dict[str, Any]) -> Tokens | None:
        """New tokens by the refresh token, else the claims userinfo gives for the access token; None when the
        provider refuses both. Raises BackendUnavailable, SignInRefused."""
        oidc = data["oidc"]
        refresh = self._opened(oidc, data["user"], "refresh")
        if refresh is not None:
            return client.refresh(refresh)
        access = self._opened(oidc, data["user"], "access")
        if access is None:
            raise BackendUnavailable(f"{client.name}: the session holds no token to ask the provider with")
        claims = client.userinfo(access, oidc["sub"])
        if claims is None:
            return None
        return Tokens(self._opened(oidc, data["user"], "id_token") or "", claims, access, None)

    # Signing out.

    def logout_url(self, session: dict[str, Any], post_logout_redirect_uri: str) -> str | None:
        """The provider's end-session URL for a session signed in there (None: not one, or no such endpoint)."""
        oidc = session.get("oidc")
        client = self.clients.get(oidc.get("provider", "")) if oidc else None
        if client is None or oidc is None:
            return None
        return client.end_session_url(self._opened(oidc, session["user"], "id_token"), post_logout_redirect_uri)
