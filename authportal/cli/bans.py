"""`authportal bans …`: the bans in force (which mode imposed each, on whom, until when), and lifting them.

Bans live where every instance sees them (Redis when configured, else the database), so a lift here holds on
every instance at once.
"""
from __future__ import annotations

import json
from dataclasses import asdict

import click

from ..audit import audit
from .common import config_option, fail, format_time, open_shared_state, print_table

#: What each kind of ban holds, in words.
HOLDS = {"user": "user, from anywhere", "ip": "address, for everyone", "user_ip": "user, from this address"}


@click.group(help="List and lift bans imposed after failed sign-ins (regulation).")
def bans() -> None:
    pass


@bans.command("list", help="List the bans in force, the oldest first.")
@config_option
@click.option("--json", "as_json", is_flag=True, help="As a JSON list (times in seconds since the epoch).")
def list_(config_path: str, as_json: bool) -> None:
    with open_shared_state(config_path) as state:
        found = state.regulator.bans()
        audit("bans_list", actor=state.actor, count=len(found))
    if as_json:
        click.echo(json.dumps([dict(asdict(ban), id=ban.id) for ban in found], indent=2))
        return
    if not found:
        click.echo("no bans in force")
        return
    rows = [("KIND", "HOLDS", "USER", "ADDRESS", "SINCE", "UNTIL")]
    rows += [(ban.kind, HOLDS[ban.kind], ban.user or "-", ban.ip or "-", format_time(ban.banned_at),
              format_time(ban.until)) for ban in found]
    print_table(rows)


@bans.command(help="Lift every ban on TARGET, a user or a client address (IP), and start its failure count again.")
@config_option
@click.argument("target", metavar="(USER | IP)")
def lift(config_path: str, target: str) -> None:
    with open_shared_state(config_path) as state:
        lifted = state.regulator.lift(target)
        for ban in lifted:
            audit("ban_lift", actor=state.actor, kind=ban.kind, user=ban.user, banned_ip=ban.ip, via="cli")
    if not lifted:
        fail(f"no ban in force on {target} (see `authportal bans list`)")
    for ban in lifted:
        click.echo(f"lifted the {ban.kind} ban on {ban.user or ban.ip}"
                   + (f" from {ban.ip}" if ban.kind == "user_ip" else ""))
