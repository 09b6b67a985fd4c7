"""Which peers are trusted proxies, and the real client address behind them."""
from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import IPvAnyNetwork

_MAX_CACHED = 4096


class TrustedProxies:
    def __init__(self, networks: list[IPvAnyNetwork]):
        self._networks = list(networks)
        self._known: dict[str, bool] = {}

    def is_trusted(self, address: str) -> bool:
        known = self._known.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
                known = any(ip in net for net in self._networks)
            except ValueError:
                known = False
            if len(self._known) >= _MAX_CACHED:
                self._known.clear()
            self._known[address] = known
        return known

    def client_ip(self, environ: dict[str, Any]) -> str:
        """The peer, or — only when the peer is a trusted proxy — the rightmost untrusted X-Forwarded-For hop."""
        peer = environ.get("REMOTE_ADDR", "")
        if not self.is_trusted(peer):
            return peer
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if not forwarded:
            return environ.get("HTTP_X_REAL_IP") or peer
        hops = [hop.strip() for hop in forwarded.split(",")]
        for hop in reversed(hops):
            if hop and not self.is_trusted(hop):
                return hop
        return hops[0] or peer

    def scheme(self, environ: dict[str, Any]) -> str:
        """How the browser reached the portal: a trusted proxy's X-Forwarded-Proto (the first hop's), else the
        scheme of the connection itself."""
        forwarded = environ.get("HTTP_X_FORWARDED_PROTO", "")
        if forwarded and self.is_trusted(environ.get("REMOTE_ADDR", "")):
            first = forwarded.split(",")[0].strip().lower()
            if first in ("http", "https"):
                return first
        return environ.get("wsgi.url_scheme", "http")
