"""Connections to the directory: TLS, a bounded pool of service-account connections, failover between URLs.

Each pooled connection is used by one thread at a time; a reused one that broke is replaced once. A URL that
failed goes to the back of the list for a while, so a dead server costs one connect per `RETRY_FAILED_AFTER`,
not one per login. The directory going away is logged once, its return once (outage bookkeeping); meanwhile
every call raises `BackendUnavailable` and the caller denies.
"""
from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from ldap3 import AUTO_BIND_NONE, IP_V4_PREFERRED, NONE, SIMPLE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException

from ...config import LdapConfig, LdapTlsConfig
from .. import BackendUnavailable

log = logging.getLogger("authportal.ldap")

T = TypeVar("T")
#: Request controls as ldap3 takes them: (OID, criticality, value).
Controls = Sequence[tuple[str, bool, bytes | None]] | None

# --------------------------------------------------------------------------- TLS

_TLS_VERSIONS = {
    "TLS1.0": ssl.TLSVersion.TLSv1,
    "TLS1.1": ssl.TLSVersion.TLSv1_1,
    "TLS1.2": ssl.TLSVersion.TLSv1_2,
    "TLS1.3": ssl.TLSVersion.TLSv1_3,
}


def build_ssl_context(tls: LdapTlsConfig) -> ssl.SSLContext:
    """A client context: certificate and host name verified unless `tls.skip_verify`.

    The configuration checked that the files load; one that changed since is a start-up failure here.
    """
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"authentication.ldap.tls: cannot load certificates: {exc}") from None
    minimum = _TLS_VERSIONS[tls.minimum_version]
    if minimum < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS < 1.2 at the default level
    context.minimum_version = minimum
    if tls.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _ContextTls(Tls):
    """ldap3's Tls with our SSLContext: OpenSSL checks the host name / IP (ldap3's own check is bypassed)."""

    def __init__(self, context: ssl.SSLContext):
        super().__init__(validate=context.verify_mode)
        self.context = context

    def wrap_socket(self, connection: Connection, do_handshake: bool = False) -> None:  # called by ldap3
        _no_delay(connection.socket)
        connection.socket = self.context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host if self.context.check_hostname else None,
        )


# --------------------------------------------------------------------------- endpoints and failures


