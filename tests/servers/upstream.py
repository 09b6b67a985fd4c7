"""A stub application behind the proxies: answers everything with 200 and a JSON echo, and records requests.

Tests assert on what actually reached the application (e.g. `Remote-User`, or
that a request never arrived) through `Upstream.requests`.
"""
from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


@dataclass
class RecordedRequest:
    method: str
    path: str  # with the query string
    headers: Message  # case-insensitive: headers["remote-user"]; None when absent; get_all() for repeats
    body: bytes


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as proxies use upstream
    disable_nagle_algorithm = True  # else ~45 ms per proxied call (Nagle + delayed ACK)
    server: _RecordingServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.record(RecordedRequest(self.command, self.path, self.headers, body))
        payload = json.dumps({"path": self.path, "method": self.command, "headers": dict(self.headers.items()),
                              "body": body.decode("utf-8", "replace")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def log_message(self, format: str, *args) -> None:
        pass  # the records are the log; keep test output clean


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block shutdown

    def __init__(self, keep: int) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.requests: deque[RecordedRequest] = deque(maxlen=keep)

    def record(self, request: RecordedRequest) -> None:
        self.requests.append(request)


class Upstream:
    """The stub on a free loopback port in a background thread; `requests` holds the last `keep` requests."""

    def __init__(self, keep: int = 100) -> None:
        self._server = _RecordingServer(keep)
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> deque[RecordedRequest]:
        return self._server.requests

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def clear(self) -> None:
        self.requests.clear()

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"upstream-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
