"""Serve the portal (or the raw callable) on another WSGI server, for `verify.py --servers`.

    python -m bench.wsgi_servers SERVER portal|raw PORT THREADS     # from the repository root

`portal` is the real product: `authportal.server:worker_app`, the factory
granian's workers call, reading the config named by X_AUTHPORTAL_CONFIG.
`raw` is bench/raw_wsgi.py. granian itself is not started from here: the bench
runs it as `authportal serve` (what ships) and the granian CLI (raw).
The servers: `pip install -r bench/requirements-servers.txt`.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

HOST = "127.0.0.1"


def load(target: str) -> Callable:
    if target == "raw":
        from bench.raw_wsgi import app

        return app
    from authportal.server import worker_app

    return worker_app()


def gunicorn(target: str, port: int, threads: int) -> None:
    # gunicorn's threaded worker, 1 process (a second one costs more than it gives on 2 cores, as for granian).
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):
        def load_config(self) -> None:
            for key, value in {"bind": f"{HOST}:{port}", "workers": 1, "worker_class": "gthread",
                               "threads": threads, "backlog": 2048, "loglevel": "warning",
                               "keepalive": 75}.items():
                self.cfg.set(key, value)

        def load(self) -> Callable:
            return load(target)

    Application().run()


def uvicorn(target: str, port: int, threads: int) -> None:
    # ASGI server (uvloop + httptools) with a2wsgi running the WSGI app on `threads` threads.
    import uvicorn as server
    from a2wsgi import WSGIMiddleware

    server.run(WSGIMiddleware(load(target), workers=threads), host=HOST, port=port, log_level="warning",
               access_log=False, backlog=2048, timeout_keep_alive=75)


def waitress(target: str, port: int, threads: int) -> None:
    from waitress import serve

    serve(load(target), host=HOST, port=port, threads=threads, backlog=2048, connection_limit=1000)


def bjoern(target: str, port: int, threads: int) -> None:
    # One thread, no pool: every request (an argon2 login too) runs on the event loop.
    import bjoern as server

    server.run(load(target), HOST, port)


SERVERS = {"gunicorn": gunicorn, "uvicorn": uvicorn, "waitress": waitress, "bjoern": bjoern}

if __name__ == "__main__":
    name, target, port, threads = sys.argv[1:5]
    SERVERS[name](target, int(port), int(threads))
