"""Caddy from a Caddyfile, with the global options a test run needs added when the file lacks them.

Added unless already set: `admin` on a free loopback port, `auto_https off`
(no local CA, no certificates), `storage` in the temp dir and
`default_bind 127.0.0.1` (without it Caddy listens on all interfaces). The
listen ports come from `caddy adapt`, which also validates the file.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from . import free_port
from .process import ConfiguredServer, last_port

GLOBAL_BLOCK_START = re.compile(r"(?:\s|#[^\n]*)*\{")


class Caddy(ConfiguredServer):
    """`caddy run --config DIR/Caddyfile --adapter caddyfile` with XDG dirs inside DIR."""

    binary_name = "caddy"
    config_name = "Caddyfile"

    def __init__(self, config: str, substitutions: Mapping[str, Any] | None = None, **more: Any) -> None:
        self.admin_port = free_port()  # complete() (called by the base __init__) uses it
        super().__init__(config, substitutions, **more)

    def complete(self, config: str) -> str:
        wanted = {
            "admin": f"admin 127.0.0.1:{self.admin_port}",
            "auto_https": "auto_https off",
            "storage": f"storage file_system {self.dir}/data",
            "default_bind": "default_bind 127.0.0.1",
        }
        if admin := re.search(r"^\s*admin\s+(\S+)", config, re.MULTILINE):
            self.admin_port = last_port(admin[1])
        missing = [line for key, line in wanted.items() if not re.search(rf"^\s*{key}\b", config, re.MULTILINE)]
        options = "".join(f"\n    {line}" for line in missing)
        if start := GLOBAL_BLOCK_START.match(config):
            return config[:start.end()] + options + config[start.end():]
        return "{" + options + "\n}\n\n" + config

    def environment(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.dir),
                "XDG_CONFIG_HOME": str(self.dir / "config"), "XDG_DATA_HOME": str(self.dir / "data")}

    def command(self) -> list[str]:
        return [self.binary, "run", "--config", str(self.config_path), "--adapter", "caddyfile"]

    def check_command(self) -> list[str]:
        return [self.binary, "adapt", "--config", str(self.config_path), "--adapter", "caddyfile", "--validate"]

    def listen_ports(self, check_output: str) -> list[int]:
        adapted, _ = json.JSONDecoder().raw_decode(check_output.lstrip())
        servers = adapted.get("apps", {}).get("http", {}).get("servers", {}).values()
        ports = (last_port(address) for server in servers for address in server.get("listen", []))
        return list(dict.fromkeys(port for port in ports if port))
