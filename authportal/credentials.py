"""One path for every credential check: ban check, the check, the attempt recorded, its time evened out.

Every place that takes a password (the login form, HTTP Basic on the verify path, the re-authentication
before a second factor is changed, and the ones to come) calls `CredentialChecks.password`, API tokens
`CredentialChecks.token`, security keys `CredentialChecks.key` and client certificates
`CredentialChecks.certificate`; nothing else calls the user provider's `check_password` (a test reads the source
to hold that). The sequence is Authelia's first-factor handler's: a banned user or address is refused
without a check; a failure counts towards a ban; every attempt is counted and audited; and a refusal takes
about as long as a success, so the answer's time does not tell which accounts exist.

Checks run only while a slot of the password-check gate is free (`Busy` otherwise), so that logins and
Basic guesses never take the request threads the verify path needs; the padding sleeps inside that slot.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from flask_babel import gettext as _

from .audit import audit
from .authentication import BackendUnavailable, PasswordChangeRequired, UserDetails, UserProvider
from .regulation import RegulationUnavailable, Regulator
from .storage import StorageUnavailable

if TYPE_CHECKING:  # not at run time: `authportal serve` must choose the metrics' storage before they load
    from .metrics import Metrics

log = logging.getLogger("authportal.credentials")

T = TypeVar("T")

#: Basic on the verify path pads a refusal to the time of a successful check, never longer than this:
#: a Basic check holds a gate slot, not a long sleep (the login form's `minimum_delay` is for people).
BASIC_PADDING_CAP = 0.25


class Busy(Exception):
    """Every password-check slot is taken (a login burst): refuse now rather than hold a request thread."""


class Refused(Exception):
    """A check's refusal with its reason (`reason`: a short label for audit and metrics; `message`: for people)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class CheckTimer:
    """Pads a check to about the time of a successful one (plus a little jitter), like Authelia.

    It learns only from successes: an unknown user fails fast (no bind, no real hash), a known one with a
    wrong password takes as long as a success, so the successes' running average is what every refusal
    must take. The target is never below `minimum` and never above `cap`.
    """

    def __init__(self, minimum: float, cap: float | None = None):
        self.minimum = minimum
        self.cap = cap
        self._average = minimum
        self._lock = threading.Lock()

    @property
    def target(self) -> float:
        """How long a check takes at least now, before jitter."""
        target = max(self.minimum, self._average)
        return target if self.cap is None else min(target, self.cap)

    def learn(self, seconds: float) -> None:
        with self._lock:
            self._average = 0.9 * self._average + 0.1 * seconds

    def pad(self, started: float) -> None:
        target = self.target
        remaining = target + random.uniform(0, min(0.05, target / 10)) - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)


@dataclass(frozen=True)
class EntryPoint:
    """A place that checks a credential: how its attempts are named, counted and timed."""

    #: audit's `via` field
    name: str
    #: the audit event of a refused attempt
    failure_event: str
    #: whether a success is a sign-in (counted in authportal_logins_total{result="success"}): a scraper's
    #: Basic or a re-authentication is not
    success_is_login: bool
    #: None: not padded (API tokens: a random secret, looked up by its digest; nothing to learn from time)
    timer: CheckTimer | None


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """What a check found: `result` is success, bad_credentials, banned or backend_error."""

    result: str
    found: T | None = None
    #: Why a check refused, when it said (`Refused`), for the person and the audit log.
    refusal: Refused | None = None
    #: result "change_required": the password is right but must be changed before it signs in.
    change: PasswordChangeRequired | None = None

    @property
    def ok(self) -> bool:
        return self.result == "success"


