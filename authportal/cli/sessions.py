"""`authportal sessions …`: every signed-in session (who, from where, on what, since when), and ending them.

A session is named by its ID, a short hash of the session's secret id (the cookie), which is never shown.
Ending one takes effect on every instance at once with Redis (its logout broadcast), else within
`session.cache_ttl`.
"""
from __future__ import annotations

import json

import click

from ..audit import audit
from ..sessions import audit_ended
from .common import config_option, fail, format_time, open_shared_state, print_table


@click.group(help="List and end signed-in sessions (of every instance).")
def sessions() -> None:
    pass


@sessions.command("list", help="List the live sessions (of --user USER, or everyone's), the most recently used first.")
@config_option
@click.option("--user", "username", metavar="USER", help="Only this user's sessions.")
@click.option("--json", "as_json", is_flag=True, help="As a JSON list (times in ISO 8601, UTC).")
def list_(config_path: str, username: str | None, as_json: bool) -> None:
    with open_shared_state(config_path) as state:
        found = state.sessions.sessions(username)
        audit("sessions_list", actor=state.actor, filter=username, count=len(found))
    if as_json:
        click.echo(json.dumps([info.as_json() for info in found], indent=2))
        return
    if not found:
        click.echo("no sessions" if username is None else f"{username} has no sessions")
        return
    rows = [("ID", "USER", "DEVICE", "ADDRESS", "SIGNED IN", "LAST USED", "FACTORS", "REMEMBER", "INSTANCE")]
    rows += [(i.handle, i.user, i.device, i.ip or "-", format_time(i.created), format_time(i.last_seen),
              str(i.level), "yes" if i.remember else "no", i.instance or "-") for i in found]
    print_table(rows)


@sessions.command(help="End sessions: every one of --user USER, or the ones with these IDs (from `list`).")
@config_option
@click.option("--user", "username", metavar="USER", help="End all of this user's sessions.")
@click.argument("ids", nargs=-1, metavar="[ID]...")
def revoke(config_path: str, username: str | None, ids: tuple[str, ...]) -> None:
    if bool(username) == bool(ids):
        raise click.UsageError("give either --user USER or session IDs")
    with open_shared_state(config_path) as state:
        ended = state.sessions.end_sessions(username, set(ids) if ids else None)
        audit_ended(ended, state.actor, "cli")
    for info in ended:
        click.echo(f"ended session {info.handle} of {info.user} ({info.device}, {info.ip or 'address unknown'})")
    missing = sorted(set(ids) - {info.handle for info in ended})
    if missing:
        fail(f"no live session with ID {', '.join(missing)} (see `authportal sessions list`)")
    if username and not ended:
        click.echo(f"{username} has no sessions")
