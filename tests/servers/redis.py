"""Throwaway Redis servers without persistence: one Redis, Redis over TLS with an ACL user, and Sentinel.

`RedisServer` listens on a fixed port so tests can stop it mid-run and bring it
back. `RedisSentinelSet` is a primary, a replica and three sentinels (quorum 2)
on loopback, with the settings tried in ../shared/RECIPES.md: a failover takes
a few seconds.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from . import free_port, wait_until
from .process import ServerProcess

#: The name the sentinels monitor the primary under (session.redis.sentinel.master_name).
MASTER_NAME = "portal"


class RedisServer(ServerProcess):
    """`redis-server` on 127.0.0.1:port; `restart()` comes back on the same port (with an empty dataset).

    `tls` = (cert, key, ca): plain TCP is off and `port` speaks TLS only. `extra`: more config directives as
    arguments (`--user`, `--replicaof`, …).
    """

    binary_name = "redis-server"

    def __init__(self, port: int | None = None, extra: Sequence[str] = (),
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self.extra = list(extra)
        self.tls = tls

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        listen = ["--port", str(self.port)]
        if self.tls:
            cert, key, ca = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                      "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        return [self.binary, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), *self.extra]

    def client(self, **options) -> redis.Redis:
        """An admin client (the default user) for the test's own checks."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **options)


class RedisSentinel(ServerProcess):
    """`redis-server CONF --sentinel` (what `redis-sentinel` runs), monitoring `MASTER_NAME`.

    Its config file is written once: sentinel rewrites it with what it learns (replicas, peers, the epoch).
    """

    binary_name = "redis-server"

    def __init__(self, primary_port: int) -> None:
        super().__init__()
        self.port = free_port()
        self.primary_port = primary_port
        self.myid = secrets.token_hex(20)
        #: What it knows from the start (`sentinel known-*` lines), instead of learning it over seconds.
        self.known: list[str] = []

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def conf(self) -> Path:
        return self.dir / "sentinel.conf"

    def prepare(self) -> None:
        if not self.conf.exists():
            self.conf.write_text("\n".join([
                f"port {self.port}", "bind 127.0.0.1", "daemonize no", f"dir {self.dir}",
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary_port} 2",
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                f"sentinel failover-timeout {MASTER_NAME} 5000",
                f"sentinel myid {self.myid}",
                *self.known,
                "",
            ]))

    def command(self) -> list[str]:
        return [self.binary, str(self.conf), "--sentinel"]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)

    def state(self) -> dict:
        return self.client().sentinel_master(MASTER_NAME)


class RedisSentinelSet:
    """A primary, one replica and three sentinels (quorum 2): a failover elects the replica."""

    def __init__(self) -> None:
        fast_sync = ["--repl-diskless-sync-delay", "0"]  # else a replica waits 5 s for its first copy
        self.primary = RedisServer(extra=fast_sync)
        self.replica = RedisServer(extra=[*fast_sync, "--replicaof", "127.0.0.1", str(self.primary.port)])
        self.sentinels = [RedisSentinel(self.primary.port) for _ in range(3)]
        for sentinel in self.sentinels:  # they would find all this through the primary, in ~5 s
            sentinel.known = [f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {self.replica.port}"] + [
                f"sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {peer.port} {peer.myid}"
                for peer in self.sentinels if peer is not sentinel]

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels]

    def start(self) -> RedisSentinelSet:
        self.primary.start()
        self.replica.start()
        wait_until(lambda: self.replica.client().info("replication")["master_link_status"] == "up",
                   what="replica in sync", log=self.replica.log)
        for sentinel in self.sentinels:
            sentinel.start()

        def every_sentinel_sees_everyone() -> bool:
            states = [sentinel.state() for sentinel in self.sentinels]
            return all(s["num-other-sentinels"] == 2 and s["num-slaves"] == 1 for s in states)

        wait_until(every_sentinel_sees_everyone, timeout=60, what="sentinels know replica and peers",
                   log=self.sentinels[0].log)
        return self

    def primary_port(self) -> int:
        """The primary's port as a sentinel that answers sees it now."""
        for sentinel in self.sentinels:
            if sentinel.running:
                try:
                    return int(sentinel.client().sentinel_get_master_addr_by_name(MASTER_NAME)[1])
                except redis.RedisError:
                    continue
        raise RuntimeError("no sentinel answers")

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in (self.primary, self.replica) if server.port == port)

    def wait_replicated(self) -> None:
        """Every write so far reached the replica: the failover's "written and replicated".

        WAIT counts only the caller's own writes, so write a marker first: the replication stream is in order,
        and the replica acknowledging the marker acknowledges everything before it.
        """
        primary = self.server_on(self.primary_port()).client()
        primary.set("test:replication-marker", time.time())
        assert primary.execute_command("WAIT", 1, 5000) >= 1, "the replica did not acknowledge the writes"

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()

    def __enter__(self) -> RedisSentinelSet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()


def kill(server: ServerProcess) -> float:
    """SIGKILL (a crash, not a shutdown); returns the monotonic time it died."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    return time.monotonic()
