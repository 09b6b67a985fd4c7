"""Prometheus metrics (`/metrics`), correct across several server workers.

When `PROMETHEUS_MULTIPROC_DIR` is set (serve sets it for more than one
worker) prometheus_client keeps values in shared files and `/metrics`
aggregates them.
"""
from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LOGIN_RESULTS = ("success", "bad_credentials", "banned", "totp_failed", "backend_error")
disable_created_metrics()  # `_created` series double the output and nobody graphs them
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.logins = Counter("authportal_logins", "First- and second-factor login attempts by result",
                              ["result"], registry=r)
        self.verifies = Counter("authportal_verify_decisions", "Verify endpoint answers by result and policy",
                                ["result", "policy"], registry=r)
        self.verify_latency = Histogram("authportal_verify_duration_seconds", "Time to answer a verify request",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.login_latency = Histogram("authportal_login_duration_seconds", "Time to answer a login attempt",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.backend_errors = Counter("authportal_backend_errors", "Failures talking to a backend",
                                      ["backend"], registry=r)
        self.webauthn = Counter("authportal_webauthn", "Security-key and passkey sign-ins by use and result",
                                ["use", "result"], registry=r)
        self.bans = Counter("authportal_bans", "Bans imposed by regulation, by the mode that fired (user, ip, user_ip)",
                            ["kind"], registry=r)
        self.cache_lookups = Counter("authportal_credentials_cache_lookups",
                                     "Basic/token credential cache lookups", ["result"], registry=r)
        # Set from the main process' tally at each worker start (workers are respawned on reload): a gauge.
        self.reloads = Gauge("authportal_config_reloads", "Configuration reloads (SIGHUP) since start, by result",
                             ["result"], registry=r, multiprocess_mode="max")
        # Series exist from the start (at 0), so increase() sees the first event after a restart.
        for result in LOGIN_RESULTS:
            self.logins.labels(result)
        for use in ("security_key", "passkey"):
            for result in ("success", "bad_credentials", "banned", "backend_error"):
                self.webauthn.labels(use, result)
        for kind in ("user", "ip", "user_ip"):  # regulation.KINDS: the mode that imposed the ban
            self.bans.labels(kind)
        for backend in ("users_file", "ldap", "redis", "storage", "notifier"):
            self.backend_errors.labels(backend)
        self._verify_children: dict[tuple[str, str], Counter] = {}

    def backend_failed(self, exc: Exception, auth_backend: str) -> None:
        """Count a failure of the backend `exc` came from (the auth backend unless storage or Redis)."""
        from .regulation import RegulationUnavailable
        from .storage import StorageUnavailable

        if isinstance(exc, RegulationUnavailable):
            backend = "redis"
        elif isinstance(exc, StorageUnavailable):
            backend = "storage"
        else:
            backend = "users_file" if auth_backend == "file" else auth_backend
        self.backend_errors.labels(backend).inc()

    def verify_done(self, result: str, policy: str, started: float) -> None:
        child = self._verify_children.get((result, policy))
        if child is None:
            child = self._verify_children[(result, policy)] = self.verifies.labels(result, policy)
        child.inc()
        self.verify_latency.observe(time.perf_counter() - started)

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
