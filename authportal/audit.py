"""Audit events: who logged in, out, failed, was banned or denied — to the `authportal.audit` logger.

Each event is one record whose `audit` attribute holds the fields; the JSON
formatter writes them as one line. Callers pass only safe fields: the
SecretFilter in logs.py is the second line of defence.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import has_request_context, request

audit_log = logging.getLogger("authportal.audit")


def audit(event: str, **fields: Any) -> None:
    """Record one audit event (`login_success`, `login_failure`, `logout`, `ban`, `access_denied`, …)."""
    if has_request_context():  # portal pages: the request's id (X-Request-ID) and user agent come along
        fields.setdefault("request_id", request.headers.get("X-Request-ID"))
        fields.setdefault("user_agent", request.headers.get("User-Agent"))
    record = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
    audit_log.info(event, extra={"audit": record})
