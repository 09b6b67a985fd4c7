"""Operations endpoints: readiness (`/api/health`), liveness (`/api/health/live`) and `/metrics`."""
from __future__ import annotations

import ipaddress

from flask import Blueprint, abort, jsonify, request
from werkzeug.wrappers import Response

from .shared import current_portal

bp = Blueprint("ops", __name__)


@bp.get("/api/health")
def health() -> Response:
    report = current_portal().readiness.report()
    response = jsonify(report)
    response.status_code = 503 if report["status"] == "down" else 200  # degraded: still serving sign-ins
    return response


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
        try:  # an unreadable X-Forwarded-For is a 400 of its own (proxies.UnreadableClientAddress)
            client = ipaddress.ip_address(portal.proxies.client_ip(request.environ))
        except ValueError:  # the peer itself is not an address (a Unix socket): nobody we know
            client = None
        if client is None or not any(client in net for net in config.networks):
            abort(403, description="Metrics are not served to this address.")
    return Response(portal.metrics.exposition(), mimetype="text/plain; version=0.0.4")
