"""Audit events: who logged in, out, failed, was banned or denied — to the `authportal.audit` logger.

Each event is one record whose `audit` attribute holds the fields; the JSON
formatter writes them as one line. Callers pass only safe fields: the
SecretFilter in logs.py is the second line of defence.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
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


#: How much of the end of an audit file `recent_events` reads at most.
TAIL_BYTES = 256 * 1024


def recent_events(path: Path, limit: int) -> list[dict[str, Any]]:
    """The last `limit` events of an audit file (`log.audit_file`, JSON lines), newest first. Reads only the
    file's end; a missing file has none yet. Raises OSError when it cannot be read."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - TAIL_BYTES))
            tail = file.read()
    except FileNotFoundError:
        return []
    lines = tail.splitlines()[1 if size > TAIL_BYTES else 0:]  # the first may be cut
    events = []
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
            if len(events) == limit:
                break
    return events
