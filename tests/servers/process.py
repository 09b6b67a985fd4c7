"""Base classes shared by the server fixtures: one process, one temporary directory, readiness by polling.

`ServerProcess` runs a command in its own temporary directory with stdout and
stderr appended to a log, waits until `ready()` and stops it again.
`ConfiguredServer` adds what nginx, HAProxy and Caddy share: a config text with
`{{NAME}}` placeholders, checked by the server itself before it starts (so a
bad config fails with the server's own error text), and the listen ports read
from that config.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from . import free_port, port_open, require_binary, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
# setpriv (util-linux) execs the server with a parent-death signal: if the test process dies, even by
# SIGKILL, the kernel stops the server too, so an aborted run leaves no servers behind.
SETPRIV = shutil.which("setpriv")


class ConfigError(RuntimeError):
    """The server rejected its configuration; the message holds the server's error text and the config."""


def render(template: str, substitutions: Mapping[str, Any]) -> str:
    """Replace `{{NAME}}` placeholders; a placeholder without a value is an error, not a silent leftover."""
    text = PLACEHOLDER.sub(lambda m: str(substitutions[m[1]]) if m[1] in substitutions else m[0], template)
    missing = sorted(set(PLACEHOLDER.findall(text)))
    if missing:
        raise KeyError(f"no value for placeholder(s) {', '.join(missing)}")
    return text


class ServerProcess:
    """A server process in a temporary directory, started on loopback and waited for (no fixed sleeps)."""

    binary_name = ""
    log_name = "output.log"
    start_timeout = 30.0  # ready in well under a second here; a busy machine needs the room

    def __init__(self) -> None:
        self.binary = require_binary(self.binary_name)
        self.dir = Path(tempfile.mkdtemp(prefix=f"authportal-{self.binary_name}-"))
        self.dir.chmod(0o755)  # nginx workers run as nobody and must reach files in here
        self.process: subprocess.Popen | None = None

    # -- hooks for subclasses -------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def prepare(self) -> None:
        """Write config files into `self.dir`; runs before every start."""

    @property
    def ports(self) -> list[int]:
        raise NotImplementedError

    def ready(self) -> bool:
        return all(port_open(port) for port in self.ports)

    # -- lifecycle ---------------------------------------------------------------
    @property
    def log(self) -> Path:
        return self.dir / self.log_name

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        self.dir.mkdir(exist_ok=True)
        self.prepare()
        command = [SETPRIV, "--pdeathsig", "TERM", "--", *self.command()] if SETPRIV else self.command()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, cwd=self.dir, env=self.environment(), stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(self.ready, timeout=self.start_timeout, what=f"{self.binary_name} in {self.dir}",
                       process=self.process, log=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def _terminate(self) -> None:
        stop_process(self.process)
        self.process = None

    def stop(self) -> None:
        """Stop the process and remove its directory; `start()` may be called again afterwards."""
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self) -> Self:
        """Stop and start again on the same port(s), keeping the directory."""
        self._terminate()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ports={self.ports} dir={self.dir} running={self.running}>"


class ConfiguredServer(ServerProcess):
    """A server run from one config text with `{{NAME}}` placeholders, checked by the server before starting.

    Always available placeholders: `{{PORT}}` (a free loopback port, the default
    for `url()`) and `{{DIR}}` (the server's temporary directory).
    """

    config_name = "server.conf"

    def __init__(self, config: str, substitutions: Mapping[str, Any] | None = None, **more: Any) -> None:
        super().__init__()
        self.substitutions = {"PORT": free_port(), "DIR": self.dir, **(substitutions or {}), **more}
        self._ports: list[int] = []
        try:
            self.config_text = self.complete(render(config, self.substitutions))
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @classmethod
    def from_file(cls, path: str | Path, substitutions: Mapping[str, Any] | None = None, **more: Any) -> Self:
        """Run a config file from the repository (relative paths are from the repo root), placeholders filled."""
        path = Path(path)
        if not path.is_absolute():
            path = REPO / path
        return cls(path.read_text(), substitutions, **more)

    # -- hooks for subclasses -------------------------------------------------
    def complete(self, config: str) -> str:
        """Add what every test run needs (temp paths, logs, loopback binding) to the rendered config."""
        return config

    def check_command(self) -> list[str]:
        raise NotImplementedError

    def listen_ports(self, check_output: str) -> list[int]:
        """The ports the config listens on, from the config text or the checker's output."""
        raise NotImplementedError

    # -- shared behaviour --------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.dir / self.config_name

    def prepare(self) -> None:
        self.config_path.write_text(self.config_text)
        self._ports = self.listen_ports(self.check())

    def check(self) -> str:
        """Let the server validate the written config; raise ConfigError with its own words if invalid."""
        result = subprocess.run(self.check_command(), check=False, cwd=self.dir, env=self.environment(),
                                capture_output=True, text=True, timeout=30)
        output = result.stdout + result.stderr
        if result.returncode != 0:
            numbered = "\n".join(f"{n:4} {line}" for n, line in enumerate(self.config_text.splitlines(), 1))
            raise ConfigError(f"{self.binary_name} rejected {self.config_path}:\n{output.strip()}\n\n{numbered}")
        return output

    @property
    def ports(self) -> list[int]:
        """The ports the config listens on; known once started."""
        return self._ports

    @property
    def port(self) -> int:
        """The first port the config listens on."""
        if not self._ports:
            raise RuntimeError(f"{self!r}: start it first, or its config listens on no TCP port")
        return self._ports[0]

    def url(self, path: str = "/", port: int | None = None, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{port or self.port}{path}"


def blank_comments(config: str) -> str:
    """`# comments` replaced by spaces (same length, so match positions still fit the original text)."""
    return re.sub(r"#[^\n]*", lambda m: " " * len(m[0]), config)


def last_port(address: str) -> int | None:
    """`127.0.0.1:8080`, `[::1]:8080`, `ipv4@:8080`, `8080` -> 8080; unix sockets -> None."""
    match = re.search(r"(?:^|[:@])(\d+)$", address.strip())
    return int(match[1]) if match else None
