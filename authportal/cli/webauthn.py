"""`authportal webauthn …`: a user's security keys and passkeys (list them, remove a lost or blocked one)."""
from __future__ import annotations

import click

from ..audit import audit
from ..security_keys import SecurityKeys
from .common import config_option, fail, format_time, open_storage, print_table


@click.group(help="Manage users' security keys and passkeys (WebAuthn).")
def webauthn() -> None:
    pass


@webauthn.command("list", help="List USER's security keys (id, name, when added and last used, state).")
@config_option
@click.argument("username")
def list_(config_path: str, username: str) -> None:
    with open_storage(config_path) as (config, storage):
        keys = SecurityKeys(storage, config).keys_of(username)
    if not keys:
        click.echo(f"{username}: no security keys")
        return
    rows = [("ID", "NAME", "KIND", "ADDED", "LAST USED", "STATE")]
    rows += [(str(k.id), k.name, "passkey" if k.discoverable else "security key", format_time(k.created_at),
              format_time(k.last_used_at, "never"), "blocked (counter went backwards)" if k.cloned_at else "active")
             for k in keys]
    print_table(rows)


@webauthn.command(help="Remove USER's key NAME_OR_ID (its name, or its id from `list`); it no longer signs in.")
@config_option
@click.argument("username")
@click.argument("name_or_id")
def remove(config_path: str, username: str, name_or_id: str) -> None:
    with open_storage(config_path) as (config, storage):
        keys = SecurityKeys(storage, config)
        key = keys.find(username, name_or_id)
        if key is None:
            fail(f"{username} has no security key named or numbered {name_or_id!r} (see `authportal webauthn list "
                 f"{username}`)")
        keys.remove(key)
        audit("webauthn_remove", user=username, key_name=key.name, key_id=key.id, actor="cli")
    click.echo(f"{username}: removed security key {key.id} ({key.name})")
