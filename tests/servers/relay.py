"""A TCP relay that records each HTTP exchange passing through it: what a proxy asked the portal, what it answered.

Put between a proxy and the portal (the proxy's config points at the relay) to
see the portal's own status codes. The status a client gets cannot tell who
failed: nginx turns an auth subrequest's 400 into a 500 of its own, HAProxy's
example turns anything unexpected into a 503, Caddy's upstream errors are 502s.
The relay reads HTTP/1.x framing (Content-Length, chunked, 1xx/204/304, HEAD)
just far enough to pair every request on a connection with its response; the
bytes themselves pass through unchanged.
"""
from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Self

#: How a message's body ends: a byte count, "chunked", or "close" (read until the connection closes).
Framing = int | str


@dataclass
class Exchange:
    """One request the proxy sent to the portal and the portal's answer (None: it never answered)."""

    method: str
    target: str  # the request target as sent, bytes read as latin-1
    headers: list[tuple[str, str]]  # in order, repeats kept, bytes read as latin-1
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    start, *lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip(" \t")))
    return start, headers


def _framing(headers: list[tuple[str, str]], default: Framing) -> Framing:
    values = {name.lower(): value for name, value in headers}
    if "chunked" in values.get("transfer-encoding", "").lower():
        return "chunked"
    if "content-length" in values:
        return int(values["content-length"].split(",")[0])
    return default


class _MessageReader:
    """Splits one direction of an HTTP/1.x connection into messages; `on_head(head) -> Framing` per message."""

    def __init__(self, on_head: Callable[[bytes], Framing]) -> None:
        self.on_head = on_head
        self.buffer = bytearray()
        self.body: Framing | None = None  # None: reading a head
        self.chunk_left = 0  # chunked: bytes of the current chunk (+ its CRLF) still to skip; -1 in trailers
        self.lost = False  # the stream stopped making sense as HTTP/1.x: relayed, no longer recorded

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer:
            if self.body is None:
                while self.buffer[:2] == b"\r\n":  # stray empty lines between messages
                    del self.buffer[:2]
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end])
                del self.buffer[:end + 4]
                self.body = self.on_head(head)
                self.chunk_left = 0
                if self.body == 0:
                    self.body = None
            elif self.body == "close":
                self.buffer.clear()
            elif isinstance(self.body, int):
                taken = min(self.body, len(self.buffer))
                del self.buffer[:taken]
                self.body -= taken
                if self.body == 0:
                    self.body = None
            elif not self._skip_chunks():
                return

    def _skip_chunks(self) -> bool:
        """Consume chunked body bytes; False when more input is needed."""
        while True:
            if self.chunk_left > 0:  # inside a chunk (data and its CRLF)
                taken = min(self.chunk_left, len(self.buffer))
                del self.buffer[:taken]
                self.chunk_left -= taken
                if self.chunk_left:
                    return False
            elif self.chunk_left < 0:  # after the last chunk: trailer lines up to an empty line
                if self.buffer[:2] == b"\r\n":
                    del self.buffer[:2]
                    self.body = None
                    return True
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return False
                del self.buffer[:end + 4]
                self.body = None
                return True
            else:  # a chunk-size line
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    return False
                size = int(bytes(self.buffer[:end]).split(b";")[0].strip(), 16)
                del self.buffer[:end + 2]
                self.chunk_left = size + 2 if size else -1


class RecordingRelay:
    """Listens on a free loopback port and forwards every connection to `target_port`, recording `exchanges`."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.exchanges: list[Exchange] = []
        #: Connection directions whose bytes could not be read as HTTP/1.x (relayed, not recorded).
        self.unreadable = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def since(self, mark: int) -> list[Exchange]:
        """The exchanges recorded after `mark` (a former `len(relay.exchanges)`)."""
        with self._lock:
            return self.exchanges[mark:]

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._accept, name=f"relay-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        _close(self._listener)  # shutdown() wakes the thread blocked in accept(); close() alone would not
        with self._lock:
            for sock in self._sockets:
                _close(sock)
            self._sockets.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)  # the portal is down: the proxy sees a closed connection, as without the relay
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets |= {client, server}
            pending: deque[Exchange] = deque()
            requests = _MessageReader(partial(self._request, pending=pending))
            responses = _MessageReader(partial(self._response, pending=pending))
            for source, sink, reader in ((client, server, requests), (server, client, responses)):
                threading.Thread(target=self._pump, args=(source, sink, reader), daemon=True).start()

    def _request(self, head: bytes, pending: deque[Exchange]) -> Framing:
        start, headers = _parse_head(head)
        method, _, rest = start.partition(" ")
        exchange = Exchange(method, rest.rpartition(" ")[0], headers)
        pending.append(exchange)
        with self._lock:
            self.exchanges.append(exchange)
        return _framing(headers, 0)

    def _response(self, head: bytes, pending: deque[Exchange]) -> Framing:
        start, headers = _parse_head(head)
        status = int(start.split(" ")[1])
        if 100 <= status < 200:
            return 0  # an interim answer; the final one follows
        exchange = pending.popleft() if pending else Exchange("?", "?", [])
        exchange.status, exchange.response_headers = status, headers
        if status in (204, 304) or exchange.method == "HEAD":
            return 0
        return _framing(headers, "close")

    def _pump(self, source: socket.socket, sink: socket.socket, reader: _MessageReader) -> None:
        try:
            while data := source.recv(65536):
                if not reader.lost:
                    try:
                        reader.feed(data)  # record first: when the proxy has the answer, so does `exchanges`
                    except (ValueError, IndexError):
                        reader.lost = True  # not HTTP as expected: keep relaying, stop recording
                        with self._lock:
                            self.unreadable += 1
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets -= {source, sink}
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
