"""Pieces every subcommand shares: the --config option and loading it with exit code 2 on errors."""
from __future__ import annotations

import sys
from typing import Any, Callable

import click

from ..config import CONFIG_PATH_ENV, Config, ConfigError, load_config

#: Exit codes (DESIGN.md): 0 ok, 1 runtime failure, 2 usage or configuration error.
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


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


def report_config_errors(exc: ConfigError) -> None:
    click.echo(f"configuration error{'s' if len(exc.errors) > 1 else ''}:", err=True)
    for line in exc.errors:
        click.echo(f"  {line}", err=True)


def fail(message: str, code: int = EXIT_RUNTIME) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
