"""Real servers for the tests: each started in a temporary directory on a free loopback port, and stopped.

Every fixture polls for readiness (no fixed sleeps). A missing server binary
skips locally but fails under CI=true, where every server must run.
"""
from __future__ import annotations

import os
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
