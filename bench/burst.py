"""A burst of 50 simultaneous logins while wrk drives cookie verifies through nginx.

Measures what the login gate is for: verify p99 idle vs during the burst, how
the 50 logins were answered (302 signed in, 503 busy: retry), and the portal's
memory (RSS of the server and its workers) at its highest.

    .venv/bin/python -m bench.burst          # ~20 s; writes bench/burst.json
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.verify import portal_overrides, session_cookie
from tests.servers import free_port
from tests.servers.nginx import Nginx
from tests.support.portal import PortalSetup, ServedPortal, login, resolve_example_test

REPO = Path(__file__).resolve().parents[1]

LOGINS = 50
NGINX = """
upstream portal {{ server 127.0.0.1:{portal}; keepalive 64; }}
server {{
    listen 127.0.0.1:{port};
    root {www};
    location / {{ auth_request /_auth; try_files $uri =404; }}
    location = /_auth {{
        internal;
        proxy_pass http://portal/api/verify;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URL http://app.example.test$request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header Connection "";
        proxy_http_version 1.1;
    }}
}}
"""


def wrk(port: int, cookie: str, seconds: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-H", f"Cookie: authportal_session={cookie}",
         f"http://127.0.0.1:{port}/prometheus/index.html"], stdout=subprocess.PIPE, text=True)


def parse(output: str) -> dict[str, float]:
    def ms(text: str) -> float:
        found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
        if found is None:
            raise SystemExit(f"cannot read wrk's latency {text!r} in:\n{output}")
        return float(found[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[found[2]]

    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1]),
            "p50_ms": ms(re.search(r"50%\s+(\S+)", output)[1]), "p99_ms": ms(re.search(r"99%\s+(\S+)", output)[1]),
            "non_2xx": int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", output)) else 0}


def rss_mib(pid: int) -> float:
    """RSS of a process and its children (the granian workers), in MiB."""
    pids = [pid, *map(int, subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split())]
    total = 0
    for one in pids:
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{one}/status").read_text())[1])
        except (OSError, TypeError):
            pass
    return total / 1024


def main() -> int:
    resolve_example_test()
    root = Path(tempfile.mkdtemp(prefix="authportal-burst-"))
    root.chmod(0o755)  # nginx workers (not root) read the page
    (root / "www" / "prometheus").mkdir(parents=True)
    (root / "www" / "prometheus" / "index.html").write_text("<p>protected</p>\n")
    setup = PortalSetup(root / "portal", overrides=portal_overrides("C", None))
    with ServedPortal(setup) as served:
        cookie = session_cookie(setup)
        port = free_port()
        nginx = Nginx(NGINX.format(portal=setup.port, port=port, www=root / "www")).start()
        try:
            idle = parse(wrk(port, cookie, 6).communicate()[0])
            idle_rss = rss_mib(served.process.pid)
            load = wrk(port, cookie, 8)
            time.sleep(1.5)
            answers: list[tuple[int, float]] = []
            peak = [idle_rss]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.1):
                    peak.append(rss_mib(served.process.pid))

            def one_login() -> None:
                started = time.perf_counter()
                status = login(requests.Session(), f"http://auth.example.test:{setup.port}", "alice").status_code
                answers.append((status, time.perf_counter() - started))

            sampler = threading.Thread(target=sample)
            sampler.start()
            burst = [threading.Thread(target=one_login) for _ in range(LOGINS)]
            for thread in burst:
                thread.start()
            for thread in burst:
                thread.join()
            during = parse(load.communicate()[0])
            stop.set()
            sampler.join()
        finally:
            nginx.stop()
    statuses = {str(code): sum(1 for s, _ in answers if s == code) for code in sorted({s for s, _ in answers})}
    result = {"logins": LOGINS, "login_answers": statuses,
              "slowest_login_s": round(max(t for _, t in answers), 3), "idle": idle, "during_burst": during,
              "p99_ratio": round(during["p99_ms"] / idle["p99_ms"], 2),
              "rss_mib": {"idle": round(idle_rss, 1), "peak": round(max(peak), 1)}}
    print(json.dumps(result, indent=2))
    (REPO / "bench" / "burst.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
