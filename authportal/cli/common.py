"""Pieces every subcommand shares: the --config option and loading it with exit code 2 on errors."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from ..config import CONFIG_PATH_ENV, Config, ConfigError, load_config
from ..exits import EXIT_CONFIG, EXIT_RUNTIME, report_config_errors
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


def format_time(value: float | None, missing: str = "-") -> str:
    return missing if value is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows (the first one the header) in aligned columns."""
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
