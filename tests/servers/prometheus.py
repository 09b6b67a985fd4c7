"""Debian's Prometheus 2.42 and Alertmanager 0.25, as they run behind a proxy under a path prefix.

Without `route_prefix`, both serve under the path of their external URL
(`/prometheus/-/ready`), which suits `proxy_pass http://127.0.0.1:PORT;` (no
trailing slash); with `route_prefix="/"` they serve at the root, which suits
`proxy_pass http://127.0.0.1:PORT/;`. `url()` follows whichever is in effect.
"""
from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit

import requests

from . import free_port
from .process import ServerProcess


class _PrometheusFamily(ServerProcess):
    """What Prometheus and Alertmanager share: external URL, route prefix, readiness at `<prefix>/-/ready`."""

    config_name = "config.yml"

    def __init__(self, external_url: str, route_prefix: str | None = None) -> None:
        super().__init__()
        self.port = free_port()
        self.external_url = external_url
        self.route_prefix = route_prefix
        self.prefix = (route_prefix if route_prefix is not None else urlsplit(external_url).path).rstrip("/")

    @property
    def ports(self) -> list[int]:
        return [self.port]

    def url(self, path: str = "/") -> str:
        """Direct URL on loopback (not through the proxy), prefix included."""
        return f"http://127.0.0.1:{self.port}{self.prefix}{path}"

    def ready(self) -> bool:
        with urllib.request.urlopen(self.url("/-/ready"), timeout=1) as response:
            return response.status == 200

    def config(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        (self.dir / self.config_name).write_text(self.config())

    def web_flags(self) -> list[str]:
        flags = [f"--config.file={self.dir / self.config_name}", f"--web.listen-address=127.0.0.1:{self.port}",
                 f"--web.external-url={self.external_url}"]
        if self.route_prefix is not None:
            flags.append(f"--web.route-prefix={self.route_prefix}")
        return flags


class Prometheus(_PrometheusFamily):
    """Prometheus scraping itself every second (so `up` appears quickly), TSDB in the temp dir.

    `admin_api=True` adds `--web.enable-admin-api`: `POST .../api/v1/admin/tsdb/snapshot` then really writes
    a snapshot (see `snapshots()`) instead of answering that the admin APIs are disabled.
    """

    binary_name = "prometheus"

    def __init__(self, external_url: str, route_prefix: str | None = None, admin_api: bool = False) -> None:
        super().__init__(external_url, route_prefix)
        self.admin_api = admin_api

    def snapshots(self) -> list[str]:
        """Names of the TSDB snapshots taken so far (the admin API writes them under data/snapshots/)."""
        folder = self.dir / "data" / "snapshots"
        return sorted(entry.name for entry in folder.iterdir()) if folder.exists() else []

    def config(self) -> str:
        return (
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: prometheus\n"
            f"    metrics_path: {self.prefix}/metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{self.port}']\n"
        )

    def command(self) -> list[str]:
        admin = ["--web.enable-admin-api"] if self.admin_api else []
        return [self.binary, *self.web_flags(), f"--storage.tsdb.path={self.dir / 'data'}", *admin]


class Alertmanager(_PrometheusFamily):
    """Alertmanager with one 'null' receiver and clustering off (else it binds 0.0.0.0:9094 and waits ~4 s)."""

    binary_name = "prometheus-alertmanager"

    def config(self) -> str:
        return "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n"

    def command(self) -> list[str]:
        return [self.binary, *self.web_flags(), f"--storage.path={self.dir / 'data'}", "--cluster.listen-address="]


class ScrapingPrometheus(Prometheus):
    """Prometheus whose whole config is the given text (an example's, placeholders filled), and its API."""

    def __init__(self, config_text: str) -> None:
        super().__init__("http://prometheus.example.test/", route_prefix="/")
        self.config_text = config_text

    def config(self) -> str:
        return self.config_text

    def target(self, job: str) -> dict | None:
        """The active target of `job` as /api/v1/targets shows it (health, lastError), None before discovery."""
        answer = requests.get(self.url("/api/v1/targets"), params={"state": "active"}, timeout=5).json()
        return next((t for t in answer["data"]["activeTargets"] if t["labels"]["job"] == job), None)

    def query(self, expr: str) -> list:
        return requests.get(self.url("/api/v1/query"), params={"query": expr}, timeout=5).json()["data"]["result"]
