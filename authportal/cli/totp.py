"""`authportal totp …`: inspect, reset or hand out a user's second factor."""
from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import click
import segno

from ..audit import audit
from ..secretbox import SecretBox, WrongEncryptionKey
from ..totp import TotpService
from .common import config_option, fail, format_time, open_storage


@contextmanager
def totp_service(config_path: str) -> Iterator[TotpService]:
    """A TotpService on the configured storage, after checking secret_key against the database."""
    with open_storage(config_path) as (config, storage):
        assert config.secret_key is not None  # the configuration requires one
        box = SecretBox(config.secret_key.get_secret_value())
        try:
            box.verify_key(storage)
        except WrongEncryptionKey as exc:
            fail(str(exc))
        yield TotpService(storage, config.totp, box)


@click.group(help="Manage users' TOTP second factor.")
def totp() -> None:
    pass


@totp.command(help="Show whether USER has a TOTP device.")
@config_option
@click.argument("username")
@click.option("--secret", "show_secret", is_flag=True, help="Also print the otpauth:// URI (it contains the secret).")
def show(config_path: str, username: str, show_secret: bool) -> None:
    with totp_service(config_path) as service:
        device = service.device(username)
        uri = service.secret_uri(username) if device and show_secret else None
    if device is None:
        click.echo(f"{username}: no TOTP device")
        return
    click.echo(f"{username}: TOTP enrolled ({device.algorithm}, {device.digits} digits, "
               f"{device.period} s period, created {format_time(device.created_at)})")
    if uri:
        click.echo(uri)


@totp.command(help="Remove USER's TOTP device (they enrol again at their next login).")
@config_option
@click.argument("username")
def reset(config_path: str, username: str) -> None:
    with totp_service(config_path) as service:
        removed = service.reset(username)
        if removed:
            audit("totp_reset", user=username, actor="cli")
    click.echo(f"{username}: TOTP device removed" if removed else f"{username}: had no TOTP device")


@totp.command(help="Create a TOTP secret for USER and print it as a URI and a QR code (out-of-band enrolment).")
@config_option
@click.argument("username")
@click.option("--force", is_flag=True, help="Replace an existing device.")
def generate(config_path: str, username: str, force: bool) -> None:
    with totp_service(config_path) as service:
        if service.has_totp(username) and not force:
            fail(f"{username} already has a TOTP device (use --force to replace it)")
        secret = service.provision(username)
        audit("totp_enroll", user=username, actor="cli")
        uri = service.provisioning_uri(username, secret)
    qr = io.StringIO()
    segno.make(uri, error="m").terminal(out=qr, compact=True)
    click.echo(qr.getvalue(), nl=False)
    click.echo(uri)
    click.echo(f"Give this to {username} over a trusted channel: it contains the secret.", err=True)
