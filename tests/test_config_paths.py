"""Relative paths in the configuration are taken from the config file's folder, whatever the working directory.

An operator runs `authportal check-config -c portal/config.yml` from elsewhere, systemd starts the server in
`/`: both must see the files the config names. Every path key and every `*_file` secret follows the one
rule (config.py's `ConfigPath`), so a new one cannot forget it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from pydantic import BaseModel

from authportal.config import Config, load_config
from tests.servers.ca import CertificateAuthority
from tests.servers.slapd import SlapdServer
from tests.support.portal import PortalSetup, ServedPortal, login


def _annotation_parts(annotation: Any) -> list[Any]:
    return [annotation, *(part for arg in typing.get_args(annotation) for part in _annotation_parts(arg))]


def schema_keys(model: type[BaseModel], prefix: str = "") -> tuple[set[str], set[str]]:
    """(keys holding a path, `*_file` secret keys) of the configuration schema."""
    paths = set()
    secrets = {f"{prefix}{name}_file" for name in getattr(model, "_secret_fields", ())}
    for name, field in model.model_fields.items():
        parts = _annotation_parts(field.annotation)
        if Path in parts:
            paths.add(prefix + name)
        for nested in {p for p in parts if isinstance(p, type) and issubclass(p, BaseModel)}:
            nested_paths, nested_secrets = schema_keys(nested, f"{prefix}{name}.")
            paths |= nested_paths
            secrets |= nested_secrets
    return paths, secrets


def value_at(config: BaseModel, key: str) -> Any:
    """The value at a dotted key; in a list of sections (oidc.providers), the first one's."""
    for part in key.split("."):
        config = getattr(config, part)
        if isinstance(config, list):
            config = config[0]
    return config


PATH_KEYS = {  # key -> the relative path the test config gives it
    "authentication.file.path": "users.yml",
    "authentication.ldap.tls.ca_file": "tls/ca.pem",
    "authentication.ldap.tls.cert_file": "tls/client.pem",
    "authentication.ldap.tls.key_file": "tls/client.key",
    "session.redis.tls.ca_file": "tls/ca.pem",
    "session.redis.tls.cert_file": "tls/client.pem",
    "session.redis.tls.key_file": "tls/client.key",
    "storage.sqlite.path": "data/db.sqlite3",
    "log.audit_file": "logs/audit.log",
    "notifier.smtp.ca_file": "tls/ca.pem",
    "notifier.filesystem.path": "mail/outbox.txt",
    "authentication.client_certificates.ca_file": "tls/ca.pem",
    "authentication.client_certificates.crl_file": "tls/ca.crl",
    "branding.logo_file": "brand/logo.svg",
}
SECRET_FILE_KEYS = {  # key -> (relative file, the key its content lands in)
    "secret_key_file": ("secrets/key", "secret_key"),
    "authentication.ldap.password_file": ("secrets/ldap", "authentication.ldap.password"),
    "session.redis.password_file": ("secrets/redis", "session.redis.password"),
    "session.redis.sentinel.password_file": ("secrets/sentinel", "session.redis.sentinel.password"),
    "storage.postgres.password_file": ("secrets/postgres", "storage.postgres.password"),
    "notifier.smtp.password_file": ("secrets/smtp", "notifier.smtp.password"),
    "authentication.oidc.providers.client_secret_file": ("secrets/oidc", "authentication.oidc.providers.client_secret"),
}
#: Keys of sections that exclude each other: each run of the test below uses one of each pair.
EXCLUSIVE = {"sqlite": ("storage.postgres.", "notifier.filesystem."), "postgres": ("storage.sqlite.", "notifier.smtp.")}


