"""The composition root: every component of a running portal, built from a validated Config.

Views reach the result as `current_portal()`, the verify path gets the pieces it
needs from `app.PortalApp`; nothing here imports a view, so the import direction
is one way: views -> portal -> components.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .authentication import UserProvider
from .authentication.users_file import UsersFileProvider, open_users_file
from .authorization import AccessRules
from .config import Config
from .credentials import CredentialChecks
from .health import Readiness
from .identity_links import IdentityLinks
from .identity_providers import IdentityProviders
from .machine_auth import CredentialCache
from .metrics import Metrics
from .notifier import Notifier, Outbox, open_notifier
from .password_policy import PasswordPolicy
from .passwords import PasswordHasher
from .proxies import TrustedProxies
from .redis_client import connect
from .refresh import DetailsRefresher, SessionRefresher, directory_lookup
from .regulation import Regulator, open_regulator
from .secretbox import SecretBox
from .security_keys import SecurityKeys
from .sessions import SessionStore, open_session_store
from .storage import Storage
from .tokens import TokenService
from .totp import TotpService

log = logging.getLogger("authportal")


@dataclass
class Portal:
    """Every component of a running portal; views reach it as `current_portal()`."""

    config: Config
    provider: UserProvider
    storage: Storage
    sessions: SessionStore
    rules: AccessRules
    regulator: Regulator
    totp: TotpService
    tokens: TokenService
    keys: SecurityKeys
    #: Seals secrets the portal holds for a moment (the old password while an expired one is changed).
    box: SecretBox
    #: What a new password must be; the e-mailed links; the mail (None: no notifier configured).
    policy: PasswordPolicy
    links: IdentityLinks
    notifier: Notifier | None
    outbox: Outbox
    credentials: CredentialCache
    token_credentials: CredentialCache
    metrics: Metrics
    proxies: TrustedProxies
    refresher: SessionRefresher
    #: Admits password checks while at least 2 request threads stay free for verifies.
    login_gate: threading.BoundedSemaphore
    #: The one path for every password and token check (bans, timing, metrics, audit).
    checks: CredentialChecks
    readiness: Readiness
    #: The OpenID Providers of the login page's buttons (authentication.oidc).
    identity_providers: IdentityProviders
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def build_provider(config: Config) -> UserProvider:
    auth = config.authentication
    if auth.backend == "ldap":
        from .authentication.ldap import LdapUserProvider

        assert auth.ldap is not None
        return LdapUserProvider(auth.ldap)
    assert auth.file is not None
    return open_users_file(auth.file, PasswordHasher(auth.file.password))


def build_readiness(config: Config, provider: UserProvider, storage: Storage, sessions: SessionStore,
                    metrics: Metrics, notifier: Notifier | None) -> Readiness:
    probes = {"users_file" if config.authentication.backend == "file" else "ldap": provider.health,
              "storage": storage.health}
    if config.session.redis is not None:
        probes["redis"] = sessions.backend.health
    optional = {}
    if notifier is not None:  # without mail, resets wait; sign-ins work: the portal is degraded, not down
        optional["notifier"] = notifier.health
    return Readiness(probes, on_down=lambda name: metrics.backend_errors.labels(name).inc(), optional=optional)


def build_portal(config: Config) -> Portal:
    """Open backends, migrate storage, compile rules. Raises BackendUnavailable/StorageUnavailable."""
    for warning in config.warnings():
        log.warning("%s", warning)
    storage = Storage(config.storage)
    storage.migrate()
    secret_key = config.secret_key.get_secret_value()
    box = SecretBox(secret_key)
    box.verify_key(storage)
    provider = build_provider(config)
    # One client (one pool) for sessions and bans: plain URL, TLS, ACL user or Sentinel (redis_client.py).
    redis_client = connect(config.session.redis) if config.session.redis is not None else None
    sessions = open_session_store(config.session, storage, redis_client, instance=config.server.instance)
    metrics = Metrics()
    hits, misses = metrics.cache_lookups.labels("hit"), metrics.cache_lookups.labels("miss")

    def count_lookup(hit: bool) -> None:
        (hits if hit else misses).inc()

    size = config.authentication.credentials_cache_size
    credentials = CredentialCache(config.authentication.credentials_cache_ttl, size, on_lookup=count_lookup)
    token_credentials = CredentialCache(config.session.cache_ttl, size, on_lookup=count_lookup)
    if isinstance(provider, UsersFileProvider):
        provider.on_change(credentials.clear)
        provider.on_change(token_credentials.clear)
        directory = DetailsRefresher(directory_lookup(provider), sessions, None)
        provider.on_change(directory.forget_all)
    else:
        assert config.authentication.ldap is not None
        directory = DetailsRefresher(directory_lookup(provider), sessions, config.authentication.ldap.refresh_interval)
    identity_providers = IdentityProviders(config, storage, box, provider)
    refresher = SessionRefresher(directory, {
        settings.name: DetailsRefresher(identity_providers.lookup(settings.name), sessions, settings.refresh_interval)
        for settings in config.authentication.oidc.providers})
    regulator = open_regulator(config, storage, redis_client)
    notifier = open_notifier(config.notifier) if config.notifier is not None else None
    login_gate = threading.BoundedSemaphore(config.server.threads - 2)
    portal = Portal(
        config=config, provider=provider, storage=storage, sessions=sessions,
        rules=AccessRules(config.access_control),
        regulator=regulator,
        totp=TotpService(storage, config.totp, box), tokens=TokenService(storage),
        keys=SecurityKeys(storage, config),
        credentials=credentials, token_credentials=token_credentials, metrics=metrics, proxies=TrustedProxies(config.server.trusted_proxies),
        refresher=refresher, login_gate=login_gate,
        checks=CredentialChecks(provider, regulator, metrics, login_gate, config.authentication.backend,
                                config.regulation.minimum_delay),
        box=box, policy=PasswordPolicy(config.password_policy), links=IdentityLinks(storage), notifier=notifier,
        outbox=Outbox(on_failure=lambda exc: metrics.backend_errors.labels("notifier").inc()),
        readiness=build_readiness(config, provider, storage, sessions, metrics, notifier),
        identity_providers=identity_providers,
    )
    portal.closers += [portal.outbox.close, storage.close, provider.close, sessions.close, refresher.close]
    if redis_client is not None:
        portal.closers.insert(0, redis_client.close)
    return portal
