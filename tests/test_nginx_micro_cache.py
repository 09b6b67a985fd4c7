"""examples/nginx/micro-cache.conf on real nginx: allowed answers are reused for at most 2 s, nothing else."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import free_port, wait_until
from tests.support.portal import PortalSetup, ServedPortal, login


@pytest.fixture
def stack(tmp_path, nginx_factory, upstream) -> Iterator[tuple[ServedPortal, str]]:
    port = free_port()
    setup = PortalSetup(tmp_path / "portal", overrides={"server": {"portal_url": f"http://auth.example.test:{port}"}})
    # nginx's workers (not root) write the cache: outside pytest's private tmp tree, open to them
    cache = Path(tempfile.mkdtemp(prefix="authportal-nginx-cache-"))
    cache.chmod(0o777)
    with ServedPortal(setup) as portal:
        nginx_factory.from_file("examples/nginx/micro-cache.conf", LISTEN=f"127.0.0.1:{port}",
                                PORTAL=f"127.0.0.1:{setup.port}", PROMETHEUS=f"127.0.0.1:{upstream.port}",
                                CACHE_DIR=str(cache))
        yield portal, f"http://app.example.test:{port}"
    shutil.rmtree(cache, ignore_errors=True)


def test_allowed_answers_are_reused_for_at_most_two_seconds(stack):
    portal, app = stack
    bob = requests.Session()
    assert login(bob, app.replace("app.example.test", "auth.example.test"), "bob").status_code == 302
    cached = f"{app}/prometheus/api/v1/query?query=up&cache=1"
    asked = time.monotonic()
    assert bob.get(cached, allow_redirects=False).status_code == 200  # asked the portal, answer kept
    # Gone at once, as in a crash: a graceful stop takes about a second of the two, more on a busy machine.
    os.killpg(portal.process.pid, signal.SIGKILL)
    portal.process.wait()
    # the portal is gone: the same request is still allowed from the cache, another one is not
    assert bob.get(cached, allow_redirects=False).status_code == 200
    assert bob.get(f"{app}/prometheus/api/v1/query?query=up&cache=2", allow_redirects=False).status_code == 500
    wait_until(lambda: bob.get(cached, allow_redirects=False).status_code == 500, timeout=15,
               what="the cached answer to expire")
    # 2 s validity, seen by polling that a loaded machine may slow down: 5 s still fails a validity of
    # 10 s or a minute.
    assert time.monotonic() - asked < 5.0


def test_the_cache_never_serves_one_user_for_another(stack):
    portal, app = stack
    auth = app.replace("app.example.test", "auth.example.test")
    bob, carol = requests.Session(), requests.Session()
    login(bob, auth, "bob")
    login(carol, auth, "carol")
    url = f"{app}/prometheus/graph?shared=1"
    assert bob.get(url, allow_redirects=False).status_code == 200
    assert carol.get(url, allow_redirects=False).status_code == 403  # bob's cached 200 is not hers
    assert requests.get(url, allow_redirects=False).status_code == 302  # nor an anonymous client's
