"""`authportal tokens …`: API tokens for machine clients (Grafana, curl, scripts)."""
from __future__ import annotations

import time
from typing import Any

import click

from ..audit import audit
from ..config import parse_duration
from ..tokens import TokenService
from .common import config_option, fail, format_time, open_storage, print_table


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail("must be a positive duration", param, ctx)
        return seconds


@click.group(help="Manage API tokens (machine clients send `Authorization: Bearer <token>`).")
def tokens() -> None:
    pass


@tokens.command(help="Create a token for USER and print it (once: only its hash is stored).")
@config_option
@click.argument("username")
@click.option("--name", required=True, help="What the token is for, e.g. grafana.")
@click.option("--expires", type=Duration(), default=None, help="Lifetime, e.g. 90d (default: never expires).")
@click.option("--scope", multiple=True, metavar="SUBJECT",
              help="Limit to group:NAME or user:NAME of the owner's (repeatable; default: all of them).")
@click.option("--methods", default="", metavar="M,...",
              help="Only these HTTP methods, e.g. GET,HEAD (default: any the rules allow).")
@click.option("--resources", multiple=True, metavar="REGEX",
              help="Only paths (with ?query) this regex finds, anchored: ^/prometheus/api/v1/query (repeatable; "
                   "default: any).")
def create(config_path: str, username: str, name: str, expires: float | None, scope: tuple[str, ...],
           methods: str, resources: tuple[str, ...]) -> None:
    with open_storage(config_path) as (_config, storage):
        try:
            token, info = TokenService(storage).create(username, name, expires, list(scope),
                                                       [m for m in methods.split(",") if m.strip()], list(resources))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        audit("token_create", user=username, token_id=info.id, token_name=name, actor="cli")
    click.echo(f"created API token {info.id} for {info.username} ({info.name}), "
               f"expires: {format_time(info.expires_at, 'never')}", err=True)
    click.echo(token)
    click.echo("Copy the token now: it will not be shown again.", err=True)


@tokens.command("list", help="List tokens (of USER, or everyone's).")
@config_option
@click.argument("username", required=False)
def list_(config_path: str, username: str | None) -> None:
    with open_storage(config_path) as (_config, storage):
        infos = TokenService(storage).list(username)
    if not infos:
        click.echo("no API tokens")
        return
    now = time.time()
    rows = [("ID", "USER", "NAME", "SCOPE", "METHODS", "RESOURCES", "CREATED", "EXPIRES", "LAST USED", "STATE")]
    rows += [
        (str(i.id), i.username, i.name, ",".join(i.scope) or "(all)", ",".join(i.methods) or "(any)",
         " ".join(i.resources) or "(any)", format_time(i.created_at), format_time(i.expires_at, "never"),
         format_time(i.last_used_at, "never"), i.state(now))
        for i in infos
    ]
    print_table(rows)


@tokens.command(help="Revoke the token with id TOKEN_ID (see `list`).")
@config_option
@click.argument("token_id", type=int)
def revoke(config_path: str, token_id: int) -> None:
    with open_storage(config_path) as (_config, storage):
        found = TokenService(storage).revoke(token_id)
    if not found:
        fail(f"no API token with id {token_id}")
    audit("token_revoke", token_id=token_id, actor="cli")
    click.echo(f"API token {token_id} revoked")
