"""README.md copied as a new user copies it: its nginx block, its config, its commands, against real servers.

The blocks are read from README.md at test time and used verbatim; only what a
user changes is replaced (their domain, addresses and ports, paths, certificate
files), and every replaced text must be there, so a README whose text changes
shape fails here instead of drifting away from what is tested. The story runs
twice: as printed (https, secure cookies) and as the plain-http trial the README
describes beside it. Real nginx, the served portal (`authportal serve`, started
by the README's own command line) and a real Prometheus with its admin API on.
"""
from __future__ import annotations

import ctypes
import os
import pty
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import pyotp
import pytest
import requests
import yaml

from tests.servers import free_port, stop_process, tail, wait_until
from tests.servers.ca import CertificateAuthority
from tests.servers.nginx import Nginx
from tests.servers.process import REPO, SETPRIV
from tests.servers.prometheus import Prometheus
from tests.support.portal import csrf_from, deep_merge, login, secret_on_page

README = REPO / "README.md"
QUICK_START = "Quick start"
WITH_NGINX = "Put it in front of Prometheus with nginx"
#: The user's own domain in place of the README's example.com (resolves to 127.0.0.1 here, see tests/support/portal.py).
DOMAIN = "example.test"
PASSWORDS = {"alice": "alice-Readme-Story-1", "bob": "bob-Readme-Story-2"}
SNAPSHOT = "/prometheus/api/v1/admin/tsdb/snapshot"
VARIANTS = ["https", "plain-http-trial"]


# -- README.md, read as a user reads it ---------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    section: str  # the `## ` heading it is under
    lang: str
    text: str


def readme_blocks() -> list[Block]:
    """Every fenced block of README.md, in order, with its section."""
    blocks, section, fence = [], "", None
    for line in README.read_text().splitlines(keepends=True):
        if fence is not None:
            if line.rstrip() == "```":
                blocks.append(Block(section, fence[0], "".join(fence[1])))
                fence = None
            else:
                fence[1].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), [])
        elif line.startswith("## "):
            section = line[3:].strip()
    assert fence is None, "README.md has an unclosed ``` block"
    return blocks


