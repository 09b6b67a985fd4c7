"""The `authportal` command: serve, check-config, hash-password, demo, access, users, totp, tokens, storage, webauthn,
sessions, bans."""
from __future__ import annotations

import sys

import click

from .. import __version__
from ..config import ConfigError
from ..exits import EXIT_CONFIG, EXIT_RUNTIME, report_config_errors
from .common import config_option, load_or_exit, read_password


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="authportal")
def main() -> None:
    """A login portal and forward-auth server for web apps without a login of their own.

    Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
    """


@main.command("serve")
@config_option
@click.option("--workers", type=click.IntRange(1, 64), help="Server processes (default: server.workers).")
@click.option("--threads", type=click.IntRange(3, 256), help="Request threads per process; password checks "
              "may use all but 2 (default: server.threads).")
def serve(config_path: str, workers: int | None, threads: int | None) -> None:
    """Run the portal on the production server (granian), in the foreground, logging to stderr."""
    from ..server import run

    config = load_or_exit(config_path)
    sys.exit(run(config, config_path, workers=workers, threads=threads))


@main.command("check-config")
@config_option
def check_config(config_path: str) -> None:
    """Validate the configuration (and the users file); print every error with its key path, all in one run."""
    from ..server import load_checked_config

    try:
        config = load_checked_config(config_path)
    except ConfigError as exc:
        report_config_errors(exc)
        sys.exit(EXIT_CONFIG)
    from ..access_lint import lint_access_rules

    for warning in [*config.warnings(), *lint_access_rules(config.access_control)]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{config_path}: configuration is valid")


@main.command("hash-password")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from the first line of stdin.")
def hash_password(from_stdin: bool) -> None:
    """Print an argon2id hash of a password, for the users file."""
    from ..passwords import PasswordHasher

    click.echo(PasswordHasher().hash(read_password(from_stdin)))


@main.command("demo")
@click.option("--dir", "directory", default="run", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo config, users file and database go.")
def demo(directory: str) -> None:
    """Try it: write a demo config with demo users (printed) and serve on http://127.0.0.1:9091."""
    from ..demo import write_demo
    from ..server import run

    config_path = write_demo(directory)
    sys.exit(run(load_or_exit(str(config_path)), str(config_path)))


def _register_subgroups() -> None:
    from .access import access
    from .bans import bans
    from .sessions import sessions
    from .storage import storage
    from .tokens import tokens
    from .totp import totp
    from .users import users
    from .webauthn import webauthn

    main.add_command(access)
    main.add_command(users)
    main.add_command(totp)
    main.add_command(tokens)
    main.add_command(storage)
    main.add_command(webauthn)
    main.add_command(sessions)
    main.add_command(bans)


_register_subgroups()

__all__ = ["main", "EXIT_CONFIG", "EXIT_RUNTIME", "config_option"]
