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
    def __init__(self, probes: dict[str, Callable[[], str | None]], on_down: Callable[[str], None]):
        """`probes`: backend name -> callable returning None when healthy, else the reason."""
        self._probes = probes
        self._on_down = on_down
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._reasons: dict[str, str | None] = dict.fromkeys(probes)

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
            report = {"status": "ok" if all(c["status"] == "ok" for c in checks.values()) else "down",
                      "checks": checks}
            self._cached = (time.monotonic(), report)
            return report
