"""`authportal demo` / `make run`: a working portal in one command, on plain http on 127.0.0.1.

Writes a config, a users file with two demo users (random passwords, printed)
and uses SQLite; nothing is overwritten on later runs.
"""
from __future__ import annotations

import secrets
from pathlib import Path

import click
import yaml_rs

from .passwords import PasswordHasher

DEMO_USERS = {
    "admin": {"displayname": "Demo Admin", "email": "admin@example.test", "groups": ["admins", "monitoring"]},
    "viewer": {"displayname": "Demo Viewer", "email": "viewer@example.test", "groups": ["monitoring"]},
}


def write_demo(directory: str) -> Path:
    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yml"
    users_path = folder / "users.yml"
    if not users_path.exists():
        hasher = PasswordHasher()
        users, passwords = {}, {}
        for name, fields in DEMO_USERS.items():
            passwords[name] = secrets.token_urlsafe(9)
            users[name] = {"password": hasher.hash(passwords[name]), **fields}
        users_path.write_text("# Demo users written by `authportal demo`.\n" + yaml_rs.dumps({"users": users}))
        (folder / "demo-passwords.txt").write_text("".join(f"{u} {p}\n" for u, p in passwords.items()))
    if not config_path.exists():
        secret = folder / "secret"
        secret.write_text(secrets.token_hex(32))
        secret.chmod(0o600)
        config = {
            "server": {"address": "127.0.0.1:9091", "portal_url": "http://127.0.0.1:9091"},
            "secret_key_file": "secret",
            "session": {"cookie_secure": False},
            "authentication": {"backend": "file", "file": {"path": "users.yml"}},
            "storage": {"sqlite": {"path": "db.sqlite3"}},
            "totp": {"issuer": "authportal demo"},
            "access_control": {"default_policy": "one_factor"},
            "password_change": {"enable": True},
            "password_reset": {"enable": True},
            # e-mails (password reset links) are appended to this file instead of being sent
            "notifier": {"filesystem": {"path": "mail.txt"}},
        }
        config_path.write_text("# Demo configuration written by `authportal demo` (plain http: trials only).\n"
                               + yaml_rs.dumps(config))
    click.echo(f"Demo config: {config_path}")
    click.echo("Demo users (user password):")
    click.echo((folder / "demo-passwords.txt").read_text().rstrip())
    click.echo(f"Password reset e-mails are written to {folder / 'mail.txt'} (notifier.filesystem).")
    click.echo("Open http://127.0.0.1:9091 and sign in.")
    return config_path
