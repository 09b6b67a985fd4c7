"""Real servers for the tests: each started in a temporary directory on a free loopback port, and stopped.

Every fixture polls for readiness (no fixed sleeps). A missing server binary
skips locally but fails under CI=true, where every server must run.
"""
from __future__ import annotations

import itertools
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str) -> str:
    """Absolute path of a server binary; skip the test without it locally, fail in CI."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/lib/postgresql/15/bin") / name) if p.exists()), None
    )
    if found:
        return found
    message = f"{name} is not installed (scripts/install-test-deps.sh installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _worker_ports() -> range:
    """This process's ports: below the kernel's ephemeral range (32768-60999), so that no outgoing connection
    takes one between the choice and the server's bind, and a block of its own per pytest-xdist worker
    (gw0, gw1, …), so that two workers never choose the same one (port 0 could: the kernel hands a port freed
    by one worker to the other)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker[2:].isdigit() else 0
    start = 10_000 + (index % 7) * 3_000
    return range(start, start + 3_000)


_PORTS = _worker_ports()
_turns = itertools.count(random.randrange(len(_PORTS)))


def free_port() -> int:
    """A loopback port nothing listens on, from this process's block, in turn (one handed out is not handed out
    again until the block has gone round)."""
    for _ in range(len(_PORTS)):
        port = _PORTS[next(_turns) % len(_PORTS)]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use, or still in TIME_WAIT
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition",
               process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `check` every 20 ms until true; fail with the server's log if it dies or times out.

    A deadline only bounds the wait: be generous (a busy 2-core machine starts a server several times
    slower), and assert a duration separately when the duration is the point.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}\n{tail(log)}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready after {timeout}s\n{tail(log)}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = "127.0.0.1", **kwargs) -> None:
    wait_until(lambda: port_open(port, host), what=f"port {host}:{port}", **kwargs)


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
