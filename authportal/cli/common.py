"""Pieces every subcommand shares: the --config option and loading it with exit code 2 on errors."""
from __future__ import annotations

import getpass
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from ..config import CONFIG_PATH_ENV, Config, ConfigError, load_config
from ..exits import EXIT_CONFIG, EXIT_RUNTIME, report_config_errors
from ..logs import setup_audit_file
from ..redis_client import connect
from ..regulation import RegulationUnavailable, Regulator, open_regulator
from ..sessions import SessionStore, SessionStoreUnavailable, open_session_store
from ..storage import Storage, StorageUnavailable


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config", "-c", "config_path", required=True, envvar=CONFIG_PATH_ENV,
        type=click.Path(dir_okay=False), help=f"Path of the YAML configuration (or ${CONFIG_PATH_ENV}).",
    )(func)


def load_or_exit(path: str) -> Config:
    """The validated configuration, or every error on stderr and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        report_config_errors(exc)
        sys.exit(EXIT_CONFIG)


def read_password(from_stdin: bool) -> str:
    """A new password: the first line of stdin, or a hidden prompt asked twice; empty exits 2.

    The prompt needs a terminal: with stdin a pipe (a script, a container without -t) getpass would warn,
    read the password unhidden and fail on the confirmation, so that is refused with the way that works.
    """
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        fail("no terminal: use --stdin to read the password from standard input", EXIT_CONFIG)
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        fail("the password is empty", EXIT_CONFIG)
    return password


def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@contextmanager
def open_storage(config_path: str) -> Iterator[tuple[Config, Storage]]:
    """The configuration and its migrated storage; a database problem exits 1 with the reason."""
    config = load_or_exit(config_path)
    storage = Storage(config.storage)
    try:
        storage.migrate()
        yield config, storage
    except StorageUnavailable as exc:
        fail(f"storage unavailable: {exc}")
    finally:
        storage.close()


@dataclass(frozen=True)
class SharedState:
    """What every instance sees, opened as the server opens it: sessions and bans (Redis when configured, else the
    database), and who is at the keyboard (`actor`, for the audit events)."""

    config: Config
    sessions: SessionStore
    regulator: Regulator
    actor: str


@contextmanager
def open_shared_state(config_path: str) -> Iterator[SharedState]:
    """For the commands that list and end sessions and bans: their audit events go to `log.audit_file` as the
    server's do; a backend that does not answer exits 1 with the reason."""
    with open_storage(config_path) as (config, storage):
        setup_audit_file(config.log)
        logging.getLogger("authportal.audit").setLevel(config.log.level.upper())  # as `serve` has it
        client = connect(config.session.redis) if config.session.redis is not None else None
        sessions = open_session_store(config.session, storage, client, serving=False)
        try:
            yield SharedState(config, sessions, open_regulator(config, storage, client), _actor())
        except (SessionStoreUnavailable, RegulationUnavailable) as exc:
            fail(f"unavailable: {exc}")
        finally:
            if client is not None:
                client.close()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return "cli"


def format_time(value: float | None, missing: str = "-") -> str:
    return missing if value is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows (the first one the header) in aligned columns."""
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