class Broken(Exception):
    """The connection or the server failed: discard the connection."""

    def __init__(self, reason: str, timed_out: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


@dataclass
class Endpoint:
    """One of the configured URLs, and when it last failed (0: not lately)."""

    url: str
    host: str
    port: int
    use_ssl: bool
    tls: Tls
    connect_timeout: float
    failed_at: float = 0.0

    def server(self) -> Server:
        # A new Server per connection: ldap3 keeps per-connection state (current_address) on the Server object.
        # IP_V4_PREFERRED tries every address of the name (IPv4 first); the default mode tries only the first one.
        return Server(self.host, port=self.port, use_ssl=self.use_ssl, tls=self.tls, get_info=NONE,
                      connect_timeout=self.connect_timeout, mode=IP_V4_PREFERRED)


@dataclass
class _Pooled:
    conn: Connection
    endpoint: Endpoint
    created: float
    last_used: float


@dataclass(frozen=True)
class BindAnswer:
    """The directory's answer to a user's bind: accepted, or refused with its result code and message."""

    accepted: bool
    code: int | None = None
    description: str = ""
    message: str = ""
    #: Response controls by OID: their raw values (e.g. the password policy control's).
    controls: Mapping[str, bytes] = field(default_factory=dict)


#: Bind results that refuse this user (not a directory failure): invalidCredentials, inappropriateAuthentication,
#: insufficientAccessRights, unwillingToPerform.
_REFUSED_BIND_CODES = (49, 48, 50, 53)
_TLS_REQUIRED = "the directory requires TLS for simple binds (use ldaps:// or start_tls)"


# --------------------------------------------------------------------------- the pool


class DirectoryPool:
    """Service-account connections shared by all request threads, and short-lived connections for user binds."""

    #: A pooled connection idle longer than this is closed rather than reused (firewalls drop idle TCP).
    MAX_IDLE = 60.0
    #: Connections are recycled after this long, so the pool drifts back to the first URL after a failover.
    MAX_AGE = 600.0
    #: A URL that failed is tried after the others for this long.
    RETRY_FAILED_AFTER = 30.0

    def __init__(self, config: LdapConfig):
        self.start_tls = config.start_tls
        self.size = config.pool_size
        self.timeout = config.timeout
        #: Whole seconds: ldap3 packs the receive timeout into SO_RCVTIMEO as an integer.
        self.receive_timeout = max(1, math.ceil(config.timeout))
        self._service_user = config.user
        self._service_password = config.password.get_secret_value() if config.password is not None else None
        tls = _ContextTls(build_ssl_context(config.tls))
        self._endpoints = [_endpoint(url, tls, config.timeout) for url in config.url]
        self._idle: list[_Pooled] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.pool_size)
        self._closed = False
        self._down_since: float | None = None

    def run(self, operation: Callable[[Connection, Endpoint], T]) -> T:
        """Run `operation` on a pooled service connection; retry once on a fresh one if a reused one broke."""
        if self._closed:
            raise BackendUnavailable("LDAP provider is closed")
        if not self._slots.acquire(timeout=self.timeout):
            raise BackendUnavailable(
                f"LDAP directory unavailable: all {self.size} connections busy for {self.timeout:g}s"
            )
        try:
            pooled = self._take_idle()
            reused = pooled is not None
            while True:
                if pooled is None:
                    pooled = self._connect_service()
                try:
                    result = operation(pooled.conn, pooled.endpoint)
                except Broken as exc:
                    endpoint = pooled.endpoint
                    _quietly_unbind(pooled.conn)
                    self._mark_failed(endpoint)
                    pooled = None
                    if reused and not exc.timed_out:
                        reused = False  # a stale pooled connection: try once more on a new one
                        continue
                    raise self._unavailable(f"{endpoint.url}: {exc.reason}") from None
                except BaseException:
                    _quietly_unbind(pooled.conn)
                    raise
                self._give_back(pooled)
                self._mark_up()
                return result
        finally:
            self._slots.release()

    def bind(self, dn: str, password: str, first: Endpoint, controls: Controls = None) -> BindAnswer:
        """Bind as `dn` on a new connection, to `first` (where the user was found), else the other URLs.

        Returns the answer when the directory accepted or refused this user; raises BackendUnavailable
        when no server could say.
        """
        return self.session(first, None, dn=dn, password=password, controls=controls)[0]

    def session(self, first: Endpoint, operation: Callable[[Connection], T] | None, *, dn: str | None = None,
                password: str | None = None, controls: Controls = None) -> tuple[BindAnswer, T | None]:
        """A short-lived connection bound as `dn` (default: the service account), to `first`, else the other URLs;
        `operation` runs on it (writes allowed) once the bind is accepted, and its result comes back with the answer.

        A refused user bind is an answer (the operation does not run); a refused service-account bind, or a
        server that fails before the operation, raises BackendUnavailable. The operation is never retried on
        another server: a write may have been applied before the connection broke.
        """
        as_service = dn is None
        user, secret = (self._service_user, self._service_password) if as_service else (dn, password)
        if as_service and not user:
            raise BackendUnavailable("LDAP directory writes need the service account (authentication.ldap.user)")
        if not secret:  # an empty password is an unauthenticated bind, which many servers accept
            raise ValueError("refusing to send a bind without a password")
        failures: list[str] = []
        for endpoint in [first] + [e for e in self._ordered_endpoints() if e is not first]:
            conn = Connection(endpoint.server(), user=user, password=secret, authentication=SIMPLE,
                              client_strategy=SYNC, auto_bind=AUTO_BIND_NONE, raise_exceptions=False,
                              read_only=operation is None, receive_timeout=self.receive_timeout, auto_referrals=False,
                              check_names=False)
            try:
                try:
                    self._open(conn)
                    accepted = conn.bind(read_server_info=False, controls=controls)
                    result = dict(conn.result or {})
                except Broken as exc:
                    failures.append(f"{endpoint.url}: {exc.reason}")
                    self._mark_failed(endpoint)
                    continue
                except (LDAPException, OSError) as exc:
                    failures.append(f"{endpoint.url}: {describe(exc)}")
                    self._mark_failed(endpoint)
                    continue
                answer = BindAnswer(accepted=bool(accepted), code=result.get("result"),
                                    description=str(result.get("description") or ""),
                                    message=result.get("message") or "", controls=response_controls(result))
                if answer.accepted:
                    return answer, None if operation is None else self._operate(endpoint, conn, operation)
                if answer.code in _REFUSED_BIND_CODES and not as_service:
                    return answer, None
                if answer.code == 8:  # strongerAuthRequired
                    failures.append(f"{endpoint.url}: {_TLS_REQUIRED}")
                else:
                    who = f"service account bind as {user!r}" if as_service else "user bind"
                    failures.append(f"{endpoint.url}: " + f"{who} failed: {answer.description} {answer.message}".strip())
                break
            finally:
                _quietly_unbind(conn)
        raise self._unavailable("; ".join(failures))

    def _operate(self, endpoint: Endpoint, conn: Connection, operation: Callable[[Connection], T]) -> T:
        try:
            return operation(conn)
        except Broken as exc:
            self._mark_failed(endpoint)
            raise self._unavailable(f"{endpoint.url}: {exc.reason}") from None
        except (LDAPException, OSError) as exc:
            self._mark_failed(endpoint)
            raise self._unavailable(f"{endpoint.url}: {describe(exc)}") from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for pooled in idle:
            _quietly_unbind(pooled.conn)

    # ------------------------------------------------------------------ connections
    def _open(self, conn: Connection) -> None:
        try:
            conn.open(read_server_info=False)
            _no_delay(conn.socket)
            if self.start_tls:
                conn.start_tls(read_server_info=False)
        except LDAPException as exc:
            raise Broken(describe(exc), timed_out=is_timeout(exc)) from None
        except (OSError, ssl.SSLError) as exc:
            raise Broken(describe(exc), timed_out=isinstance(exc, socket.timeout)) from None

    def _ordered_endpoints(self) -> list[Endpoint]:
        now = time.monotonic()
        fresh = [e for e in self._endpoints if now - e.failed_at >= self.RETRY_FAILED_AFTER]
        failed = sorted((e for e in self._endpoints if e not in fresh), key=lambda e: e.failed_at)
        return fresh + failed

    def _mark_failed(self, endpoint: Endpoint) -> None:
        endpoint.failed_at = time.monotonic()

    def _connect_service(self) -> _Pooled:
        failures = []
        for endpoint in self._ordered_endpoints():
            conn = Connection(endpoint.server(), user=self._service_user, password=self._service_password,
                              authentication=SIMPLE if self._service_user else None, client_strategy=SYNC,
                              auto_bind=AUTO_BIND_NONE, raise_exceptions=False, read_only=True,
                              receive_timeout=self.receive_timeout, auto_referrals=False, check_names=False,
                              return_empty_attributes=True)
            try:
                self._open(conn)
                if self._service_user:
                    self._bind_service(conn)
            except Broken as exc:
                _quietly_unbind(conn)
                self._mark_failed(endpoint)
                failures.append(f"{endpoint.url}: {exc.reason}")
                continue
            now = time.monotonic()
            endpoint.failed_at = 0.0
            return _Pooled(conn=conn, endpoint=endpoint, created=now, last_used=now)
        raise self._unavailable("; ".join(failures))

    def _bind_service(self, conn: Connection) -> None:
        try:
            bound = conn.bind(read_server_info=False)
        except LDAPException as exc:
            raise Broken(describe(exc), timed_out=is_timeout(exc)) from None
        if not bound:
            result = conn.result or {}
            if result.get("result") == 8:
                raise Broken(_TLS_REQUIRED)
            raise Broken(f"service account bind as {self._service_user!r} failed: "
                         f"{result.get('description')} {result.get('message', '')}".strip())

    def _take_idle(self) -> _Pooled | None:
        now = time.monotonic()
        stale = []
        taken = None
        with self._lock:
            while self._idle:
                pooled = self._idle.pop()
                if (pooled.conn.closed or now - pooled.last_used > self.MAX_IDLE
                        or now - pooled.created > self.MAX_AGE):
                    stale.append(pooled)
                    continue
                taken = pooled
                break
        for pooled in stale:
            _quietly_unbind(pooled.conn)
        return taken

    def _give_back(self, pooled: _Pooled) -> None:
        pooled.last_used = time.monotonic()
        with self._lock:
            if not self._closed:
                self._idle.append(pooled)
                return
        _quietly_unbind(pooled.conn)

    # ------------------------------------------------------------------ outage bookkeeping
    def _unavailable(self, reason: str) -> BackendUnavailable:
        """Note the outage (logged when it starts) and the error to raise."""
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
        if first:
            log.warning("LDAP directory unavailable: %s — logins are denied until it answers again", reason)
        else:
            log.debug("LDAP directory still unavailable: %s", reason)
        return BackendUnavailable(f"LDAP directory unavailable: {reason}")

    def _mark_up(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("LDAP directory reachable again after %.1fs", time.monotonic() - since)


# --------------------------------------------------------------------------- helpers


def _endpoint(url: str, tls: Tls, connect_timeout: float) -> Endpoint:
    """The configuration checked the URL: scheme ldap(s), a host, a valid port."""
    parts = urlsplit(url)
    use_ssl = parts.scheme == "ldaps"
    return Endpoint(url=f"{parts.scheme}://{parts.netloc}", host=parts.hostname or "",
                    port=parts.port or (636 if use_ssl else 389), use_ssl=use_ssl, tls=tls,
                    connect_timeout=connect_timeout)


_TIMEOUT_WORDS = ("timed out", "timeout")


def is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in _TIMEOUT_WORDS)


