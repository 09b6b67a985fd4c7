"""Running the portal: backend checks before start, logging, and the granian WSGI server.

granian (Rust HTTP stack, WSGI) serves the verify path several times faster
than gunicorn here (see bench/README.md). The config is checked and the
backends opened once in the parent, so a bad config exits 2 and a dead backend
exits 1 before any worker starts; each worker then builds its own app.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import tempfile

from .access_lint import lint_access_rules
from .config import CONFIG_PATH_ENV, AuthenticationConfig, Config, ConfigError, load_config
from .exits import EXIT_CONFIG, EXIT_RUNTIME, report_config_errors
from .logs import setup_logging
from .storage import StorageUnavailable

log = logging.getLogger("authportal")

#: The configuration workers start with. granian forks its workers from the main process, so they
#: inherit it; SIGHUP replaces it only when the new file is valid (else the running one keeps serving).
_active: dict[str, object] = {"config": None, "reloads": {"success": 0, "failure": 0}, "cli": {}}


def _with_command_line(config: Config) -> Config:
    """`serve --workers/--threads` win over the file, also after a reload (the login gate is sized by them)."""
    overrides = _active["cli"]
    assert isinstance(overrides, dict)
    return config.model_copy(update={"server": config.server.model_copy(update=overrides)})


def check_backends(authentication: AuthenticationConfig) -> list[str]:
    """Problems that make the config unusable although it parses: the users file missing or malformed.

    (The LDAP settings need nothing here: validating the configuration checked their filters and TLS files.)
    """
    from .authentication.users_file import UsersFileError, parse_users_file

    problems = []
    if authentication.backend == "file":
        assert authentication.file is not None
        try:
            parse_users_file(authentication.file.path)
        except UsersFileError as exc:
            problems.append(f"authentication.file.path: {exc}")
    return problems


def load_checked_config(config_path: str) -> Config:
    """The configuration, its backend checked too; else one ConfigError with every problem, the users file's
    included whenever the authentication section is valid (fixing the rest first would only reveal it later)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        backend = check_backends(exc.authentication) if exc.authentication is not None else []
        raise ConfigError(exc.errors + backend) from None
    problems = check_backends(config.authentication)
    if problems:
        raise ConfigError(problems)
    return config


def run(config: Config, config_path: str, workers: int | None = None, threads: int | None = None) -> int:
    workers = workers or config.server.workers
    threads = threads or config.server.threads
    _active["cli"] = {"workers": workers, "threads": threads}
    config = _with_command_line(config)
    if workers > 1:
        # Before prometheus_client is first imported: it picks its shared-file storage at import time.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="authportal-metrics-"))

    from granian.constants import Interfaces
    from granian.server import Server

    from .app import create_app
    from .authentication import BackendUnavailable

    setup_logging(config.log)
    for finding in lint_access_rules(config.access_control):  # check-config's warnings, once, in the log too
        log.warning("%s", finding)
    problems = check_backends(config.authentication)
    if problems:
        report_config_errors(ConfigError(problems))
        return EXIT_CONFIG
    try:
        app = create_app(config)  # open every backend once: fail now, not in each worker
    except (BackendUnavailable, StorageUnavailable, Exception) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_RUNTIME
    # Redis connects lazily: ask it once, so a wrong CA, password or ACL is an exit 1 with the reason now.
    redis_problem = app.portal.sessions.backend.health() if config.session.redis is not None else None
    app.close()
    if redis_problem is not None:
        log.error("cannot start: session.redis: %s", redis_problem)
        return EXIT_RUNTIME
    os.environ[CONFIG_PATH_ENV] = os.path.abspath(config_path)
    log.info("authportal listening on %s (portal %s), %d worker(s) x %d threads",
             config.server.address, config.portal_url, workers, threads)
    _active["config"] = config
    # Restarts drop nothing (tests/test_high_availability.py): on SIGTERM granian closes the listening socket (a
    # proxy's next connection is refused and goes to another instance) and each worker finishes the requests it
    # has, for up to workers_kill_timeout; on SIGHUP the new worker starts before the old one is stopped.
    server = Server(
        "authportal.server:worker_app", address=config.server.host, port=config.server.port,
        interface=Interfaces.WSGI, workers=workers, blocking_threads=threads, factory=True,
        log_enabled=True, log_access=False, backlog=2048, respawn_failed_workers=True,
        workers_kill_timeout=10, respawn_interval=1.0, websockets=False,
    )
    server.on_reload(lambda: reload_config(config_path))
    server.serve()
    return 0


def reload_config(config_path: str) -> bool:
    """SIGHUP: validate the file again; adopt it only if valid. Workers are then respawned by granian."""
    counts = _active["reloads"]
    assert isinstance(counts, dict)
    try:
        config = load_checked_config(config_path)
    except ConfigError as exc:
        counts["failure"] += 1
        log.error("configuration reload refused, the running configuration keeps serving:\n  %s",
                  "\n  ".join(exc.errors))
        return False
    counts["success"] += 1
    _active["config"] = _with_command_line(config)
    setup_logging(config.log)
    log.info("configuration reloaded from %s", config_path)
    return True


def worker_app():  # pragma: no cover - runs inside granian workers
    """Granian factory: each worker loads the config named by X_AUTHPORTAL_CONFIG and builds its app."""
    from .app import create_app

    _die_with_parent()
    config = _active["config"]
    if not isinstance(config, Config):  # not forked from `run` (e.g. spawn start method): read the file
        config = load_config(os.environ[CONFIG_PATH_ENV])
    setup_logging(config.log)
    app = create_app(config)
    counts = _active["reloads"]
    assert isinstance(counts, dict)
    for result, count in counts.items():
        app.portal.metrics.reloads.labels(result).set(count)
    return app


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the main process dies, even by SIGKILL (no orphan keeps serving)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux/glibc: granian's own supervision still applies
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1
