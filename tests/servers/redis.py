"""A throwaway Redis without persistence, on a fixed port so tests can stop it mid-run and bring it back."""
from __future__ import annotations

from . import free_port
from .process import ServerProcess


class RedisServer(ServerProcess):
    """`redis-server` on 127.0.0.1:port; `restart()` comes back on the same port (with an empty dataset)."""

    binary_name = "redis-server"

    def __init__(self, port: int | None = None) -> None:
        super().__init__()
        self.port = port or free_port()

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir)]
