"""Verify-path throughput behind a real nginx `auth_request`, against nginx's own limits and a raw WSGI ceiling.

One nginx, one `server` block per case (all serving the same ~100-byte static
file from a temp dir with `try_files`), `wrk -t2 -c32` against each in turn.
Every protected case is first checked to answer 200 with its credential and
401 without, and a measurement with any non-2xx answer or socket error is
flagged, so a misconfiguration cannot produce a fast fake number. Each case
is measured in 4 rounds (every other round in reverse order), so a machine
that gets slower or faster during the run does not favour one case.

    .venv/bin/python -m bench.verify              # full run (8 s per case), ~2 min
    .venv/bin/python -m bench.verify --quick      # 4 s per case
    .venv/bin/python -m bench.verify --sweep      # portal workers 1/2 x threads 2/4/8 (cases C and R)

See bench/README.md for what each case means and the results.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml_rs

from authportal.config import CONFIG_PATH_ENV, PasswordHashConfig, ServerConfig
from authportal.passwords import PasswordHasher
from tests.servers import free_port, port_open, stop_process, wait_until
from tests.servers.nginx import Nginx
from tests.servers.redis import RedisServer
from tests.support.portal import SEED_RULES, USERS, PortalSetup, login, resolve_example_test, users_document

REPO = Path(__file__).resolve().parents[1]

VENV_BIN = Path(sys.executable).parent
SETPRIV = shutil.which("setpriv")
HOST = "app.example.test"  # the protected host, sent as Host: and checked by the portal's rules
PATH = "/prometheus/index.html"  # SEED_RULES: app.example.test ^/prometheus/ -> group:monitoring, one_factor
USER = "alice"  # in group monitoring
PASSWORD = USERS[USER]["password"]
INDEX_HTML = b"<!doctype html><html><head><title>bench</title></head><body><p>protected page</p></body></html>\n"

WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, '
    .. '"write_errors": %d, "non_2xx": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""

# -- what runs: auth servers and cases ---------------------------------------------------------------------------


@dataclass
class Server:
    """An auth server behind nginx: the portal in one of its configurations, or the raw WSGI callable."""

    key: str
    flavour: str  # "raw", or the portal configuration: "C" (SQLite), "CR" (Redis), "C10k", "CU" (no Basic cache)
    workers: int
    threads: int
    #: another revision of the portal's code to run (--baseline), else this checkout's
    checkout: Path | None = None
    runner: str = "granian"  # or one of bench/wsgi_servers.py's SERVERS (--servers)
    setup: PortalSetup | None = None
    proc: Proc | None = None


@dataclass
class Case:
    name: str
    title: str
    kind: str  # "static", "basic" (nginx auth_basic), "local" (auth_request -> nginx return), "proxy"
    headers: dict[str, str] = field(default_factory=dict)  # the credential wrk sends
    server: str | None = None  # key of the auth server behind auth_request ("proxy" cases)
    expect_user: str | None = None  # X-Remote-User nginx must copy from the auth answer
    once: bool = False  # CU: measured once, shorter, no warm-up (argon2 per request)
    # CU: more uncached checks than password-check slots are refused at once (401 + Retry-After): expected
    refusals_expected: bool = False
    port: int = 0
    watch: dict[str, int] = field(default_factory=dict)  # label -> pid whose process tree's CPU is measured

    @property
    def protected(self) -> bool:
        return self.kind != "static"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = {"Authorization": basic(USER, PASSWORD)}
TOKEN = {"X-Bench-Token": "ok"}  # what L's internal location and the raw WSGI callable accept


def main_plan(workers: int, threads: int) -> tuple[list[Server], list[Case]]:
    servers = [Server(key, key if key != "R" else "raw", workers, threads)
               for key in ("C", "CR", "C10k", "C100kF", "CU", "R")]
    cases = [
        Case("S", "nginx static file, no auth", "static"),
        Case("L", "auth_request -> internal nginx `return 200`", "local", TOKEN),
        Case("R", "auth_request -> raw WSGI callable (granian)", "proxy", TOKEN, "R", "bench"),
        Case("B", "nginx auth_basic, apr1 htpasswd", "basic", AUTH),
        Case("C", "authportal verify, session cookie (SQLite store)", "proxy", {}, "C", USER),
        Case("CR", "authportal verify, session cookie (Redis store)", "proxy", {}, "CR", USER),
        Case("CB", "authportal verify, Basic credentials (cached)", "proxy", AUTH, "C", USER),
        Case("C10k", "authportal verify, cookie, 10,000 extra rules", "proxy", {}, "C10k", USER),
        Case("C100kF", "authportal verify, cookie, 100,000 users in the file", "proxy", {}, "C100kF", USER),
        Case("CU", "authportal verify, Basic, cache off (argon2 each)", "proxy", AUTH, "CU", USER, once=True,
             refusals_expected=True),
    ]
    return servers, cases


ORDER = ["S", "L", "R", "B", "C", "CR", "CB", "C10k", "C100kF", "CU"]
RATIOS = [("C", "C0"), ("C", "B"), ("CR", "B"), ("CB", "C"), ("C", "R"), ("C10k", "C"), ("C100kF", "C"), ("C", "S"), ("C", "L")]
SWEEP_GRID = [(w, t) for w in (1, 2) for t in (2, 4, 8)]


SERVERS = ["granian", "gunicorn", "uvicorn", "waitress", "bjoern"]


def servers_plan(runners: list[str], workers: int, threads: int) -> tuple[list[Server], list[Case]]:
    """The real portal (C) and the raw callable (R) on each WSGI server, with nginx auth_basic (B) as the yardstick."""
    servers, cases = [], [Case("B", "nginx auth_basic, apr1 htpasswd", "basic", AUTH)]
    for runner in runners:
        servers += [Server(f"C@{runner}", "C", workers, threads, runner),
                    Server(f"R@{runner}", "raw", workers, threads, runner)]
        cases += [Case(f"C@{runner}", f"portal cookie verify on {runner}", "proxy", {}, f"C@{runner}", USER),
                  Case(f"R@{runner}", f"raw WSGI on {runner}", "proxy", TOKEN, f"R@{runner}", "bench")]
    return servers, cases


def sweep_plan(grid: list[tuple[int, int]]) -> tuple[list[Server], list[Case]]:
    """Every setting of the grid at once (idle servers cost nothing), so rounds can interleave them."""
    servers, cases = [], []
    for workers, threads in grid:
        tag = f"{workers}x{threads}"
        servers += [Server(f"C@{tag}", "C", workers, threads), Server(f"R@{tag}", "raw", workers, threads)]
        cases += [Case(f"C@{tag}", f"portal cookie verify, {tag}", "proxy", {}, f"C@{tag}", USER),
                  Case(f"R@{tag}", f"raw WSGI, {tag}", "proxy", TOKEN, f"R@{tag}", "bench")]
    return servers, cases


# -- processes ---------------------------------------------------------------------------------------------------


class Proc:
    """A server we start (with a parent-death signal, so an aborted bench leaves nothing behind) and stop."""

    def __init__(self, name: str, command: list[str], port: int, log: Path, cwd: Path | None = None,
                 ready_path: str = "/", env: dict[str, str] | None = None):
        self.name, self.command, self.port, self.log, self.cwd = name, command, port, log, cwd
        self.ready_path, self.env = ready_path, env
        self.process: subprocess.Popen | None = None

    def start(self) -> Proc:
        command = [SETPRIV, "--pdeathsig", "TERM", "--", *self.command] if SETPRIV else self.command
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=dict(os.environ, **(self.env or {})))
        wait_until(self._ready, timeout=60, what=self.name, process=self.process, log=self.log)
        return self

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", self.ready_path)
            return conn.getresponse().status < 500
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the server and any worker it leaves behind (a worker busy with argon2 may outlive its parent)."""
        workers = self.children()
        stop_process(self.process)
        self.process = None
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while workers and time.monotonic() < deadline:
            workers = [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
            time.sleep(0.05)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def children(self) -> list[int]:
        """Worker processes (granian forks them from its main process)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if self.process and int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    found.append(int(stat.parent.name))
        return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def other_server(server: Server, target: str, port: int) -> list[str]:
    """The command serving `target` (portal or raw) on a server other than granian (bench/wsgi_servers.py)."""
    return [sys.executable, "-m", "bench.wsgi_servers", server.runner, target, str(port),
            str(server.threads)]


def portal_proc(server: Server) -> Proc:
    assert server.setup is not None
    config = str(server.setup.config_path)
    if server.runner == "granian":  # what ships
        command = [sys.executable, "-m", "authportal", "serve", "--config", config,
                   "--workers", str(server.workers), "--threads", str(server.threads)]
    else:
        command = other_server(server, "portal", server.setup.port)
    # A --baseline checkout comes first on the path (before the venv's editable install of this one).
    env = {CONFIG_PATH_ENV: config, **({"PYTHONPATH": str(server.checkout)} if server.checkout else {})}
    return Proc(f"portal {server.key}", command, server.setup.port, server.setup.directory / "serve.log",
                cwd=server.checkout or REPO, ready_path="/api/health/live", env=env)


def raw_proc(server: Server, port: int, workdir: Path) -> Proc:
    # The knobs authportal.server.run gives granian: WSGI, workers, blocking threads, backlog 2048, no access log.
    command = [str(VENV_BIN / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(server.workers), "--blocking-threads", str(server.threads), "--backlog", "2048",
               "--log-level", "warning", "bench.raw_wsgi:app"]
    if server.runner != "granian":
        command = other_server(server, "raw", port)
    return Proc(f"raw WSGI {server.key}", command, port, workdir / f"raw-{server.key}.log", cwd=REPO,
                env={"PYTHONPATH": str(REPO)})


# -- nginx ------------------------------------------------------------------------------------------------------

AUTH_PROXY = """
        location = /_auth {{
            internal;
            proxy_pass http://{upstream}/api/verify;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URL $scheme://$host$request_uri;
            proxy_set_header X-Original-Method $request_method;
        }}"""


def upstream_name(key: str) -> str:
    return "up_" + re.sub(r"\W", "_", key)


def nginx_config(www: Path, htpasswd: Path, cases: list[Case], upstreams: dict[str, int], nginx_workers: int) -> str:
    blocks = [f"    upstream {upstream_name(key)} {{ server 127.0.0.1:{port}; keepalive 64; "
              "keepalive_requests 10000; }" for key, port in upstreams.items()]
    for case in cases:
        head = f"    server {{\n        listen 127.0.0.1:{case.port};\n        root {www};"
        if case.kind == "static":
            body = "        location / { try_files $uri =404; }"
        elif case.kind == "basic":
            body = (f'        location / {{\n            auth_basic "bench";\n            auth_basic_user_file {htpasswd};\n'
                    "            try_files $uri =404;\n        }")
        elif case.kind == "local":
            # `return` is fine here, inside the auth location; the protected location serves the file.
            body = ("        location / { auth_request /_auth; try_files $uri =404; }\n"
                    "        location = /_auth {\n            internal;\n"
                    '            if ($http_x_bench_token != "ok") { return 401; }\n            return 200;\n        }')
        else:
            assert case.server is not None
            body = ("        location / {\n            auth_request /_auth;\n"
                    "            auth_request_set $auth_user $upstream_http_remote_user;\n"
                    "            add_header X-Remote-User $auth_user always;\n"
                    "            try_files $uri =404;\n        }" + AUTH_PROXY.format(upstream=upstream_name(case.server)))
        blocks.append(f"{head}\n{body}\n    }}")
    return "\n".join([
        f"worker_processes {nginx_workers};",
        "events { worker_connections 1024; }",
        "http {",
        "    include /etc/nginx/mime.types;",
        "    default_type application/octet-stream;",
        "    access_log off;",
        "    sendfile on;",
        "    keepalive_requests 10000;",
        *blocks,
        "}",
        "",
    ])


# -- checks and measurement -----------------------------------------------------------------------------------


def fetch(port: int, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", PATH, headers={"Host": HOST, **headers})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def validate(case: Case) -> None:
    """200 + the file with the credential, 401 without: else the case measures something else."""
    status, headers, body = fetch(case.port, case.headers)
    problems = []
    if status != 200 or body != INDEX_HTML:
        problems.append(f"with credential: {status} (want 200 and the static file)")
    if case.expect_user and headers.get("x-remote-user") != case.expect_user:
        problems.append(f"with credential: X-Remote-User {headers.get('x-remote-user')!r}, want {case.expect_user!r}")
    if case.protected:
        status, _, body = fetch(case.port, {})
        if status != 401 or body == INDEX_HTML:
            problems.append(f"without credential: {status} (want 401)")
    if problems:
        raise SystemExit(f"case {case.name} ({case.title}) is misconfigured: " + "; ".join(problems))


class CpuMeter:
    """Machine CPU split into ours (this bench and every process under it) and foreign (anyone else's).

    The machine may be shared: a test suite running next to the bench takes cores from nginx, wrk and
    the portal alike, and the numbers drop for reasons that have nothing to do with the verify path.
    Each measurement records how much CPU others used during it, and is repeated once when it was busy.
    """

    HZ = os.sysconf("SC_CLK_TCK")
    budget = 40.0  # seconds of waiting for quiet (and of repeats) in one run, at most

    def __init__(self, roots: dict[str, int] | None = None):
        self.roots = roots or {}

    @staticmethod
    def _machine() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        # Busy in processes (user, nice, system): irq/softirq time (loopback networking is much of it) is
        # not charged to any process, so it is left out here rather than counted as someone else's.
        return values[0] + values[1] + values[2], sum(values)

    @staticmethod
    def _ticks(roots: dict[str, int]) -> tuple[int, dict[str, int]]:
        """CPU ticks of this process tree, and of the subtree under each of `roots` (label -> pid).

        Each process counts with its reaped children's time (cutime/cstime), so work of processes that
        ended during the measurement (wrk) is counted once, in whoever waited for them.
        """
        parents: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid = int(stat.parent.name)
                parents[pid] = int(fields[1])
                ticks[pid] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        me = os.getpid()
        ours = 0
        under = dict.fromkeys(roots, 0)
        by_pid = {pid: label for label, pid in roots.items()}
        for pid, tick in ticks.items():
            node, labels = pid, []
            while node and node != me:
                if node in by_pid:
                    labels.append(by_pid[node])
                node = parents.get(node, 0)
            if node == me:
                ours += tick
                for label in labels:
                    under[label] += tick
        return ours, under

    def __enter__(self) -> CpuMeter:
        self.start = (*self._machine(), *self._ticks(self.roots))
        return self

    def __exit__(self, *exc: Any) -> None:
        busy, total, ours, under = self.start
        busy2, total2, ours2, under2 = (*self._machine(), *self._ticks(self.roots))
        self.machine_busy = (busy2 - busy) / max(1, total2 - total)  # fraction of all cores, in processes
        self.foreign = max(0.0, (busy2 - busy) - (ours2 - ours)) / max(1, total2 - total)
        self.ours_s = (ours2 - ours) / self.HZ
        self.under_s = {label: (under2[label] - under[label]) / self.HZ for label in self.roots}

    @classmethod
    def wait_quiet(cls, limit: float, threshold: float = 0.10) -> float:
        """Wait (up to `limit` s) until others use < threshold of the machine over 0.5 s; return what they use."""
        started = time.monotonic()
        deadline = started + max(0.0, min(limit, cls.budget))
        while True:
            with cls() as meter:
                time.sleep(0.5)
            if meter.foreign < threshold or time.monotonic() >= deadline:
                cls.budget -= time.monotonic() - started
                return meter.foreign


NOISY = 0.10  # others used more than this share of the machine during a measurement: repeat it once


def run_wrk(case: Case, seconds: float, script: Path, connections: int = 32) -> dict[str, Any]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script),
               "-H", f"Host: {HOST}"]
    for name, value in case.headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(f"http://127.0.0.1:{case.port}{PATH}")
    with CpuMeter(case.watch) as meter:
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    match = re.search(r"^BENCH_JSON (.*)$", out, re.M)
    if not match:
        raise RuntimeError(f"wrk printed no report:\n{out}")
    raw = json.loads(match[1])
    errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    requests_done = max(1, raw["requests"])
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000, "requests": raw["requests"], "seconds": raw["duration_us"] / 1e6,
        "non_2xx": raw["non_2xx"], "socket_errors": errors,
        "ok_rps": (raw["requests"] - raw["non_2xx"]) / (raw["duration_us"] / 1e6),
        "valid": (raw["non_2xx"] == 0 or case.refusals_expected) and errors == 0 and raw["requests"] > 0,
        "machine_busy": meter.machine_busy, "foreign_cpu": meter.foreign,
        # CPU per answered request: everything of ours (wrk, nginx, servers), nginx alone, the auth server alone.
        "cpu_us_per_req": 1e6 * meter.ours_s / requests_done,
        **{f"{label}_cpu_us_per_req": 1e6 * used / requests_done for label, used in meter.under_s.items()},
    }


def measure(case: Case, seconds: float, warmup: float, script: Path) -> dict[str, Any]:
    """Warm up, measure; when other processes took a noticeable share of the CPU, wait for quiet and redo once."""
    if warmup:
        run_wrk(case, warmup, script)
    result = run_wrk(case, seconds, script)
    if result["foreign_cpu"] > NOISY and CpuMeter.budget > seconds + warmup:
        print(f"  {case.name:7} others used {result['foreign_cpu']:.0%} of the CPU during it "
              f"({result['rps']:,.0f} req/s): again", flush=True)
        CpuMeter.budget -= seconds + warmup  # the repeat comes out of the same time budget as the waiting
        CpuMeter.wait_quiet(20)
        if warmup:
            run_wrk(case, warmup, script)
        result = run_wrk(case, seconds, script)
    result["noisy"] = result["foreign_cpu"] > NOISY
    print_line(case.name, result)
    return result


def print_line(name: str, result: dict[str, Any]) -> None:
    flags = []
    if result["valid"] and result["non_2xx"]:
        flags.append(f"{result['non_2xx']} refused as busy, {result['ok_rps']:,.0f} req/s answered 200")
    if not result["valid"]:
        flags.append(f"INVALID: {result['non_2xx']} non-2xx, {result['socket_errors']} socket errors")
    if result["noisy"]:
        flags.append(f"NOISY: others used {result['foreign_cpu']:.0%} of the CPU")
    auth = f"{result['auth_cpu_us_per_req']:6.0f}" if "auth_cpu_us_per_req" in result else "     -"
    print(f"  {name:7} {result['rps']:10,.0f} req/s  p50 {result['p50_ms']:7.2f} ms  "
          f"p99 {result['p99_ms']:8.2f} ms  CPU µs/req: all {result['cpu_us_per_req']:6.0f} "
          f"nginx {result['nginx_cpu_us_per_req']:5.0f} auth server {auth}  "
          f"(others {result['foreign_cpu']:4.0%}){'   ' if flags else ''}{'; '.join(flags)}", flush=True)


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's rounds as one result: req/s over all of them, p50 weighted by requests, p99 the worst."""
    total = sum(r["requests"] for r in rounds) or 1
    combined: dict[str, Any] = {
        "rps": sum(r["requests"] for r in rounds) / sum(r["seconds"] for r in rounds),
        "p50_ms": sum(r["p50_ms"] * r["requests"] for r in rounds) / total,
        "p99_ms": max(r["p99_ms"] for r in rounds),
        "max_ms": max(r["max_ms"] for r in rounds),
        "requests": sum(r["requests"] for r in rounds), "seconds": sum(r["seconds"] for r in rounds),
        "non_2xx": sum(r["non_2xx"] for r in rounds), "socket_errors": sum(r["socket_errors"] for r in rounds),
        "valid": all(r["valid"] for r in rounds), "noisy": any(r["noisy"] for r in rounds),
        "foreign_cpu": max(r["foreign_cpu"] for r in rounds),
    }
    for key in [k for k in rounds[0] if k.endswith("cpu_us_per_req")]:
        combined[key] = sum(r[key] * r["requests"] for r in rounds) / total
    combined["rounds"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rounds]
    return combined


# -- setup ------------------------------------------------------------------------------------------------------


def session_cookie(setup: PortalSetup) -> str:
    http = requests.Session()
    response = login(http, f"http://auth.example.test:{setup.port}", USER)
    cookie = http.cookies.get("authportal_session")
    if response.status_code not in (200, 302, 303) or not cookie:
        raise SystemExit(f"login to {setup.directory} failed: {response.status_code} {response.text[:300]}")
    return cookie


def portal_overrides(flavour: str, redis_url: str | None) -> dict[str, Any]:
    # Users are hashed with the production argon2id defaults (t=3, m=64 MiB, p=4), so CU costs what it would.
    common = {"log": {"level": "warning", "audit_file": "audit.log"},
              "authentication": {"file": {"password": PasswordHashConfig().model_dump()}}}
    if flavour == "CR":
        return {**common, "session": {"redis": {"url": redis_url}}}
    if flavour == "C10k":
        # 10,000 rules for other hosts, before the seed rules (whose ^/prometheus/ rule matches the bench's path).
        extra = [{"domain": [f"svc{i:05d}.example.test"], "subject": ["group:admins"], "policy": "one_factor"}
                 for i in range(10_000)]
        return {**common, "access_control": {"default_policy": "deny", "rules": extra + SEED_RULES}}
    if flavour == "CU":
        return {**common, "authentication": {**common["authentication"], "credentials_cache_ttl": 0}}
    return common


def write_many_users(setup: PortalSetup, users: dict[str, dict[str, Any]]) -> None:
    """The bench's users plus 100,000 more (sharing one hash: hashing each would take hours), for C100kF."""
    document = users_document(users)
    filler = document["users"][USER]["password"]
    document["users"].update({f"user{i:06d}": {"password": filler, "displayname": f"User {i}", "email":
                                               f"user{i}@example.test", "groups": ["monitoring", "dev"]}
                              for i in range(100_000)})
    setup.users_path.write_text(yaml_rs.dumps(document))


def versions() -> dict[str, str]:
    def run(*command: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(command, capture_output=True, text=True, timeout=10)
            return (result.stdout + result.stderr).strip().splitlines()[0]
        return "?"

    import granian
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "authportal"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "python": platform.python_version(), "granian": granian.__version__,
        "nginx": run("nginx", "-v"), "wrk": run("wrk", "-v"), "redis": run("redis-server", "--version"),
        "kernel": platform.release(), "cpu": cpu,
        "authportal_commit": run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
        "authportal_uncommitted_changes": bool(dirty),
    }


class Bench:
    """The temp dir, the servers, one nginx with a server block per case; all stopped on exit."""

    def __init__(self, stack: contextlib.ExitStack, nginx_workers: int):
        self.stack = stack
        self.nginx_workers = nginx_workers
        self.root = Path(tempfile.mkdtemp(prefix="authportal-bench-"))
        self.root.chmod(0o755)  # nginx workers (nobody) read the static file and htpasswd in here
        stack.callback(shutil.rmtree, self.root, ignore_errors=True)
        self.script = self.root / "report.lua"
        self.script.write_text(WRK_REPORT)
        self.startup_s: dict[str, float] = {}  # server key -> seconds from start to answering

    def start(self, servers: list[Server], cases: list[Case]) -> None:
        """Start the servers the cases use (and redis for CR), then nginx; check every case."""
        t0 = time.monotonic()
        used = {case.server for case in cases}
        self.servers = {s.key: s for s in servers if s.key in used}
        www = self.root / "www"
        (www / PATH.lstrip("/")).parent.mkdir(parents=True)
        (www / PATH.lstrip("/")).write_bytes(INDEX_HTML)
        htpasswd = self.root / "htpasswd"
        subprocess.run(["htpasswd", "-bcm", str(htpasswd), USER, PASSWORD], check=True, capture_output=True)
        htpasswd.chmod(0o644)

        redis_url = None
        if any(s.flavour == "CR" for s in self.servers.values()):
            redis = RedisServer()
            self.stack.callback(redis.stop)
            redis_url = redis.start().url
        users = None
        ports = {}
        for server in self.servers.values():
            if server.flavour == "raw":
                ports[server.key] = free_port()
                server.proc = raw_proc(server, ports[server.key], self.root)
            else:
                if users is None:
                    hashed = PasswordHasher(PasswordHashConfig()).hash(PASSWORD)
                    users = dict(USERS, **{USER: dict(USERS[USER], password=hashed)})
                server.setup = PortalSetup(self.root / f"portal-{server.key.replace('@', '-')}",
                                           overrides=portal_overrides(server.flavour, redis_url), users=users)
                if server.flavour == "C100kF":
                    write_many_users(server.setup, users)
                ports[server.key] = server.setup.port
                server.proc = portal_proc(server)
            self.stack.callback(server.proc.stop)
            ready = time.monotonic()
            server.proc.start()
            self.startup_s[server.key] = time.monotonic() - ready
        resolve_example_test()
        cookies = {key: session_cookie(s.setup) for key, s in self.servers.items() if s.setup is not None}
        for case in cases:
            case.port = free_port()
            if case.server in cookies and not case.headers:
                case.headers = {"Cookie": f"authportal_session={cookies[case.server]}"}
        self.cases = {case.name: case for case in cases}
        self.nginx = Nginx(nginx_config(www, htpasswd, cases, ports, self.nginx_workers))
        self.stack.callback(self.nginx.stop)
        self.nginx.start()
        for case in cases:
            case.watch = {"nginx": self.nginx.process.pid}
            if case.server:
                case.watch["auth"] = self.servers[case.server].proc.process.pid
            validate(case)
        print("start-up (launch to answering): " + ", ".join(f"{k} {v:.1f} s" for k, v in self.startup_s.items()))
        settings = sorted({f"{s.workers} worker(s) x {s.threads} threads" for s in self.servers.values()})
        print(f"set up in {time.monotonic() - t0:.1f} s: nginx ({self.nginx_workers} workers), "
              f"{', '.join(self.servers) or 'no auth servers'} ({'; '.join(settings)}); every case answers 200 "
              f"with its credential{', 401 without' if any(c.protected for c in cases) else ''}", flush=True)

    def run_rounds(self, names: list[str], seconds: float, warmup: float, rounds: int) -> dict[str, dict[str, Any]]:
        """Each case `rounds` times for seconds/rounds, odd rounds in reverse order; combined per case."""
        per_case: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for index in range(rounds):
            print(f"round {index + 1}/{rounds}", flush=True)
            for name in (names if index % 2 == 0 else names[::-1]):
                slice_s = max(1, round(seconds / rounds))  # wrk takes whole seconds only
                per_case[name].append(measure(self.cases[name], slice_s, warmup, self.script))
        return {name: combine(results) for name, results in per_case.items()}

    def profile(self, case: Case, seconds: float, out: Path) -> None:
        """py-spy (`--gil`: only the thread holding the GIL) on the granian worker while wrk loads the case."""
        pyspy = VENV_BIN / "py-spy"
        if not pyspy.exists():
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        assert case.server is not None
        proc = self.servers[case.server].proc
        assert proc is not None and proc.process is not None
        pids = proc.children() or [proc.process.pid]
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob(f"profile-{case.name}-*.txt"):
            old.unlink()
        run_wrk(case, 1, self.script)
        rate, duration = 200, max(1, int(seconds))
        files = [out / f"profile-{case.name}-{pid}.txt" for pid in pids]
        spies = [subprocess.Popen([str(pyspy), "record", "--pid", str(pid), "--duration", str(duration),
                                   "--rate", str(rate), "--gil", "--nonblocking", "--format", "raw",
                                   "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid, path in zip(pids, files, strict=True)]
        result = run_wrk(case, duration, self.script)
        for spy in spies:
            spy.wait(timeout=60)
        summary = summarize_profile(files, rate * duration * len(pids), result)
        (out / f"profile-{case.name}-summary.txt").write_text(summary)
        print(f"\nprofile of the granian worker during {case.name} ({result['rps']:,.0f} req/s under py-spy; "
              f"raw stacks in {out}):\n{summary}", end="")


def summarize_profile(files: list[Path], ticks: int, result: dict[str, Any]) -> str:
    """How long the worker holds the GIL per request, and in what: the app's code or granian's WSGI glue."""
    buckets: dict[str, int] = {}
    functions: dict[str, int] = {}
    total = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [frame for frame in stack.split(";") if not frame.startswith("thread (")]
            n = int(count)
            total += n
            app = [frame.split(" (")[0] for frame in frames if "authportal/" in frame or "raw_wsgi.py" in frame]
            if app:
                where = "the app (authportal: verify, rules, session, metrics; or raw_wsgi)"
                for name in dict.fromkeys(app):
                    functions[name] = functions.get(name, 0) + n
            elif any("granian/" in frame for frame in frames):
                where = "granian's Python WSGI glue (environ, start_response, handing the response over)"
            else:
                where = "no Python frame (native code holding the GIL: granian building the environ)"
            buckets[where] = buckets.get(where, 0) + n
    if not total:
        return "no samples (py-spy failed?)\n"
    held = total / ticks
    per_request = held * result["seconds"] / max(1, result["requests"]) * 1e6
    lines = [f"GIL held {held:.0%} of the time ({total} of {ticks} samples): ~{per_request:.0f} µs of wall time per "
             f"request; the worker used {result.get('auth_cpu_us_per_req', 0):.0f} µs CPU per request in all",
             "of the GIL time:"]
    lines += [f"  {n / total:6.1%}  {where}" for where, n in sorted(buckets.items(), key=lambda kv: -kv[1])]
    if functions:
        lines.append("in the app (inclusive, share of the GIL time):")
        lines += [f"  {n / total:6.1%}  {name}" for name, n in sorted(functions.items(), key=lambda kv: -kv[1])[:14]]
    return "\n".join(lines) + "\n"


def inprocess_costs(bench: Bench, names: list[str], calls: int = 10_000, rounds: int = 5) -> dict[str, float]:
    """µs of Python per verify with no server at all: each portal's WSGI app called directly.

    The apps take turns (round-robin, best round kept), so a burst of load elsewhere on the machine
    does not land on one case only.
    """
    import logging

    from authportal.app import create_app
    from authportal.config import load_config

    logging.disable(logging.WARNING)
    apps: dict[str, tuple[Any, dict[str, Any]]] = {}
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    try:
        for name in names:
            case = bench.cases[name]
            setup = bench.servers[case.server].setup
            app = create_app(load_config(setup.config_path))
            apps[name] = app, {
                "REQUEST_METHOD": "GET", "PATH_INFO": "/api/verify", "REMOTE_ADDR": "127.0.0.1",
                "HTTP_HOST": f"127.0.0.1:{setup.port}", "HTTP_X_ORIGINAL_URL": f"http://{HOST}{PATH}",
                "HTTP_X_ORIGINAL_METHOD": "GET",
                **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in case.headers.items()}}
            app(dict(apps[name][1]), start_response)
            if statuses[-1] != "200 OK":
                raise SystemExit(f"in-process verify for {name} answered {statuses[-1]}")
        best = dict.fromkeys(apps, float("inf"))
        for _ in range(rounds):
            for name, (app, environ) in apps.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    app(dict(environ), start_response)
                best[name] = min(best[name], (time.perf_counter() - t0) / calls)
            statuses.clear()
        return {name: seconds * 1e6 for name, seconds in best.items()}
    finally:
        for app, _ in apps.values():
            app.close()
        logging.disable(logging.NOTSET)


def print_table(results: dict[str, dict[str, Any]],
                cases: dict[str, Case]) -> list[tuple[str, float, float, float]]:
    print()
    print("| case | what | req/s | p50 ms | p99 ms | CPU µs/req (all / nginx / auth server) | others' CPU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        flag = ("" if r["valid"] else " (INVALID)") + (" (NOISY)" if r.get("noisy") else "")
        auth = f"{r['auth_cpu_us_per_req']:,.0f}" if "auth_cpu_us_per_req" in r else "-"
        print(f"| {name} | {cases[name].title} | {r['rps']:,.0f}{flag} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {r['cpu_us_per_req']:,.0f} / {r['nginx_cpu_us_per_req']:,.0f} / {auth} | {r['foreign_cpu']:.0%} |")
    ratios = []
    for a, b in RATIOS:
        if a in results and b in results:
            # The same ratio within each round (cases of one round ran close together): how much it moves.
            per_round = [x["rps"] / y["rps"] for x, y in zip(results[a]["rounds"], results[b]["rounds"], strict=False)]
            ratios.append((f"{a}/{b}", results[a]["rps"] / results[b]["rps"], min(per_round), max(per_round)))
    print()
    print("ratios (req/s; in brackets the lowest and highest of the same ratio within single rounds):")
    print("  ".join(f"{name} = {value:.2f} [{low:.2f}-{high:.2f}]" for name, value, low, high in ratios))
    return ratios


def sweep(bench: Bench, seconds: float, rounds: int, grid: list[tuple[int, int]]) -> int:
    """Portal and raw WSGI with each workers x threads setting, all running at once, measured in alternating rounds."""
    servers, cases = sweep_plan(grid)
    bench.start(servers, cases)
    results = bench.run_rounds([c.name for c in cases], seconds, 1.0, rounds)
    print()
    print("| workers | threads | C req/s | C p99 ms | C server CPU µs/req | R req/s | R server CPU µs/req |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for workers, threads in grid:
        c, r = results[f"C@{workers}x{threads}"], results[f"R@{workers}x{threads}"]
        c_rounds = " / ".join(f"{x['rps']:,.0f}" for x in c["rounds"])
        r_rounds = " / ".join(f"{x['rps']:,.0f}" for x in r["rounds"])
        print(f"| {workers} | {threads} | {c['rps']:,.0f} ({c_rounds}) | {c['p99_ms']:.1f} "
              f"| {c['auth_cpu_us_per_req']:.0f} | {r['rps']:,.0f} ({r_rounds}) | {r['auth_cpu_us_per_req']:.0f} |")
    best = max(grid, key=lambda k: results[f"C@{k[0]}x{k[1]}"]["rps"])
    print(f"\nfastest for C: --workers {best[0]} --threads {best[1]}")
    return 0


def compare_servers(bench: Bench, seconds: float, rounds: int, runners: list[str], workers: int, threads: int,
                    out: Path) -> int:
    """The real portal on each WSGI server against nginx auth_basic, all running at once, in alternating rounds."""
    servers, cases = servers_plan(runners, workers, threads)
    bench.start(servers, cases)
    results = bench.run_rounds([c.name for c in cases], seconds, 1.0, rounds)
    b = results["B"]
    print(f"\nB (nginx auth_basic): {b['rps']:,.0f} req/s, p99 {b['p99_ms']:.1f} ms")
    print("| server | C req/s | C p99 ms | C/B | C server CPU µs/req | R req/s | R p99 ms | C/R |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for runner in runners:
        c, r = results[f"C@{runner}"], results[f"R@{runner}"]
        flag = "" if c["valid"] and r["valid"] else " (INVALID)"
        print(f"| {runner}{flag} | {c['rps']:,.0f} | {c['p99_ms']:.1f} | {c['rps'] / b['rps']:.2f} "
              f"| {c['auth_cpu_us_per_req']:.0f} | {r['rps']:,.0f} | {r['p99_ms']:.1f} | {c['rps'] / r['rps']:.2f} |")
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), **versions()},
        "settings": {"wrk": "-t2 -c32", "seconds_per_case": seconds, "rounds": rounds, "workers": workers,
                     "threads": threads},
        "cases": {name: {k: v for k, v in r.items() if k != "rounds"} for name, r in results.items()},
    }
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["valid"] for r in results.values()) else 1


def baseline(root: Path, revision: str) -> Path:
    """The package as it was at `revision`, unpacked under `root` (git archive: no worktree to clean up)."""
    target = root / "baseline"
    target.mkdir()
    archive = subprocess.run(["git", "archive", revision, "authportal", "templates", "static"], cwd=REPO,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, help="seconds per case, all rounds together (default 8; sweep 6)")
    parser.add_argument("--quick", action="store_true", help="4 s per case")
    parser.add_argument("--rounds", type=int, default=4,
                        help="split each case into this many interleaved rounds (default 4)")
    defaults = ServerConfig()  # the portal's own defaults on this machine
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="granian workers for portal and raw WSGI (default: the portal's, %(default)s)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="granian blocking threads per worker (default: the portal's, %(default)s)")
    parser.add_argument("--nginx-workers", type=int, default=os.cpu_count() or 1,
                        help="nginx worker_processes (default: nproc, as `worker_processes auto`)")
    parser.add_argument("--cases", default=",".join(ORDER), help="comma-separated subset, e.g. C,R")
    parser.add_argument("--sweep", action="store_true",
                        help="instead: workers 1/2 x threads 2/4/8 for C and R, interleaved (~2.5 min)")
    parser.add_argument("--grid", default=",".join(f"{w}x{t}" for w, t in SWEEP_GRID),
                        help="settings for --sweep, WORKERSxTHREADS comma-separated (default %(default)s)")
    parser.add_argument("--servers", nargs="?", const=",".join(SERVERS), metavar="LIST",
                        help="instead: the portal and the raw callable on each WSGI server, against B "
                             f"(default {','.join(SERVERS)}; needs bench/requirements-servers.txt); "
                             "writes bench/servers.json")
    parser.add_argument("--profile", action="store_true",
                        help="also py-spy the granian worker during R and C (needs py-spy; writes bench/out/)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results.json", help="where to write results")
    parser.add_argument("--baseline", metavar="REV",
                        help="also case C0: case C on the code of git revision REV, in the same interleaved rounds "
                             "(ratio C/C0: did a change slow the verify path?)")
    args = parser.parse_args()
    seconds = 4 if args.quick else args.duration or 8
    warmup = 1
    cu_seconds = 5 if args.quick else 6
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.baseline:
        wanted.append("C0")
    unknown = set(wanted) - set(ORDER) - {"C0"}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    for tool in ("nginx", "wrk", "htpasswd", "redis-server"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is not installed")

    # A SIGTERM (timeout, kill) unwinds normally, so every server is stopped and the temp dir removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    load_at_start = Path("/proc/loadavg").read_text().split()[:3]
    with contextlib.ExitStack() as stack:
        bench = Bench(stack, args.nginx_workers)
        if args.sweep:
            grid = [(int(w), int(t)) for w, t in (item.split("x") for item in args.grid.split(","))]
            return sweep(bench, 4 if args.quick else args.duration or 6, args.rounds, grid)
        if args.servers:
            return compare_servers(bench, seconds, args.rounds, args.servers.split(","), args.workers, args.threads,
                                   REPO / "bench" / "servers.json")
        servers, cases = main_plan(args.workers, args.threads)
        if args.baseline:
            servers.append(Server("C0", "C", args.workers, args.threads, checkout=baseline(bench.root, args.baseline)))
            cases.append(Case("C0", f"case C on {args.baseline}'s code", "proxy", {}, "C0", USER))
        bench.start(servers, [c for c in cases if c.name in wanted])
        names = [n for n in [*ORDER, "C0"] if n in wanted]
        repeated = [n for n in names if not bench.cases[n].once]
        print(f"wrk -t2 -c32, {seconds:g} s per case in {args.rounds} interleaved rounds, {warmup:g} s warm-up before "
              f"each; CU {cu_seconds:g} s once, no warm-up; nproc {os.cpu_count()}", flush=True)
        results = bench.run_rounds(repeated, seconds, warmup, args.rounds)
        for name in [n for n in names if bench.cases[n].once]:
            # No warm-up: CU's requests queue behind one another (~0.2 s of argon2 each), and a warm-up would
            # leave a backlog that the measurement then waits for.
            print(f"once: {name}", flush=True)
            results[name] = combine([measure(bench.cases[name], cu_seconds, 0, bench.script)])
        results = {n: results[n] for n in names}
        if args.profile:
            for name in ("R", "C"):
                if name in bench.cases:
                    bench.profile(bench.cases[name], seconds, REPO / "bench" / "out")
        ratios = print_table(results, bench.cases)
        inprocess = inprocess_costs(bench, [n for n in ("C", "CR", "CB", "C10k", "C100kF") if n in bench.cases])
        if inprocess:
            print("in-process (no server, no nginx), µs of Python per verify: "
                  + "  ".join(f"{name} {cost:.1f}" for name, cost in inprocess.items()))
        document = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"nproc": os.cpu_count(), "loadavg_at_start": load_at_start, **versions()},
            "settings": {"wrk": "-t2 -c32 --timeout 10s", "seconds_per_case": seconds, "rounds": args.rounds,
                         "warmup_s": warmup, "cu_seconds": cu_seconds,
                         "granian_workers": args.workers, "granian_threads": args.threads,
                         "nginx": f"worker_processes {args.nginx_workers}, upstream keepalive 64, access_log off",
                         "password_hash": "argon2id t=3 m=65536 p=4 (production defaults)"},
            "cases": {name: {"title": bench.cases[name].title, **{k: (round(v, 3) if isinstance(v, float) else v)
                                                                   for k, v in r.items()}}
                      for name, r in results.items()},
            "ratios": {name: round(value, 3) for name, value, _, _ in ratios},
            "ratio_ranges_within_rounds": {name: [round(low, 3), round(high, 3)] for name, _, low, high in ratios},
            "inprocess_us_per_verify": {name: round(cost, 2) for name, cost in inprocess.items()},
            "startup_s": {name: round(value, 2) for name, value in bench.startup_s.items()},
            "all_valid": all(r["valid"] for r in results.values()),
            "noisy_cases": [name for name, r in results.items() if r.get("noisy")],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json} (total {time.monotonic() - started:.0f} s)")
        return 0 if document["all_valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
