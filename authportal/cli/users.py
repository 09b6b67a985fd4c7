"""`authportal users`: edit the users file safely (comments kept, temp file + fsync + atomic rename)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from ..authentication.users_file import USERNAME_PATTERN, UsersFileError, parse_users_file
from ..authentication.users_file_editor import load_users_document, round_trip_yaml, save_users_document
from ..exits import EXIT_CONFIG
from ..passwords import PasswordHasher, UnsupportedHash, check_hash_format
from .common import fail, read_password

file_option = click.option("--file", "-f", "users_file", required=True, type=click.Path(dir_okay=False),
                           help="The users file (Authelia users_database.yml shape).")


def _load(path: Path) -> Any:
    return load_users_document(path)


def _save(path: Path, document: Any) -> None:
    try:
        save_users_document(path, document, parse_users_file)
    except UsersFileError as exc:
        fail(f"refusing to write an invalid users file: {exc}", EXIT_CONFIG)


@click.group()
def users() -> None:
    """Manage the local users file."""


@users.command("add")
@file_option
@click.argument("username")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--email", default="")
@click.option("--group", "groups", multiple=True, help="A group (repeatable).")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from stdin.")
def add(users_file: str, username: str, display_name: str, email: str, groups: tuple[str, ...],
        from_stdin: bool) -> None:
    """Add a user (the password is hashed with argon2id)."""
    if not re.fullmatch(USERNAME_PATTERN, username):
        fail(f"invalid user name {username!r} (letters, digits and . _ @ - only)", EXIT_CONFIG)
    path = Path(users_file)
    document = _load(path)
    if username in document["users"]:
        fail(f"user {username!r} already exists (use `users passwd` to change the password)", EXIT_CONFIG)
    entry: dict[str, Any] = {"password": PasswordHasher().hash(read_password(from_stdin))}
    if display_name:
        entry["displayname"] = display_name
    if email:
        entry["email"] = email
    entry["groups"] = list(groups)
    document["users"][username] = entry
    _save(path, document)
    click.echo(f"added {username}")


def _existing(document: Any, username: str) -> Any:
    entry = document["users"].get(username)
    if entry is None:
        fail(f"no user {username!r}", EXIT_CONFIG)
    return entry


@users.command("passwd")
@file_option
@click.argument("username")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from stdin.")
def passwd(users_file: str, username: str, from_stdin: bool) -> None:
    """Set a user's password."""
    path = Path(users_file)
    document = _load(path)
    _existing(document, username)["password"] = PasswordHasher().hash(read_password(from_stdin))
    _save(path, document)
    click.echo(f"password changed for {username}")


@users.command("disable")
@file_option
@click.argument("username")
@click.option("--enable", is_flag=True, help="Enable the user again instead.")
def disable(users_file: str, username: str, enable: bool) -> None:
    """Disable (or --enable) a user; their sessions end at their next request."""
    path = Path(users_file)
    document = _load(path)
    _existing(document, username)["disabled"] = not enable
    _save(path, document)
    click.echo(f"{'enabled' if enable else 'disabled'} {username}")


@users.command("list")
@file_option
def list_users(users_file: str) -> None:
    """List users, their groups and state."""
    try:
        entries = parse_users_file(Path(users_file))
    except UsersFileError as exc:
        fail(str(exc), EXIT_CONFIG)
    for name, entry in sorted(entries.items()):
        state = "disabled" if entry.disabled else "active"
        click.echo(f"{name:20} {state:9} {','.join(entry.groups)}")


@users.command("import")
@file_option
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
def import_users(users_file: str, source: str) -> None:
    """Import bcrypt users from an htpasswd file (htpasswd -B) or a Prometheus web-config.yml."""
    text = Path(source).read_text()
    found: dict[str, str] = {}
    try:
        web_config = round_trip_yaml().load(text)
    except Exception:
        web_config = None
    if isinstance(web_config, dict) and "basic_auth_users" in web_config:
        found = {str(k): str(v) for k, v in (web_config["basic_auth_users"] or {}).items()}
    else:
        for line in text.splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, hashed = line.strip().partition(":")
                found[name] = hashed
    path = Path(users_file)
    document = _load(path)
    for name, hashed in found.items():
        try:
            check_hash_format(hashed)
        except UnsupportedHash as exc:
            fail(f"{source}: user {name!r}: {exc}", EXIT_CONFIG)
        if name in document["users"]:
            document["users"][name]["password"] = hashed
        else:
            document["users"][name] = {"password": hashed, "groups": []}
    _save(path, document)
    click.echo(f"imported {len(found)} user(s) into {users_file}")
