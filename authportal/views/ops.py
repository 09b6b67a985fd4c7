"""Operations endpoints: readiness (`/api/health`), liveness (`/api/health/live`) and `/metrics`."""
from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from ..sessions import RedisSessions
from . import current_portal

bp = Blueprint("ops", __name__)

#: Readiness answers are reused this long, so a storm of probes does not hammer LDAP or Redis.
HEALTH_CACHE_SECONDS = 1.5
_health_lock = threading.Lock()
_health_cache: dict[int, tuple[float, dict[str, Any]]] = {}


def readiness() -> dict[str, Any]:
    portal = current_portal()
    key = id(portal)
    cached = _health_cache.get(key)
    if cached and time.monotonic() - cached[0] < HEALTH_CACHE_SECONDS:
        return cached[1]
    with _health_lock:
        backend = "users_file" if portal.config.authentication.backend == "file" else "ldap"
        probes = {backend: portal.provider.health, "storage": portal.storage.health}
        if isinstance(portal.sessions.backend, RedisSessions):
            probes["redis"] = portal.sessions.backend.health
        checks = {}
        for name, probe in probes.items():
            error = probe()
            checks[name] = {"status": "ok"} if error is None else {"status": "down", "error": error}
            if error is not None:
                portal.metrics.backend_errors.labels(name).inc()
        report = {"status": "ok" if all(c["status"] == "ok" for c in checks.values()) else "down",
                  "checks": checks}
        _health_cache[key] = (time.monotonic(), report)
        return report


@bp.get("/api/health")
def health() -> Response:
    report = readiness()
    return jsonify(report), 200 if report["status"] == "ok" else 503


@bp.get("/api/health/live")
def live() -> Response:
    return jsonify(status="ok")


@bp.get("/metrics")
def metrics() -> Response:
    portal = current_portal()
    config = portal.config.metrics
    if not config.enabled:
        abort(404)
    if config.networks:
        client = ipaddress.ip_address(portal.proxies.client_ip(request.environ))
        if not any(client in net for net in config.networks):
            abort(403, description="Metrics are not served to this address.")
    return Response(portal.metrics.exposition(), mimetype="text/plain; version=0.0.4")
