"""Running the portal: backend checks before start, logging, and the granian WSGI server.

granian (Rust HTTP stack, WSGI) serves the verify path several times faster
than gunicorn here (see bench/README.md). The config is checked and the
backends opened once in the parent, so a bad config exits 2 and a dead backend
exits 1 before any worker starts; each worker then builds its own app.
"""
from __future__ import annotations

import logging
import os
import tempfile

from .config import CONFIG_PATH_ENV, Config, load_config
from .logs import setup_logging
from .storage import StorageUnavailable

log = logging.getLogger("authportal")


def check_backends(config: Config) -> list[str]:
    """Problems that make the config unusable although it parses (users file missing or malformed)."""
    from .authentication.users_file import UsersFileError, parse_users_file

    problems = []
    if config.authentication.backend == "file":
        assert config.authentication.file is not None
        try:
            parse_users_file(config.authentication.file.path)
        except UsersFileError as exc:
            problems.append(f"authentication.file.path: {exc}")
    return problems


def run(config: Config, config_path: str, workers: int | None = None, threads: int | None = None) -> int:
    from granian.constants import Interfaces
    from granian.server import Server

    from .app import create_app
    from .authentication import BackendUnavailable
    from .cli.common import EXIT_CONFIG, EXIT_RUNTIME, report_config_errors
    from .config import ConfigError

    setup_logging(config.log)
    problems = check_backends(config)
    if problems:
        report_config_errors(ConfigError(problems))
        return EXIT_CONFIG
    try:
        create_app(config).close()  # open every backend once: fail now, not in each worker
    except (BackendUnavailable, StorageUnavailable, Exception) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_RUNTIME
    workers = workers or config.server.workers
    threads = threads or config.server.threads
    os.environ[CONFIG_PATH_ENV] = os.path.abspath(config_path)
    if workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="authportal-metrics-"))
    log.info("authportal listening on %s (portal %s), %d worker(s) x %d threads",
             config.server.address, config.portal_url, workers, threads)
    server = Server(
        "authportal.server:worker_app", address=config.server.host, port=config.server.port,
        interface=Interfaces.WSGI, workers=workers, blocking_threads=threads, factory=True,
        log_enabled=True, log_access=False, backlog=2048, respawn_failed_workers=True,
        workers_kill_timeout=10,
    )
    server.serve()
    return 0


def worker_app():  # pragma: no cover - runs inside granian workers
    """Granian factory: each worker loads the config named by X_AUTHPORTAL_CONFIG and builds its app."""
    from .app import create_app

    config = load_config(os.environ[CONFIG_PATH_ENV])
    setup_logging(config.log)
    return create_app(config)