class CredentialChecks:
    def __init__(self, provider: UserProvider, regulator: Regulator, metrics: Metrics,
                 gate: threading.BoundedSemaphore, backend: str, minimum_delay: float):
        """`backend`: authentication.backend (file or ldap), for metrics; `gate`: the password-check slots."""
        self.provider = provider
        self.regulator = regulator
        self.metrics = metrics
        self.gate = gate
        self.backend = backend
        people = CheckTimer(minimum_delay)
        self.form = EntryPoint("form", "login_failure", True, people)
        self.reauthentication = EntryPoint("reauthentication", "reauthentication_failure", False, people)
        self.password_change = EntryPoint("password_change", "password_change_failure", False, people)
        self.basic = EntryPoint("basic", "login_failure", False, CheckTimer(0.0, cap=BASIC_PADDING_CAP))
        self.api_token = EntryPoint("token", "login_failure", False, None)
        # A key's signature is checked in constant time by its library; its ids are random: nothing to pad.
        self.security_key = EntryPoint("security_key", "second_factor_failure", True, None)
        self.passkey = EntryPoint("passkey", "login_failure", True, None)
        # An OpenID Provider's callback: its state, code and token are random; nothing to learn from time.
        self.identity_provider = EntryPoint("oidc", "login_failure", True, None)
        # A certificate's checks (signature, dates, CRL, mapping) take no secret a timing could reveal.
        self.client_certificate = EntryPoint("client_certificate", "login_failure", False, None)

    def password(self, entry: EntryPoint, username: str, password: str, client_ip: str) -> Attempt[UserDetails]:
        """Check a user's password at `entry`. Raises Busy when no check slot is free."""
        return self._regulated(entry, username, client_ip, lambda: self.provider.check_password(username, password))

    def token(self, client_ip: str, check: Callable[[], T | None]) -> Attempt[T]:
        """Run an API token `check` (None: refused); only the client address counts towards a ban."""
        return self._regulated(self.api_token, None, client_ip, check)

    def certificate(self, client_ip: str, check: Callable[[], T]) -> Attempt[T]:
        """Run a client-certificate `check` (it raises Refused to refuse); only the client address counts
        towards a ban: the user a certificate names is not known until it was checked."""
        return self._regulated(self.client_certificate, None, client_ip, check)

    def key(self, entry: EntryPoint, username: str | None, client_ip: str, check: Callable[[], T]) -> Attempt[T]:
        """Run a security-key `check` for `username` (None: a passkey nobody owns); it raises Refused to refuse."""
        attempt = self._regulated(entry, username, client_ip, check)
        self.metrics.webauthn.labels(entry.name, attempt.result).inc()
        return attempt

    def provider_sign_in(self, client_ip: str, check: Callable[[], T], username_of: Callable[[T], str]) -> Attempt[T]:
        """Run an OpenID Provider callback's `check` (it raises Refused to refuse). Who signs in is known only once
        the provider answered: the address's ban is checked before, the user's after."""

        def checked() -> T:
            found = check()
            if self.regulator.is_banned(username_of(found), client_ip):
                raise Refused("banned", _("This sign-in was refused. Try again later."))
            return found

        return self._regulated(self.identity_provider, None, client_ip, checked)

    def _regulated(self, entry: EntryPoint, username: str | None, client_ip: str,
                   check: Callable[[], T | None]) -> Attempt[T]:
        if not self.gate.acquire(blocking=False):
            raise Busy()
        started = time.perf_counter()
        try:
            attempt = self._attempt(entry, username, client_ip, check, started)
            if entry.timer is not None and not attempt.ok:
                entry.timer.pad(started)
        finally:
            self.gate.release()
        self._count(entry, username, client_ip, attempt, started)
        return attempt

    def _attempt(self, entry: EntryPoint, username: str | None, client_ip: str, check: Callable[[], T | None],
                 started: float) -> Attempt[T]:
        try:
            if self.regulator.is_banned(username, client_ip):
                return Attempt("banned")
            try:
                found = check()
            except PasswordChangeRequired as change:
                if username is not None:
                    self.regulator.record_success(username, client_ip)  # the password was right
                return Attempt("change_required", change=change)
            except Refused as refusal:
                self._failed(username, client_ip)
                return Attempt("bad_credentials", refusal=refusal)
            if found is None:
                self._failed(username, client_ip)
                return Attempt("bad_credentials")
            if entry.timer is not None:
                entry.timer.learn(time.perf_counter() - started)
            if username is not None:
                self.regulator.record_success(username, client_ip)
            return Attempt("success", found)
        except (BackendUnavailable, RegulationUnavailable, StorageUnavailable) as exc:
            log.warning("%s check failed, denying: %s", entry.name, exc)
            self.metrics.backend_failed(exc, self.backend)
            return Attempt("backend_error")

    def _failed(self, username: str | None, client_ip: str) -> None:
        for kind in self.regulator.record_failure(username, client_ip):
            self.metrics.bans.labels(kind).inc()

    def _count(self, entry: EntryPoint, username: str | None, client_ip: str, attempt: Attempt[T],
               started: float) -> None:
        if attempt.ok and not entry.success_is_login:
            return
        self.metrics.logins.labels(attempt.result).inc()
        if entry.success_is_login:
            self.metrics.login_latency.observe(time.perf_counter() - started)
        if not attempt.ok:
            reason = "backend unavailable" if attempt.result == "backend_error" else attempt.result
            if attempt.refusal is not None:
                reason = attempt.refusal.reason
            audit(entry.failure_event, user=username, ip=client_ip, reason=reason, via=entry.name)
