"""Self-tests of the real-server fixtures: each server starts, does its job, and is seen doing it."""
from __future__ import annotations

import json
import struct

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.servers import free_port, wait_until
from tests.servers.browser import ARTIFACTS
from tests.servers.nginx import Nginx
from tests.servers.process import ConfigError
from tests.servers.prometheus import Alertmanager, Prometheus
from tests.servers.redis import RedisServer


def reached_upstream(upstream, path):
    return [request for request in upstream.requests if request.path == path]


def test_upstream_echoes_and_records(upstream):
    response = requests.post(f"{upstream.url}/stub/echo?x=1", data=b"hello", headers={"X-Test": "direct"}, timeout=5)
    assert response.json()["method"] == "POST"
    assert response.json()["headers"]["X-Test"] == "direct"
    [seen] = reached_upstream(upstream, "/stub/echo?x=1")
    assert (seen.method, seen.body, seen.headers["x-test"]) == ("POST", b"hello", "direct")


def test_nginx_proxies_to_upstream(nginx_factory, upstream):
    nginx = nginx_factory("""
        server {
            listen 127.0.0.1:{{PORT}};
            location / {
                proxy_pass {{UPSTREAM}};
                proxy_set_header X-Proxied-By nginx;
            }
        }
    """, UPSTREAM=upstream.url)
    response = requests.get(nginx.url("/nginx/check?q=1"), headers={"X-Test": "through-nginx"}, timeout=5)
    assert response.json()["path"] == "/nginx/check?q=1"
    assert response.headers["Server"].startswith("nginx")
    [seen] = reached_upstream(upstream, "/nginx/check?q=1")
    assert seen.headers["X-Test"] == "through-nginx"
    assert seen.headers["X-Proxied-By"] == "nginx"
    # nginx writes the access log line after sending the response: poll for it
    wait_until(lambda: "GET /nginx/check?q=1" in (nginx.dir / "access.log").read_text(), timeout=30, what="access log")


def test_nginx_reload_applies_new_config(nginx_factory):
    answer = "server { listen 127.0.0.1:{{PORT}}; location / { return 200 '{{TEXT}}'; } }"
    nginx = nginx_factory(answer, TEXT="one")
    assert requests.get(nginx.url("/"), timeout=5).text == "one"
    nginx.reload(answer, TEXT="two")
    assert requests.get(nginx.url("/"), timeout=5).text == "two"
    with pytest.raises(ConfigError, match="unknown directive"):
        nginx.reload("server { listen 127.0.0.1:{{PORT}}; bogus_directive on; }")
    assert requests.get(nginx.url("/"), timeout=5).text == "two"  # the invalid config was not applied


def test_nginx_rejects_invalid_config_with_its_own_words(nginx_factory):
    with pytest.raises(ConfigError, match=r"\[emerg\] unknown directive \"bogus_directive\""):
        nginx_factory("server { listen 127.0.0.1:{{PORT}}; bogus_directive on; }")


def test_nginx_runs_a_complete_config_file_with_placeholders(tmp_path, nginx_factory, upstream):
    example = tmp_path / "example.conf"
    example.write_text("""
        worker_processes 1;
        events { worker_connections 64; }
        http {
            server {
                listen {{LISTEN}};
                location / { proxy_pass {{UPSTREAM}}; }
            }
        }
    """)
    with pytest.raises(KeyError, match="LISTEN, UPSTREAM"):
        Nginx.from_file(example, {})
    port = free_port()
    nginx = nginx_factory.from_file(example, {"LISTEN": f"127.0.0.1:{port}", "UPSTREAM": upstream.url})
    assert nginx.port == port
    assert f"proxy_temp_path {nginx.dir}/proxy_temp;" in nginx.config_text
    assert requests.get(nginx.url("/from-file"), timeout=5).json()["path"] == "/from-file"


def test_redis_session_server_answers(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping() is True
    client.set("servers-selftest", "value")
    assert client.get("servers-selftest") == b"value"
    client.close()


def test_redis_stop_and_restart_on_the_same_port():
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 0), socket_timeout=2)
        client.set("k", "v")
        server.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        server.restart()
        assert client.ping() is True
        assert client.get("k") is None  # no persistence: a fresh, empty Redis
        client.close()


