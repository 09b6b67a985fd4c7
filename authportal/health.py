"""Readiness: can every configured backend answer? Cached briefly so a storm of probes stays cheap.

The answer says which backend is down, not why: `/api/health` is reachable wherever the portal is, and a
reason names internal hosts, ports and paths. The reason goes to the log, once each time it changes.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("authportal.health")

#: Answers are reused this long: a probe storm does not become an LDAP or Redis storm.
CACHE_SECONDS = 1.5


class Readiness:
    def __init__(self, probes: dict[str, Callable[[], str | None]], on_down: Callable[[str], None],
                 optional: dict[str, Callable[[], str | None]] | None = None):
        """`probes`: backend name -> callable returning None when healthy, else the reason. `optional`: the same
        for parts the portal serves without (the mail server): when one is down the status is "degraded"."""
        self._probes = {**probes, **(optional or {})}
        self._optional = set(optional or ())
        self._on_down = on_down
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._reasons: dict[str, str | None] = dict.fromkeys(self._probes)

    def report(self) -> dict[str, Any]:
        cached = self._cached
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        with self._lock:
            checks = {}
            for name, probe in self._probes.items():
                error = probe()
                checks[name] = {"status": "ok" if error is None else "down"}
                if error is not None:
                    self._on_down(name)
                if error != self._reasons[name]:
                    if error is None:
                        log.info("backend %s is back", name)
                    else:
                        log.warning("backend %s is down: %s", name, error)
                    self._reasons[name] = error
            down = {name for name, check in checks.items() if check["status"] == "down"}
            status = "down" if down - self._optional else "degraded" if down else "ok"
            report = {"status": status, "checks": checks}
            self._cached = (time.monotonic(), report)
            return report
