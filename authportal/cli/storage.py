"""`authportal storage …`: where the database's schema stands, and applying its pending revisions.

The server migrates at start too; `migrate` is for doing it beforehand (a
maintenance window, a backup just before) and `status` for looking first.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from ..config import Config
from ..migrations import SchemaState, describe, latest
from ..storage import Storage, StorageUnavailable, engine_url
from .common import config_option, fail, load_or_exit

T = TypeVar("T")


@click.group(help="The storage database's schema: its revision, and applying pending ones.")
def storage() -> None:
    pass


@storage.command(short_help="Apply the pending schema revisions.",
                 help="Apply the pending schema revisions (the server also does at start; safe while other "
                      "instances start: one migrates, the others wait).")
@config_option
def migrate(config_path: str) -> None:
    config = load_or_exit(config_path)
    before, after = _with_storage(config, Storage.migrate)
    click.echo(f"database: {_where(config)}")
    if not before.pending:
        click.echo(f"already at the latest revision, {describe(after.current)}")
        return
    for revision in before.pending:
        if revision == before.pending[0] and before.legacy_version is not None:
            click.echo(f"recorded the database made before schema revisions (schema_version "
                       f"{before.legacy_version}) as {describe(revision)}")
        else:
            click.echo(f"applied {describe(revision)}")
    click.echo(f"now at revision {after.current}, the latest")


@storage.command(short_help="Show the schema revision and the latest.",
                 help="Show the database's schema revision and the latest this authportal knows "
                      "(exit 1 if it cannot serve the database).")
@config_option
def status(config_path: str) -> None:
    config = load_or_exit(config_path)
    click.echo(f"database:         {_where(config)}")
    if config.storage.sqlite is not None and not config.storage.sqlite.path.exists():
        click.echo("current revision: none (the file does not exist yet)")
        _report(SchemaState(None, latest(), None))
        return
    state = _with_storage(config, Storage.schema_state)
    if state.legacy_version is not None:
        click.echo(f"current revision: none recorded (made before schema revisions: schema_version "
                   f"{state.legacy_version})")
    else:
        click.echo(f"current revision: {describe(state.current)}")
    _report(state)


def _with_storage(config: Config, use: Callable[[Storage], T]) -> T:
    """`use` on the configured database, closed afterwards; exit 1 with the reason when it cannot answer."""
    store = Storage(config.storage)
    try:
        return use(store)
    except StorageUnavailable as exc:
        fail(f"storage: {exc}")
    finally:
        store.close()


def _report(state: SchemaState) -> None:
    """The latest revision and what `migrate` would do; exit 1 when this code refuses the database."""
    click.echo(f"latest revision:  {describe(state.latest)}")
    if state.problem is not None:
        click.echo("state:            refused")
        fail(state.problem)
    pending = state.pending
    if not pending:
        click.echo("state:            up to date")
    else:
        count = f"{len(pending)} revision{'s' if len(pending) > 1 else ''}"
        click.echo(f"state:            {count} to apply ({', '.join(pending)}): run `authportal storage migrate` "
                   "(the server also migrates at start)")


def _where(config: Config) -> str:
    """The database, without its password."""
    if config.storage.sqlite is not None:
        return str(config.storage.sqlite.path)
    return engine_url(config.storage).render_as_string(hide_password=True)