def test_haproxy_proxies_to_upstream(haproxy_factory, upstream):
    haproxy = haproxy_factory("""
        defaults
            mode http
            timeout connect 1s
            timeout client 5s
            timeout server 5s
        frontend web
            bind 127.0.0.1:{{PORT}}
            http-request set-header X-Proxied-By haproxy
            default_backend app
        backend app
            server app 127.0.0.1:{{UPSTREAM_PORT}}
    """, UPSTREAM_PORT=upstream.port)
    response = requests.get(haproxy.url("/haproxy/check"), headers={"X-Test": "through-haproxy"}, timeout=5)
    # HAProxy sends header names in lower case: compare names case-insensitively (as `seen.headers` does)
    assert response.json()["headers"]["x-proxied-by"] == "haproxy"
    [seen] = reached_upstream(upstream, "/haproxy/check")
    assert (seen.headers["X-Test"], seen.headers["X-Proxied-By"]) == ("through-haproxy", "haproxy")


def test_caddy_proxies_to_upstream(caddy_factory, upstream):
    caddy = caddy_factory("""
        http://app.example.test:{{PORT}} {
            reverse_proxy 127.0.0.1:{{UPSTREAM_PORT}} {
                header_up X-Proxied-By caddy
            }
        }
    """, UPSTREAM_PORT=upstream.port)
    host = f"app.example.test:{caddy.port}"
    response = requests.get(caddy.url("/caddy/check"), headers={"Host": host, "X-Test": "through-caddy"}, timeout=5)
    assert response.headers["Server"].startswith("Caddy")
    assert response.json()["headers"]["X-Proxied-By"] == "caddy"
    [seen] = reached_upstream(upstream, "/caddy/check")
    assert (seen.headers["X-Test"], seen.headers["Host"], seen.headers["X-Forwarded-Host"]) == (
        "through-caddy", host, host)
    assert "default_bind 127.0.0.1" in caddy.config_text


def test_prometheus_and_alertmanager_behind_nginx(nginx_factory):
    port = free_port()
    site = f"http://app.example.test:{port}"
    with Prometheus(f"{site}/prometheus/") as prometheus, \
            Prometheus(f"{site}/rooted/", route_prefix="/") as rooted, \
            Alertmanager(f"{site}/alertmanager/") as alertmanager:
        nginx = nginx_factory("""
            server {
                listen 127.0.0.1:{{PORT}};
                location /prometheus/ { proxy_pass http://127.0.0.1:{{PROMETHEUS}}; }
                location /rooted/ { proxy_pass http://127.0.0.1:{{ROOTED}}/; }
                location /alertmanager/ { proxy_pass http://127.0.0.1:{{ALERTMANAGER}}; }
            }
        """, PORT=port, PROMETHEUS=prometheus.port, ROOTED=rooted.port, ALERTMANAGER=alertmanager.port)
        assert prometheus.url("/-/ready").endswith(f"{prometheus.port}/prometheus/-/ready")
        assert rooted.url("/-/ready").endswith(f"{rooted.port}/-/ready")
        for path in ("/prometheus/-/ready", "/rooted/-/ready"):
            assert "Prometheus Server is Ready." in requests.get(nginx.url(path), timeout=5).text
        flags = requests.get(nginx.url("/prometheus/api/v1/status/flags"), timeout=5).json()["data"]
        assert flags["web.external-url"] == f"{site}/prometheus/"
        status = requests.get(nginx.url("/alertmanager/api/v2/status"), timeout=5).json()
        assert status["cluster"]["status"] == "disabled"
        assert "receiver: \"null\"" in status["config"]["original"]


def test_chromium_loads_a_page_by_name_and_takes_a_screenshot(browser, upstream):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        response = page.goto(f"http://app.example.test:{upstream.port}/browser/check")
        assert response.json()["path"] == "/browser/check"
        shot = ARTIFACTS / "servers-chromium.png"
        page.screenshot(path=shot, full_page=False)
        assert json.loads(response.body())["method"] == "GET"
    finally:
        page.close()
    [seen] = reached_upstream(upstream, "/browser/check")
    assert seen.headers["Host"] == f"app.example.test:{upstream.port}"  # resolved by --host-resolver-rules
    assert "HeadlessChrome" in seen.headers["User-Agent"]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 800)