def test_the_test_below_covers_every_path_and_secret_file_key_of_the_schema():
    assert schema_keys(Config) == (set(PATH_KEYS), set(SECRET_FILE_KEYS))


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_every_relative_path_is_taken_from_the_config_folder(tmp_path, monkeypatch, storage):
    folder, elsewhere = tmp_path / "etc" / "authportal", tmp_path / "elsewhere"
    setup = PortalSetup(folder)
    for base in (folder, elsewhere):  # the same names in the working directory hold other secrets
        (base / "secrets").mkdir(parents=True)
        for relative, _ in SECRET_FILE_KEYS.values():
            (base / relative).write_text(f"{relative} in {base.name}-" + "x" * 32 + "\n")
    (folder / "tls").mkdir()
    ca = CertificateAuthority("test CA")
    ca.write_cert(folder / "tls" / "ca.pem")
    ca.issue(folder / "tls" / "client.pem", folder / "tls" / "client.key", "portal", client=True)
    ca.write_crl(folder / "tls" / "ca.crl")
    (folder / "brand").mkdir()
    (folder / "brand" / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')

    document = setup.document()
    del document["secret_key"]
    document["secret_key_file"] = "secrets/key"
    document["session"]["redis"] = {  # sentinel rather than url: it has a secret of its own
        "sentinel": {"master_name": "portal", "nodes": ["127.0.0.1:26379"], "password_file": "secrets/sentinel"},
        "password_file": "secrets/redis",
        "tls": {"ca_file": "tls/ca.pem", "cert_file": "tls/client.pem", "key_file": "tls/client.key"}}
    document["authentication"]["ldap"] = {
        "url": "ldap://127.0.0.1:1", "base_dn": "dc=example,dc=com", "user": "cn=portal",
        "password_file": "secrets/ldap",
        "tls": {"ca_file": "tls/ca.pem", "cert_file": "tls/client.pem", "key_file": "tls/client.key"}}
    document["storage"] = ({"sqlite": {"path": "data/db.sqlite3"}} if storage == "sqlite" else
                           {"postgres": {"url": "postgresql://portal@127.0.0.1/portal", "password_file": "secrets/postgres"}})
    document["log"]["audit_file"] = "logs/audit.log"
    document["authentication"]["client_certificates"] = {"ca_file": "tls/ca.pem", "crl_file": "tls/ca.crl"}
    document["branding"] = {"logo_file": "brand/logo.svg"}
    document["authentication"]["oidc"] = {"providers": [{"name": "corp", "issuer": "http://127.0.0.1:1",
                                                         "client_id": "portal", "client_secret_file": "secrets/oidc"}]}
    document["notifier"] = ({"smtp": {"host": "127.0.0.1", "sender": "p@example.test", "ca_file": "tls/ca.pem",
                                      "username": "portal", "password_file": "secrets/smtp"}}
                            if storage == "sqlite" else {"filesystem": {"path": "mail/outbox.txt"}})
    setup.config_path.write_text(yaml.safe_dump(document))

    monkeypatch.chdir(elsewhere)
    config = load_config("../etc/authportal/config.yml", environ={})

    for key, relative in PATH_KEYS.items():
        if key.startswith(EXCLUSIVE[storage]):
            continue
        assert value_at(config, key) == folder.resolve() / relative, key
    for file_key, (relative, key) in SECRET_FILE_KEYS.items():
        if file_key.startswith(EXCLUSIVE[storage]):
            continue
        secret = value_at(config, key)
        assert secret.get_secret_value() == f"{relative} in authportal-" + "x" * 32, file_key
    assert Path.cwd() == elsewhere  # validation never changed the working directory


def test_relative_tls_files_are_found_by_check_config_and_the_server_from_another_folder(tmp_path, slapd):
    """The bug: `check-config` passed from the config's folder and failed from its parent ("cannot load
    certificates"), and `serve` refused to start from anywhere else."""
    tls = {"ca_file": "tls/ca.pem", "cert_file": "tls/client.pem", "key_file": "tls/client.key"}
    setup = PortalSetup(tmp_path / "portal", overrides={
        "authentication": {"backend": "ldap", "ldap": slapd.ldap_settings(start_tls=True, tls=tls)}})
    (setup.directory / "tls").mkdir()
    for name, source in (("ca.pem", slapd.ca_file), ("client.pem", slapd.client_cert_file),
                         ("client.key", slapd.client_key_file)):
        shutil.copy(source, setup.directory / "tls" / name)

    checked = subprocess.run([sys.executable, "-m", "authportal", "check-config", "--config", "portal/config.yml"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    assert "configuration is valid" in checked.stdout

    assert Path.cwd() != setup.directory  # the served portal runs in the test run's working directory
    starttls_before = slapd.log_text().count("STARTTLS")
    with ServedPortal(setup):
        portal = f"http://auth.example.test:{setup.port}"
        assert login(requests.Session(), portal, "bob", SlapdServer.PASSWORDS["bob"]).status_code == 302
    assert slapd.log_text().count("STARTTLS") > starttls_before
