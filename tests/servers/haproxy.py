"""HAProxy from a config text (or an example .cfg with placeholders), checked with `haproxy -c` first."""
from __future__ import annotations

import re

from .process import ConfiguredServer, blank_comments, last_port

BIND = re.compile(r"^\s*bind\s+(\S+)", re.MULTILINE)


class HAProxy(ConfiguredServer):
    """`haproxy -db -f DIR/haproxy.cfg` in the foreground; ready when every `bind` port accepts."""

    binary_name = "haproxy"
    config_name = "haproxy.cfg"

    def complete(self, config: str) -> str:
        return config.rstrip() + "\n"  # haproxy rejects a last line without LF ("file might have been truncated")

    def command(self) -> list[str]:
        return [self.binary, "-db", "-f", str(self.config_path)]

    def check_command(self) -> list[str]:
        return [self.binary, "-c", "-f", str(self.config_path)]

    def listen_ports(self, check_output: str) -> list[int]:
        binds = BIND.findall(blank_comments(self.config_text))
        addresses = (address for bind in binds for address in bind.split(","))
        return list(dict.fromkeys(port for port in map(last_port, addresses) if port))
