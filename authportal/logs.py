"""Logging: text or JSON lines to stderr, audit events also to their own file, secrets censored.

The SecretFilter is the last line of defence: it masks anything that looks
like a password/code/token field or an Authorization/Cookie value before a
record is written.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from .config import LogConfig

_SECRET_FIELDS = re.compile(
    r"(?i)((?:password|passwd|secret|token|code|cookie|authorization|session_id|csrf_token)\"?\s*[=:]\s*\"?)"
    r"([^\s\",;&]+)"
)
_AUTH_HEADER = re.compile(r"(?i)\b(Basic|Bearer)\s+[A-Za-z0-9+/=._\-~]+")
_CENSORED_KEYS = {"password", "code", "token", "secret", "cookie", "authorization", "session_id", "csrf_token"}


def censor(text: str) -> str:
    return _AUTH_HEADER.sub(r"\1 ***", _SECRET_FIELDS.sub(r"\1***", text))


class SecretFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str):
            record.msg = censor(record.msg)
        fields = getattr(record, "audit", None)
        if isinstance(fields, dict):
            record.audit = {k: ("***" if k in _CENSORED_KEYS else v) for k, v in fields.items()}
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "audit", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["error"] = censor(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "audit", None)
        if fields:
            text += " " + " ".join(f"{k}={v!r}" for k, v in fields.items() if k != "event")
        return censor(text) if record.exc_info else text


def setup_logging(config: LogConfig) -> None:
    """Configure the `authportal` loggers once per process (idempotent)."""
    root = logging.getLogger("authportal")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(config.level.upper())
    root.propagate = False
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    stderr.addFilter(SecretFilter())
    root.addHandler(stderr)
    setup_audit_file(config)


def setup_audit_file(config: LogConfig) -> None:
    """Audit events also as JSON lines to `log.audit_file`, when set (the server, and the admin commands)."""
    audit = logging.getLogger("authportal.audit")
    for handler in list(audit.handlers):
        audit.removeHandler(handler)
        handler.close()
    if config.audit_file is not None:
        config.audit_file.parent.mkdir(parents=True, exist_ok=True)
        audit_file = logging.FileHandler(config.audit_file)
        audit_file.setFormatter(JsonFormatter())
        audit_file.addFilter(SecretFilter())
        audit.addHandler(audit_file)


class RateLimitedLog:
    """At most one line per kind of event and interval: a misconfigured proxy repeats its mistake on every
    request, and one clear line a minute says it without flooding the log (the rest are counted)."""

    def __init__(self, logger: logging.Logger, interval: float):
        self._logger = logger
        self._interval = interval
        #: kind -> (when it was last logged, how many were not logged since)
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        logged_at, suppressed = self._last.get(kind, (float("-inf"), 0))
        if now - logged_at < self._interval:
            self._last[kind] = (logged_at, suppressed + 1)
            return
        if suppressed:
            message += " (and %d more like it in the last %d s)"
            args = (*args, suppressed, int(self._interval))
        self._logger.warning(message, *args)
        if len(self._last) >= 1024:  # bounded, though kinds are a handful of fixed reasons and peers
            self._last.clear()
        self._last[kind] = (now, 0)
