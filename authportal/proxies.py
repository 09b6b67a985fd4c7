"""Which peers are trusted proxies, and the real client address behind them."""
from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import IPvAnyNetwork
from werkzeug.exceptions import BadRequest

_MAX_CACHED = 4096


class UnreadableClientAddress(BadRequest):
    """A trusted proxy's X-Forwarded-For whose hop that counts is not an address: refused, never skipped."""

    def __init__(self) -> None:
        # The hop is not quoted: a client may write it, and the reason is the key of a rate-limited log line.
        super().__init__("unreadable X-Forwarded-For: the hop that names the client is not an IP address (an empty "
                         "value is one with bytes that are not ASCII), so the client's address is not guessed")


class TrustedProxies:
    def __init__(self, networks: list[IPvAnyNetwork]):
        self._networks = list(networks)
        #: address -> trusted (True), an address outside the networks (False), not an address (None)
        self._known: dict[str, bool | None] = {}

    def _classify(self, address: str) -> bool | None:
        try:
            return self._known[address]
        except KeyError:
            return self._learn(address)

    def _learn(self, address: str) -> bool | None:
        try:
            ip = ipaddress.ip_address(address)
            known: bool | None = any(ip in net for net in self._networks)
        except ValueError:
            known = None
        if len(self._known) >= _MAX_CACHED:
            self._known.clear()
        self._known[address] = known
        return known

    def is_trusted(self, address: str) -> bool:
        return self._classify(address) is True

    def client_ip(self, environ: dict[str, Any]) -> str:
        """The peer, or — only when the peer is a trusted proxy that sent X-Forwarded-For — its rightmost hop
        that is not a trusted proxy itself.

        Nothing else is believed: X-Real-IP is not read (behind a proxy that does not set it, it is the client's
        own word, and both cannot be in charge). A hop that counts but is not an address is refused, not
        skipped: skipping would judge a hop further left, which the client wrote; and granian hands a value with
        non-ASCII bytes over as "", so a client could otherwise empty a proxy's `$proxy_add_x_forwarded_for`.
        """
        peer = environ.get("REMOTE_ADDR", "")
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded is None or not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded.split(",")]
        for hop in reversed(hops):
            trusted = self._classify(hop)
            if trusted is None:
                raise UnreadableClientAddress
            if not trusted:
                return hop
        return hops[0]  # every hop is a trusted proxy: the first one asked

    def scheme(self, environ: dict[str, Any]) -> str:
        """How the browser reached the portal: a trusted proxy's X-Forwarded-Proto (the first hop's), else the
        scheme of the connection itself."""
        forwarded = environ.get("HTTP_X_FORWARDED_PROTO", "")
        if forwarded and self.is_trusted(environ.get("REMOTE_ADDR", "")):
            first = forwarded.split(",")[0].strip().lower()
            if first in ("http", "https"):
                return first
        return environ.get("wsgi.url_scheme", "http")