def describe(exc: BaseException) -> str:
    """A short reason for the log and the health check: ldap3's messages wrap the useful part."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ssl.SSLCertVerificationError):
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl.c", 1)[0].strip(" :")
        return f"TLS certificate verification failed ({detail or text})"
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if is_timeout(exc):
        return "timed out"
    for prefix in ("socket connection error while opening: ", "socket ssl wrapping error: ", "wrap socket error: "):
        text = text.replace(prefix, "")
    return text or type(exc).__name__


def _no_delay(sock: socket.socket | None) -> None:
    """Small request/response exchanges: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to TLS logins."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def response_controls(result: Mapping[str, object]) -> dict[str, bytes]:
    """The raw values of the controls in an ldap3 result (`{oid: {"value": bytes, …}}`)."""
    found = result.get("controls")
    if not isinstance(found, Mapping):
        return {}
    values = {}
    for oid, control in found.items():
        value = control.get("value") if isinstance(control, Mapping) else None
        values[str(oid)] = value if isinstance(value, bytes) else b""
    return values


def _quietly_unbind(conn: Connection) -> None:
    try:
        if not conn.closed:
            conn.unbind()
    except Exception:
        try:
            conn.strategy.close()
        except Exception as exc:
            log.debug("closing an LDAP connection: %s", exc)
