"""nginx run from a throwaway prefix directory, so it needs nothing from /etc/nginx or /var/lib/nginx.

A config without an `http {` block is treated as the *body* of one, so tests
write just `server { listen 127.0.0.1:{{PORT}}; ... }`. A complete nginx.conf
(the project's examples) runs as is, plus the temp paths and access log it
does not set itself, so it works as root and outside a packaged install.
"""
from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from . import wait_until
from .process import ConfigError, ConfiguredServer, blank_comments, last_port, render

HTTP_BLOCK = re.compile(r"(?<![\w.$-])http\s*\{")
LISTEN = re.compile(r"(?<![\w.$-])listen\s+([^\s;]+)")
TEMP_PATHS = ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path")
MIME_TYPES = Path("/etc/nginx/mime.types")


class Nginx(ConfiguredServer):
    """`nginx -p DIR -c DIR/nginx.conf`, in the foreground, logs in DIR (error.log, access.log)."""

    binary_name = "nginx"
    config_name = "nginx.conf"
    log_name = "error.log"  # nginx's own error log; its stdout/stderr are appended to it too

    def complete(self, config: str) -> str:
        code = blank_comments(config)
        paths = [f"{name} {self.dir}/{name.removesuffix('_path')};" for name in TEMP_PATHS
                 if not re.search(rf"\b{name}\b", code)]
        if "access_log" not in code:
            paths.append(f"access_log {self.dir}/access.log;")
        if http := HTTP_BLOCK.search(code):
            return config[:http.end()] + "".join(f"\n    {line}" for line in paths) + "\n" + config[http.end():]
        mime = f"include {MIME_TYPES};" if MIME_TYPES.exists() else ""
        return "\n".join([
            "worker_processes 1;",
            f"error_log {self.dir}/error.log notice;",
            "events { worker_connections 512; }",
            "http {",
            f"    {mime}",
            "    default_type application/octet-stream;",
            *(f"    {line}" for line in paths),
            config,
            "}",
            "",
        ])

    def _args(self) -> list[str]:
        return [self.binary, "-p", f"{self.dir}/", "-c", str(self.config_path), "-e", str(self.log),
                "-g", f"daemon off; pid {self.dir}/nginx.pid;"]

    def command(self) -> list[str]:
        return self._args()

    def check_command(self) -> list[str]:
        return [*self._args(), "-t"]

    def listen_ports(self, check_output: str) -> list[int]:
        ports = (last_port(address) for address in LISTEN.findall(blank_comments(self.config_text)))
        return list(dict.fromkeys(port for port in ports if port))

    def reload(self, config: str, substitutions: Mapping[str, Any] | None = None, **more: Any) -> Self:
        """Apply a new config with SIGHUP, as operators do; return once only workers with it are left.

        The new config is checked first: an invalid one raises ConfigError and
        the running nginx keeps the old one. `{{PORT}}` keeps its value.
        """
        self.substitutions = {**self.substitutions, **(substitutions or {}), **more}
        old_text, old_ports = self.config_text, self._ports
        self.config_text = self.complete(render(config, self.substitutions))
        try:
            self.prepare()
        except ConfigError:
            self.config_text, self._ports = old_text, old_ports
            self.config_path.write_text(old_text)
            raise
        old_workers = self.workers()
        self.process.send_signal(signal.SIGHUP)
        wait_until(lambda: bool(self.workers()) and not self.workers() & old_workers and self.ready(),
                   what="nginx reload", process=self.process, log=self.log)
        return self

    def workers(self) -> set[int]:
        """Live child processes of the nginx master (workers, cache manager)."""
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, IndexError):
                continue
            if self.process and int(ppid) == self.process.pid and state != "Z":
                children.add(int(stat.parent.name))
        return children
