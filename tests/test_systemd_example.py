"""examples/systemd/authportal.service: verified by systemd's own tools, and its commands run for real.

No systemd runs on the test machines (containers), so the unit is never started.
`systemd-analyze verify` and `systemd-analyze security --offline=yes` (Debian's
systemd package) check it offline; the commands it runs (ExecStartPre, ExecStart,
ExecReload) are run here the way systemd would run them, with the secret handed
over through a credentials directory and `AUTHPORTAL_SECRET_KEY_FILE=%d/secret`.
"""
from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from tests.servers import require_binary, wait_until
from tests.servers.process import REPO
from tests.support.portal import SECRET_KEY, PortalSetup, ServedPortal

UNIT = REPO / "examples" / "systemd" / "authportal.service"
INSTALLED = "/usr/local/bin/authportal"


def console_script() -> str:
    script = Path(sys.executable).with_name("authportal")
    assert script.exists(), "the authportal console script is not installed next to this Python"
    return str(script)


def service_section() -> dict[str, list[str]]:
    """[Service] as systemd reads it: a key may repeat (each value kept, in order)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False,
                                       dict_type=_MultiDict)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(UNIT.read_text())
    return {key: value.split("\n") for key, value in parser["Service"].items()}


class _MultiDict(dict):
    """configparser keeps the last of repeated keys; systemd keeps them all (SystemCallFilter=, Environment=)."""

    def __setitem__(self, key, value):
        if isinstance(value, list) and key in self and isinstance(self[key], list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def unit_with_real_binary(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary pointing at this venv's console script (the verifier wants it to exist)."""
    unit = tmp_path / "authportal.service"
    text = UNIT.read_text()
    assert text.count(INSTALLED) == 2  # ExecStartPre and ExecStart; nothing else changes
    unit.write_text(text.replace(INSTALLED, console_script()))
    return unit


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = require_binary("systemd-analyze")
    unit = unit_with_real_binary(tmp_path)
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_systemd_analyze_rates_the_sandbox_ok(tmp_path):
    analyze = require_binary("systemd-analyze")
    unit = unit_with_real_binary(tmp_path)
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    exposure = re.search(r"Overall exposure level for authportal\.service: ([\d.]+) (\w+)", result.stdout)
    assert exposure, result.stdout[-2000:]
    assert float(exposure[1]) <= 2.0, f"exposure {exposure[1]} {exposure[2]}:\n{result.stdout}"


def test_the_unit_has_the_hardening_and_lifecycle_the_readme_promises():
    service = service_section()
    one = {key: values[-1] for key, values in service.items()}
    assert one["User"] == "authportal" and one["Group"] == "authportal"
    assert one["ExecStart"] == f"{INSTALLED} serve --config /etc/authportal/config.yml"
    assert one["ExecStartPre"] == f"{INSTALLED} check-config --config /etc/authportal/config.yml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "ReadWritePaths": "/var/lib/authportal", "StateDirectory": "authportal",
                       "CapabilityBoundingSet": "", "SystemCallArchitectures": "native"}.items():
        assert one.get(key) == value, key
    assert "@system-service" in service["SystemCallFilter"]
    # The secret: loaded as a credential and named to the portal through the environment override.
    assert one["LoadCredential"] == "secret:/etc/authportal/secret"
    assert "AUTHPORTAL_SECRET_KEY_FILE=%d/secret" in service["Environment"]


def test_exec_start_command_line_is_what_authportal_serve_accepts():
    argv = shlex.split(service_section()["ExecStart"][-1])
    result = subprocess.run([console_script(), *argv[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--config" in result.stdout, result.stdout + result.stderr
    assert argv[1] == "serve"


def credentials_setup(tmp_path: Path) -> tuple[PortalSetup, dict[str, str]]:
    """A config as the README says (no secret in it) and the environment systemd gives the service."""
    setup = PortalSetup(tmp_path / "etc")
    document = yaml.safe_load(setup.config_path.read_text())
    del document["secret_key"]
    setup.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    credentials = tmp_path / "run" / "credentials" / "authportal.service"  # what %d expands to
    credentials.mkdir(parents=True)
    (credentials / "secret").write_text(SECRET_KEY + "\n")
    (credentials / "secret").chmod(0o400)
    [assignment] = [e for e in service_section()["Environment"] if e.startswith("AUTHPORTAL_SECRET_KEY_FILE=")]
    name, value = assignment.split("=", 1)
    return setup, {name: value.replace("%d", str(credentials)), "CREDENTIALS_DIRECTORY": str(credentials)}


def test_exec_start_pre_check_config_passes_with_the_secret_from_the_credentials(tmp_path):
    setup, environment = credentials_setup(tmp_path)
    argv = shlex.split(service_section()["ExecStartPre"][-1])
    command = [console_script(), *argv[1:-1], str(setup.config_path)]
    checked = subprocess.run(command, env={"PATH": "/usr/bin:/bin", **environment}, capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Without the unit's environment the same config has no secret: the start would fail, loudly.
    missing = subprocess.run(command, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "secret_key" in missing.stdout + missing.stderr


def test_exec_reload_makes_the_running_portal_reload(tmp_path):
    setup, environment = credentials_setup(tmp_path)
    kill = shlex.split(service_section()["ExecReload"][-1])
    if not Path(kill[0]).exists():
        pytest.fail(f"{kill[0]} does not exist")
    with ServedPortal(setup, env=environment) as portal:
        assert reloads(portal) == {"success": 0.0, "failure": 0.0}
        command = [portal.process.pid if word == "$MAINPID" else word for word in kill]
        subprocess.run([str(word) for word in command], check=True, timeout=10)
        wait_until(lambda: reloads(portal)["success"] == 1.0, timeout=30, what="the reload counted in /metrics",
                   process=portal.process, log=portal.log)
        assert "configuration reloaded" in portal.logs()


def reloads(portal: ServedPortal) -> dict[str, float]:
    text = requests.get(portal.url + "/metrics", timeout=5).text
    return {m[1]: float(m[2]) for m in re.finditer(r'^authportal_config_reloads\{result="(\w+)"\} (\S+)$', text, re.M)}