def section_text(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README.read_text(), re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


@dataclass(frozen=True)
class Story:
    """The blocks of README's nginx section: what a user pastes, in the order they paste it."""

    nginx: str
    setup: str  # secret key and users
    config: str
    start: str  # check-config, serve
    trial: str
    prometheus_url: str  # --web.external-url from the section's text


def story() -> Story:
    blocks = [block for block in readme_blocks() if block.section == WITH_NGINX]
    assert [block.lang for block in blocks] == ["nginx", "sh", "yaml", "sh", "yaml"], (
        "README's nginx section changed shape: nginx, secret and users, config, start, plain-http trial keys")
    external = re.findall(r"--web\.external-url=([^`\s]+)", section_text(WITH_NGINX))
    assert len(external) == 1, "the section names Prometheus' --web.external-url once"
    return Story(*(block.text for block in blocks), prometheus_url=external[0])


def replaced(text: str, old: str, new: str, count: int | None = None) -> str:
    """`text` with `old` replaced; `old` must be there (`count` times when given): the README's shape is checked."""
    found = text.count(old)
    assert found and (count is None or found == count), f"expected {count or 'some'} × {old!r}, found {found}"
    return text.replace(old, new)


def own_domain(text: str) -> str:
    return replaced(text, "example.com", DOMAIN)


def command_lines(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


MAKE_VARIABLES = frozenset({"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKE_TERMOUT", "MAKE_TERMERR"})


def venv_environment() -> dict[str, str]:
    """The user's shell after installing: `authportal` on PATH (the venv's), beside make and openssl.

    Not inside a make: `make test` runs pytest with MAKELEVEL set, and a make started under it prints
    "Entering directory" lines that a user's shell never shows.
    """
    outside_make = {key: value for key, value in os.environ.items() if key not in MAKE_VARIABLES}
    return dict(outside_make, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


# -- the layout the README describes, with this machine's addresses -----------------------------------------

@dataclass
class ReadmeStack:
    variant: str
    port: int  # nginx's; app.example.test and auth.example.test share it
    prometheus: Prometheus
    portal_log: Path
    ca_file: Path | None

    @property
    def scheme(self) -> str:
        return "https" if self.variant == "https" else "http"

    def url(self, host: str, path: str = "/") -> str:
        return f"{self.scheme}://{host}.{DOMAIN}:{self.port}{path}"

    def client(self) -> requests.Session:
        http = requests.Session()
        http.trust_env = False  # else REQUESTS_CA_BUNDLE (set on this machine) wins over `verify`
        http.verify = str(self.ca_file) if self.ca_file else True
        return http


def nginx_config(text: str, variant: str, port: int, portal: int, prometheus: int, certificates: Path) -> str:
    text = replaced(text, "127.0.0.1:9091", f"127.0.0.1:{portal}", count=2)
    text = replaced(text, "127.0.0.1:9090", f"127.0.0.1:{prometheus}", count=1)
    if variant == "https":
        text = replaced(text, "listen 443 ssl", f"listen 127.0.0.1:{port} ssl", count=3)
        text = replaced(text, "/etc/ssl/certs/example.com.pem", str(certificates / "cert.pem"), count=2)
        text = replaced(text, "/etc/ssl/private/example.com.key", str(certificates / "key.pem"), count=2)
    else:  # README: "write `listen 80` instead of `listen 443 ssl` (three times) and leave out the `ssl_…` lines"
        text = replaced(text, "listen 443 ssl", f"listen 127.0.0.1:{port}", count=3)
        kept = [line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("ssl_")]
        assert len(kept) == len(text.splitlines()) - 5, "two ssl_certificate lines per server, and the catch-all's"
        text = "".join(kept)
    return own_domain(text)


def portal_config(readme: Story, variant: str, port: int, portal: int, root: Path) -> str:
    text = replaced(readme.config, "127.0.0.1:9091", f"127.0.0.1:{portal}", count=1)
    text = replaced(text, "https://auth.example.com", f"https://auth.example.com:{port}", count=1)
    text = own_paths(text, root)
    if variant == "https":
        return own_domain(text)
    trial = replaced(readme.trial, "http://auth.example.com", f"http://auth.example.com:{port}", count=1)
    merged = deep_merge(yaml.safe_load(own_domain(text)), yaml.safe_load(own_domain(trial)))
    assert merged["session"]["cookie_secure"] is False
    return yaml.safe_dump(merged, sort_keys=False)


def own_paths(text: str, root: Path) -> str:
    """The README's /etc/authportal (and /var/lib/authportal where used) under `root`; no other system path left."""
    text = replaced(text, "/etc/authportal", f"{root}/etc/authportal").replace(
        "/var/lib/authportal", f"{root}/var/lib/authportal")
    assert not re.search(r"(?<![\w/.-])/(etc|var)/", text), f"a system path this test does not move: {text}"
    return text


PROMPTS = (b"Password: ", b"Repeat for confirmation: ")


def at_a_terminal(line: str, typed: str = "", timeout: float = 60) -> tuple[int, str]:
    """Run a command line in a shell on a terminal of its own (a pty), typing `typed` at each password prompt."""
    main, terminal = pty.openpty()
    try:
        shell = subprocess.Popen(["setsid", "--ctty", "bash", "-c", line], stdin=terminal, stdout=terminal,
                                 stderr=terminal, env=venv_environment())
    finally:
        os.close(terminal)
    output, answered, deadline = b"", 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([main], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the command and its terminal are gone
                break
            if not chunk:
                break
            output += chunk
            if output.rstrip(b"\r\n").endswith(PROMPTS) and output.count(b": ") > answered:
                os.write(main, typed.encode() + b"\n")
                answered = output.count(b": ")
        return shell.wait(timeout=max(1.0, deadline - time.monotonic())), output.decode(errors="replace")
    finally:
        os.close(main)
        stop_process(shell)


def run_commands(lines: list[str]) -> dict[str, list[str]]:
    """Run README command lines one by one, as typed at a terminal (`users add` asks for the password twice).

    Returns the users added, with their groups.
    """
    added = {}
    for line in lines:
        words = shlex.split(line, comments=True)
        typed = ""
        if words[:3] == ["authportal", "users", "add"]:
            user = next(word for before, word in zip(words[2:], words[3:], strict=False)
                        if not word.startswith("-") and before not in ("--file", "-f", "--group", "--name", "--email"))
            added[user] = [words[i + 1] for i, word in enumerate(words) if word == "--group"]
            typed = PASSWORDS[user]
        status, output = at_a_terminal(line, typed)
        assert status == 0, f"{line}\n{output}"
        assert typed not in output or not typed, "the password was echoed"
    return added


@pytest.fixture(scope="module")
def nginx_port() -> int:
    """nginx's port, known first: it is part of Prometheus' external URL (both variants reuse it in turn)."""
    return free_port()


@pytest.fixture(scope="module")
def prometheus(nginx_port) -> Iterator[Prometheus]:
    readme = story()
    external = replaced(readme.prometheus_url, "example.com", f"{DOMAIN}:{nginx_port}")
    with Prometheus(external, admin_api=True) as started:
        yield started


@pytest.fixture(scope="module", params=VARIANTS)
def stack(request, tmp_path_factory, nginx_port, prometheus) -> Iterator[ReadmeStack]:
    variant = request.param
    readme = story()
    root = tmp_path_factory.mktemp(f"readme-{variant}")
    portal_port = free_port()
    certificates = None
    if variant == "https":
        certificates = root / "certificates"
        certificates.mkdir()
        authority = CertificateAuthority("readme story CA")
        authority.issue(certificates / "cert.pem", certificates / "key.pem", f"app.{DOMAIN}",
                        dns_names=(f"app.{DOMAIN}", f"auth.{DOMAIN}"))
        authority.write_cert(certificates / "ca.pem")
    added = run_commands(command_lines(own_paths(readme.setup, root)))
    assert added == {"alice": ["admins", "monitoring"], "bob": ["monitoring"]}
    Path(own_paths("/etc/authportal/config.yml", root)).write_text(
        portal_config(readme, variant, nginx_port, portal_port, root))
    *checks, serve_line = command_lines(own_paths(readme.start, root))
    run_commands(checks)
    serve = shlex.split(serve_line, comments=True)
    assert serve[:2] == ["authportal", "serve"], "the start block ends by serving"
    log = root / "serve.log"
    with ExitStack() as cleanup, open(log, "ab") as output:
        command = [SETPRIV, "--pdeathsig", "TERM", "--", *serve] if SETPRIV else serve
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=venv_environment())
        cleanup.callback(stop_process, process)
        live = f"http://127.0.0.1:{portal_port}/api/health/live"
        wait_until(lambda: requests.get(live, timeout=1).status_code == 200, timeout=30, what="authportal serve",
                   process=process, log=log)
        nginx = Nginx(nginx_config(readme.nginx, variant, nginx_port, portal_port, prometheus.port,
                                   certificates or root))
        cleanup.callback(nginx.stop)
        nginx.start()
        yield ReadmeStack(variant, nginx_port, prometheus, log, certificates / "ca.pem" if certificates else None)


def signed_in(stack: ReadmeStack, user: str, target: str) -> tuple[requests.Session, requests.Response]:
    """The browser's way: the target sends us to the login page, the form sends us on (where: the answer)."""
    http = stack.client()
    first = http.get(target, allow_redirects=False, timeout=10)
    assert first.status_code == 302, first.text
    rd = parse_qs(urlsplit(first.headers["Location"]).query)["rd"][0]
    assert rd == target
    done = login(http, stack.url("auth"), user, PASSWORDS[user], rd=rd)
    assert done.status_code == 302, done.text
    return http, done


# -- the story -------------------------------------------------------------------------------------------

def test_anonymous_is_sent_to_the_login_page(stack):
    http = stack.client()
    for method, path in (("GET", "/prometheus/graph?g0.expr=up"), ("POST", SNAPSHOT)):
        target = stack.url("app", path)
        answer = http.request(method, target, allow_redirects=False, timeout=10)
        assert answer.status_code == 302, (method, path, answer.status_code)
        location = urlsplit(answer.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == stack.url("auth", "/")
        assert parse_qs(location.query)["rd"] == [target]
        assert "Prometheus" not in answer.text
    page = http.get(answer.headers["Location"], timeout=10)
    assert page.status_code == 200 and 'name="username"' in page.text and csrf_from(page.text)
    # The trial's insecure cookies are said at start, as the README promises; production says nothing of it.
    warned = "session.cookie_secure is false" in stack.portal_log.read_text()
    assert warned == (stack.variant == "plain-http-trial")


def test_a_client_cannot_ask_the_verify_endpoint_itself_nor_use_an_unknown_host(stack):
    """The portal's server keeps /api/verify for nginx's subrequests, and a host nginx does not serve ends in the
    catch-all, not in the protected server (tests/test_attack_battery.py sends the raw host-confusion requests)."""
    http = stack.client()
    forged = {"X-Original-URL": stack.url("app", "/prometheus/graph"), "X-Original-Method": "GET"}
    assert http.get(stack.url("auth", "/api/verify"), headers=forged, timeout=10).status_code == 404
    unknown = f"{stack.scheme}://127.0.0.1:{stack.port}/prometheus/graph"
    if stack.variant != "https":  # over TLS the catch-all refuses the handshake (ssl_reject_handshake)
        assert http.get(unknown, allow_redirects=False, timeout=10).status_code == 404


def test_bob_reads_prometheus_with_his_password_but_not_its_admin_api(stack):
    target = stack.url("app", "/prometheus/graph")
    http, done = signed_in(stack, "bob", target)
    assert done.headers["Location"] == target
    cookie = done.headers["Set-Cookie"]
    assert f"Domain={DOMAIN}" in cookie and ("Secure" in cookie) == (stack.variant == "https")
    page = http.get(stack.url("app", "/prometheus/"), timeout=10)  # Prometheus' own redirects keep the prefix
    assert page.status_code == 200
    assert "<title>Prometheus Time Series Collection and Processing Server</title>" in page.text
    query = http.get(stack.url("app", "/prometheus/api/v1/query"), params={"query": "6*7"}, timeout=10)
    assert query.status_code == 200 and query.json()["data"]["result"][1] == "42"
    info = http.get(stack.url("auth", "/api/user/info"), timeout=10).json()
    assert info["user"] == "bob" and info["groups"] == ["monitoring"]

    before = stack.prometheus.snapshots()
    refused = http.post(stack.url("app", SNAPSHOT), allow_redirects=False, timeout=10)
    assert refused.status_code == 403 and "403 Forbidden" in refused.text
    assert stack.prometheus.snapshots() == before  # Prometheus never saw the request


def test_alice_reaches_the_admin_api_with_her_second_factor(stack):
    target = stack.url("app", SNAPSHOT)
    before = stack.prometheus.snapshots()
    http, done = signed_in(stack, "alice", target)
    # A password is not enough here: the portal sends her to enroll her authenticator app first.
    setup = urlsplit(done.headers["Location"])
    assert setup.path == "/2fa/setup" and parse_qs(setup.query)["rd"] == [target]
    assert http.post(target, allow_redirects=False, timeout=10).status_code == 302
    assert stack.prometheus.snapshots() == before
    page = http.get(urljoin(stack.url("auth"), done.headers["Location"]), timeout=10)
    assert page.status_code == 200, page.text
    secret = secret_on_page(page.text)
    enrolled = http.post(stack.url("auth", "/2fa/setup"), data={
        "csrf_token": csrf_from(page.text), "code": pyotp.TOTP(secret).now(), "rd": target}, allow_redirects=False,
        timeout=10)
    assert enrolled.status_code == 302 and enrolled.headers["Location"] == target, enrolled.text

    snapshot = http.post(target, allow_redirects=False, timeout=10)
    assert snapshot.status_code == 200, snapshot.text
    assert snapshot.json()["status"] == "success"
    assert stack.prometheus.snapshots() == sorted([*before, snapshot.json()["data"]["name"]])


def test_headers_a_client_sends_never_reach_the_portal_as_its_own(tmp_path, upstream):
    """The verify location sends exactly the X-Original-* the portal reads and clears the X-Forwarded-* family.

    The stub stands in for the portal (it allows everything) and for Prometheus, and records what nginx sent.
    """
    readme = story()
    internal = re.search(r"location = /internal/authportal \{\n(.*?)\n    \}", readme.nginx, re.S)
    assert internal, "the nginx block has the internal verify location"
    for header in ("X-Forwarded-Proto ", "X-Forwarded-Host  ", "X-Forwarded-Uri   ", "X-Forwarded-Method"):
        assert f'        proxy_set_header {header} "";\n' in internal.group(1) + "\n"
    port = free_port()
    config = nginx_config(readme.nginx, "plain-http-trial", port, upstream.port, upstream.port, tmp_path)
    with Nginx(config):
        target = f"http://app.{DOMAIN}:{port}/prometheus/graph?from=readme-headers"
        forged = {"X-Original-URL": f"http://app.{DOMAIN}/prometheus/other", "X-Original-Method": "DELETE",
                  "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example.net",
                  "X-Forwarded-Uri": SNAPSHOT, "X-Forwarded-Method": "POST", "X-Forwarded-For": "10.9.9.9"}
        assert requests.get(target, headers=forged, timeout=10).status_code == 200
    verify = [seen for seen in list(upstream.requests) if seen.path == "/api/verify"
              and seen.headers["X-Original-URL"] == target]
    assert len(verify) == 1, "one verify subrequest for the request, carrying its real URL"
    headers = verify[0].headers
    assert headers.get_all("X-Original-URL") == [target] and headers.get_all("X-Original-Method") == ["GET"]
    assert headers.get_all("X-Forwarded-For") == ["127.0.0.1"]
    for name in ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Uri", "X-Forwarded-Method"):
        assert headers[name] is None, f"{name} reached the portal"


# -- the quick start -------------------------------------------------------------------------------------

CLONE_LINKED = ("Makefile", ".venv")
CLONE_COPIED = ("setup.cfg", "pyproject.toml", "constraints.txt")
CLONE_NEWNET = 0x40000000


def in_network_namespace(pid: int):
    """A one-thread executor whose thread lives in process `pid`'s network namespace (its 127.0.0.1)."""
    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        descriptor = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(descriptor, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(descriptor)
    return ThreadPoolExecutor(max_workers=1, initializer=enter)


def test_quick_start_serves_the_demo_on_the_url_it_names(tmp_path):
    """`make run` as the README says, in a checkout of its own and a network of its own (port 9091 is fixed)."""
    blocks = [block for block in readme_blocks() if block.section == QUICK_START]
    assert [block.lang for block in blocks] == ["sh"]
    assert [shlex.split(line, comments=True) for line in command_lines(blocks[0].text)] == [["make", "run"]]
    url = "http://127.0.0.1:9091"
    assert f"Open **{url}**" in section_text(QUICK_START)
    # A checkout whose .venv `make` already built: this machine's .venv, and the files it was built from
    # dated before it (another engineer's edit to setup.cfg must not make this test reinstall a shared venv).
    built = (REPO / ".venv" / "bin" / "authportal").stat().st_mtime
    for name in CLONE_LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    for name in CLONE_COPIED:
        shutil.copy(REPO / name, tmp_path / name)
        os.utime(tmp_path / name, (built - 1, built - 1))
    planned = subprocess.run(["make", "-n", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                             env=venv_environment())
    assert planned.stdout.strip() == ".venv/bin/authportal demo", planned.stdout + planned.stderr
    output = tmp_path / "make-run.log"
    with open(output, "wb") as log:
        make = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", f"ip link set lo up && exec {blocks[0].text}"],
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=venv_environment(),
                                start_new_session=True)
    try:
        wait_until(lambda: f"Open {url}" in output.read_text(), timeout=30, what="make run", process=make, log=output)
        users = dict(re.findall(r"^(admin|viewer) (\S+)$", output.read_text(), re.M))
        assert set(users) == {"admin", "viewer"}, tail(output)

        def sign_in() -> dict:
            http = requests.Session()
            deadline = time.monotonic() + 30
            while True:
                try:
                    page = http.get(url + "/", timeout=2)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, f"nothing on {url}\n{tail(output)}"
                    time.sleep(0.05)
            assert page.status_code == 200 and 'name="username"' in page.text
            done = http.post(url + "/login", data={"username": "viewer", "password": users["viewer"],
                                                   "csrf_token": csrf_from(page.text)}, allow_redirects=False)
            assert done.status_code == 302, done.text
            info = http.get(url + "/api/user/info", timeout=5).json()
            # "Forgot your password?": the demo writes the message to run/mail.txt, as the README says
            forgot = requests.Session()
            form = forgot.get(url + "/reset-password", timeout=5)
            asked = forgot.post(url + "/reset-password", timeout=5, data={
                "identifier": "viewer@example.test", "csrf_token": csrf_from(form.text)})
            assert asked.status_code == 200 and "If the account exists" in asked.text
            return info

        with in_network_namespace(make.pid) as network:
            info = network.submit(sign_in).result(timeout=60)
        assert info["user"] == "viewer" and info["groups"] == ["monitoring"]
        assert "run/mail.txt" in section_text(QUICK_START)
        mail = tmp_path / "run" / "mail.txt"
        wait_until(lambda: mail.exists() and f"{url}/reset-password/" in mail.read_text(), timeout=30,
                   what="the reset link in run/mail.txt")
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)  # make and the portal it started: the group this test made
        try:
            make.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()


# -- every block is somebody's test ------------------------------------------------------------------------

def test_every_block_of_the_readme_is_run_by_a_test():
    """A new block in README.md must be run here (or by another test, then listed here with it)."""
    assert [(block.section, block.lang) for block in readme_blocks()] == [
        (QUICK_START, "sh"),                                               # test_quick_start_…
        (WITH_NGINX, "nginx"), (WITH_NGINX, "sh"), (WITH_NGINX, "yaml"),   # the story, both variants
        (WITH_NGINX, "sh"), (WITH_NGINX, "yaml"),                          # start; the plain-http trial keys
        ("Sign in with an identity provider", "yaml"),                     # tests/test_oidc.py
    ]
