"""The server's ceiling for case R: the cheapest WSGI callable that can still say yes or no.

Run by bench/verify.py as `granian --interface wsgi bench.raw_wsgi:app` with the
same workers/threads as the portal. It answers 200 when the request carries
`X-Bench-Token: ok` and 401 otherwise (one dict lookup), so the bench can check
that nginx really asks it before trusting a number.
"""
from __future__ import annotations

_OK = ("200 OK", [("Content-Length", "0"), ("Remote-User", "bench")])
_NO = ("401 Unauthorized", [("Content-Length", "0")])


def app(environ, start_response):
    status, headers = _OK if environ.get("HTTP_X_BENCH_TOKEN") == "ok" else _NO
    start_response(status, headers)
    return [b""]
