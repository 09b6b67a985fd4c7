"""A real Samba Active Directory domain controller for the tests.

Provisioning takes ~5 s, so a domain (realm EXAMPLE.TEST) with its users and
groups is provisioned once into a template directory (`provision_template`)
and copied for each running instance (`SambaAD`).

Samba must run as root and binds the fixed ports 389/636, so each instance
runs in its own network namespace joined to the host by a veth pair; the tests
reach it at the namespace's address (`host`), e.g. ``ldaps://10.251.x.y``.
The DC presents a certificate from our own test CA (SAN = that address), so
ldaps:// and StartTLS are verified for real. Samba's default `ldap server
require strong auth = yes` is kept: a simple bind over plain ldap:// is refused
(strongerAuthRequired), as on a production DC.

Users: dave (dave ∈ ops ∈ prom-admins: nested), erin (monitoring), frank
(disabled), gina (must change password at next logon), hank (account expired),
ivan (for the lock-out test: the domain locks an account after
LOCKOUT_THRESHOLD bad passwords). Service accounts: authportal (reads only, as
a plain domain user does) and authportal-reset (also holds the "Reset Password"
right on the users in CN=Users). The domain's minimum password age is 0, so a
password may be changed again at once (AD's default is one day), and `old password
allowed period = 0`, so the old one stops working at once (Samba's default: 60 minutes).
"""
from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import ldap3
import pytest
from ldap3.core.exceptions import LDAPException

from . import IN_CI, require_binary, stop_process, tail, wait_for_port, wait_until
from .ca import CertificateAuthority

SAMBA_PYTHON = "/usr/bin/python3"  # Debian's python3-samba bindings live there, not in the venv

REALM = "EXAMPLE.TEST"
DOMAIN = "EXAMPLE"
ADMIN_PASSWORD = "Adm1n-Pass!23"
LOCKOUT_THRESHOLD = 5

# Runs under Debian's python3 with the samba bindings, straight on the template's sam.ldb (no server needed).
_POPULATE = r"""
import json, sys
import ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB

spec = json.loads(sys.argv[2])
lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)
for name, info in spec["users"].items():
    db.newuser(name, info["password"], useusernameascn=True, givenname=info.get("given"),
               surname=info.get("surname"), mailaddress=info.get("mail"))
for group in spec["groups"]:
    db.newgroup(group)
for group, members in spec["members"].items():
    db.add_remove_group_members(group, members, add_members_operation=True)
for name in spec["disabled"]:
    db.disable_account("(sAMAccountName=%s)" % name)
for name in spec["expired"]:
    db.setexpiry("(sAMAccountName=%s)" % name, 0)
for name in spec["must_change"]:
    db.force_password_change_at_next_login("(sAMAccountName=%s)" % name)
m = ldb.Message()
m.dn = ldb.Dn(db, db.domain_dn())
m["lockoutThreshold"] = ldb.MessageElement(str(spec["lockout_threshold"]), ldb.FLAG_MOD_REPLACE, "lockoutThreshold")
m["minPwdAge"] = ldb.MessageElement("0", ldb.FLAG_MOD_REPLACE, "minPwdAge")
db.modify(m)
# "Reset Password" (a control access right) on the user objects under CN=Users, inherited by them.
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.sd_utils import SDUtils
for name in spec["reset_rights"]:
    found = db.search(base=db.domain_dn(), expression="(sAMAccountName=%s)" % name, attrs=["objectSid"])
    sid = ndr_unpack(security.dom_sid, found[0]["objectSid"][0])
    SDUtils(db).dacl_add_ace("CN=Users," + str(db.domain_dn()),
                             "(OA;CIIO;CR;00299570-246d-11d0-a768-00aa006e0529;bf967aba-0de6-11d0-a285-00aa003049e2;%s)"
                             % sid)
"""


class SambaAD:
    """One running Samba AD DC, copied from a provisioned template, in its own network namespace."""

    REALM = REALM
    DOMAIN = DOMAIN
    BASE_DN = "DC=example,DC=test"
    USERS_DN = "CN=Users,DC=example,DC=test"
    UPN_SUFFIX = "example.test"
    ADMIN_PASSWORD = ADMIN_PASSWORD
    SERVICE_USER = "authportal"
    SERVICE_DN = "CN=authportal,CN=Users,DC=example,DC=test"
    SERVICE_PASSWORD = "Svc-Pass!4711"
    #: A second service account that may also reset users' passwords (unicodePwd replace).
    RESET_USER = "authportal-reset"
    RESET_DN = "CN=authportal-reset,CN=Users,DC=example,DC=test"
    RESET_PASSWORD = "Rst-Pass!4712"
    LOCKOUT_THRESHOLD = LOCKOUT_THRESHOLD

    #: sAMAccountName -> (password, given name, surname)
    USERS: ClassVar[dict[str, tuple[str, str, str]]] = {
        "dave": ("Dave-Pass!23", "Dave", "Ops"),
        "erin": ("Erin-Pass!23", "Erin", "Watch"),
        "frank": ("Frank-Pass!23", "Frank", "Gone"),
        "gina": ("Gina-Pass!23", "Gina", "New"),
        "hank": ("Hank-Pass!23", "Hank", "Late"),
        "ivan": ("Ivan-Pass!23", "Ivan", "Locked"),
    }
    PASSWORDS: ClassVar[dict[str, str]] = {name: values[0] for name, values in USERS.items()}
    GROUPS = ("prom-admins", "ops", "monitoring")
    #: group -> direct members (users or groups)
    MEMBERS: ClassVar[dict[str, list[str]]] = {"ops": ["dave"], "prom-admins": ["ops"], "monitoring": ["erin"]}
    DISABLED = ("frank",)
    EXPIRED = ("hank",)
    MUST_CHANGE = ("gina",)

    def __init__(self, template: Path, directory: Path):
        require_root()
        self.samba = require_binary("samba")
        self.samba_tool_bin = require_binary("samba-tool")
        self.ip = require_binary("ip")
        self.template = Path(template)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.root = self.directory / "dc"
        self.log_file = self.directory / "samba.log"
        self.process: subprocess.Popen | None = None
        self.netns: str | None = None
        self.host = ""
        self._gateway = ""

    # ------------------------------------------------------------------ addresses and files
    @property
    def url(self) -> str:
        return f"ldap://{self.host}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.host}"

    def ldap_settings(self, **overrides: Any) -> dict[str, Any]:
        """The portal's `authentication.ldap` for this DC: the minimal AD settings, ldaps with this DC's CA."""
        return {"implementation": "activedirectory", "url": self.ldaps_url, "base_dn": self.BASE_DN,
                "user": self.SERVICE_DN, "password": self.SERVICE_PASSWORD, "tls": {"ca_file": str(self.ca_file)},
                **overrides}

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def smb_conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    def user_dn(self, name: str) -> str:
        return f"CN={name},{self.USERS_DN}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        try:
            if not self.root.exists():
                self._install()
            if self.netns is None:
                self._create_namespace()
                self._write_certificate()  # for the namespace's (new) address
            log = self.log_file.open("ab")
            try:
                self.process = subprocess.Popen(
                    [self.ip, "netns", "exec", self.netns, self.samba, "-i", "-s", str(self.smb_conf)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                )
            finally:
                log.close()
            wait_for_port(636, host=self.host, process=self.process, log=self.log_file)
            # an open port is not enough: right after a restart the DC may accept and reset connections
            wait_until(self._answers, what="Samba AD LDAP service", process=self.process, log=self.log_file)
        except BaseException:
            self.close()
            raise

    def stop(self) -> None:
        """Stop the DC (its whole process group, then anything else left in its namespace)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        stop_process(process)
        for pid in self._namespace_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Stop the DC and remove its network namespace (the veth pair goes with it)."""
        self.stop()
        if self.netns is not None:
            subprocess.run([self.ip, "netns", "del", self.netns], check=False, capture_output=True, timeout=30)
            self.netns = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # ------------------------------------------------------------------ administration
    def samba_tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``samba-tool ARGS`` against the running DC (over LDAP, as Administrator)."""
        result = subprocess.run(
            [self.samba_tool_bin, *args, "-H", f"ldap://{self.host}", "-U", f"Administrator%{self.ADMIN_PASSWORD}",
             "-s", str(self.smb_conf)],
            check=False, capture_output=True, text=True, timeout=60,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"samba-tool {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def add_user(self, name: str, password: str, must_change: bool = False) -> str:
        """A user of a test's own (give it a unique name: the session's DC is shared), added over LDAPS as
        Administrator, faster than samba-tool; `must_change` sets pwdLastSet=0. Returns the DN."""
        dn = self.user_dn(name)
        conn = self._admin_connection()
        try:
            attributes: dict[str, Any] = {
                "sAMAccountName": name, "userPrincipalName": f"{name}@{self.UPN_SUFFIX}", "displayName": name,
                "mail": f"{name}@{self.UPN_SUFFIX}", "userAccountControl": 512,
                "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            }
            if not conn.add(dn, ["top", "person", "organizationalPerson", "user"], attributes):
                raise RuntimeError(f"adding {dn} failed: {conn.result}")
            if must_change and not conn.modify(dn, {"pwdLastSet": [(ldap3.MODIFY_REPLACE, ["0"])]}):
                raise RuntimeError(f"setting pwdLastSet=0 on {dn} failed: {conn.result}")
        finally:
            conn.unbind()
        return dn

    def _admin_connection(self) -> ldap3.Connection:
        server = ldap3.Server(self.host, port=636, use_ssl=True, get_info=ldap3.NONE, connect_timeout=5,
                              tls=ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file)))
        return ldap3.Connection(server, user=self.user_dn("Administrator"), password=self.ADMIN_PASSWORD,
                                auto_bind=True, receive_timeout=30, raise_exceptions=False)

    def _answers(self) -> bool:
        """The rootDSE answers over ldaps:// (TLS up, LDAP server ready)."""
        server = ldap3.Server(self.host, port=636, use_ssl=True, get_info=ldap3.NONE, connect_timeout=1,
                              tls=ldap3.Tls(validate=ssl.CERT_NONE))
        conn = ldap3.Connection(server, receive_timeout=1, auto_referrals=False)
        try:
            conn.open()
            return bool(conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["defaultNamingContext"]))
        except LDAPException:
            return False
        finally:
            try:
                conn.unbind()
            except LDAPException:
                pass

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    # ------------------------------------------------------------------ setup
    def _write_certificate(self) -> None:
        """A CA (`ca_file`) and the DC's certificate for dc1.example.test and the namespace address."""
        tls = self.root / "tls"
        tls.mkdir(exist_ok=True)
        ca = CertificateAuthority("authportal test AD CA")
        ca.write_cert(self.ca_file)
        shutil.copy(self.ca_file, tls / "ca.pem")
        ca.issue(tls / "cert.pem", tls / "key.pem", f"dc1.{self.UPN_SUFFIX}",
                 dns_names=(f"dc1.{self.UPN_SUFFIX}",), ips=(self.host,))

    def _install(self) -> None:
        """Copy the template and point its configuration at the copy, our certificate and all interfaces."""
        shutil.copytree(self.template, self.root, symlinks=True)
        tls = self.root / "tls"
        conf = self.smb_conf.read_text().replace(str(self.template), str(self.root))
        conf = re.sub(r"(?m)^\s*(interfaces|bind interfaces only|server services)\s*=.*\n", "", conf)
        run = self.root / "run"  # not /run/samba: several DCs (and test runs) side by side
        run.mkdir(exist_ok=True)
        extra = (
            f"\tpid directory = {run}\n"
            f"\tncalrpc dir = {run / 'ncalrpc'}\n"
            f"\twinbindd socket directory = {run / 'winbindd'}\n"
            f"\tntp signd socket directory = {run / 'ntp_signd'}\n"
            "\tbind interfaces only = No\n"
            "\tserver services = ldap, kdc\n"
            # A changed password stops working at once (Samba accepts the old one for 60 minutes by default).
            "\told password allowed period = 0\n"
            "\ttls enabled = yes\n"
            f"\ttls keyfile = {tls / 'key.pem'}\n"
            f"\ttls certfile = {tls / 'cert.pem'}\n"
            f"\ttls cafile = {tls / 'ca.pem'}\n"
        )
        conf = conf.replace("[global]\n", "[global]\n" + extra, 1)
        self.smb_conf.write_text(conf)

    def _create_namespace(self) -> None:
        _remove_stale_namespaces(self.ip)
        token = secrets.token_hex(3)
        name = f"authportal-{os.getpid()}-{token}"
        host_if, ns_if = f"apv{token}h", f"apv{token}n"
        gateway, address = _free_link_subnet()
        steps = [
            [self.ip, "netns", "add", name],
            [self.ip, "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
            [self.ip, "link", "set", ns_if, "netns", name],
            [self.ip, "addr", "add", f"{gateway}/30", "dev", host_if],
            [self.ip, "link", "set", host_if, "up"],
            [self.ip, "-n", name, "link", "set", "lo", "up"],
            [self.ip, "-n", name, "addr", "add", f"{address}/30", "dev", ns_if],
            [self.ip, "-n", name, "link", "set", ns_if, "up"],
        ]
        self.netns = name
        for step in steps:
            result = subprocess.run(step, check=False, capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(step)} failed: {result.stderr.strip()}")
        self.host, self._gateway = address, gateway

    def _namespace_pids(self) -> list[int]:
        if self.netns is None:
            return []
        result = subprocess.run([self.ip, "netns", "pids", self.netns], check=False, capture_output=True, text=True, timeout=30)
        return [int(p) for p in result.stdout.split() if p.isdigit()]


def _remove_stale_namespaces(ip: str) -> None:
    """Namespaces left by an earlier test run that was killed: its pid is gone and nothing runs inside."""
    listing = subprocess.run([ip, "netns", "list"], check=False, capture_output=True, text=True, timeout=30).stdout
    for name in re.findall(r"^(authportal-(\d+)-[0-9a-f]+)", listing, re.MULTILINE):
        netns, pid = name
        if Path(f"/proc/{pid}").exists():
            continue
        pids = subprocess.run([ip, "netns", "pids", netns], check=False, capture_output=True, text=True,
                              timeout=30).stdout.split()
        if not pids:
            subprocess.run([ip, "netns", "del", netns], check=False, capture_output=True, timeout=30)


def _free_link_subnet() -> tuple[str, str]:
    """A /30 in 10.251.0.0/16 that no local interface uses: (host side, namespace side)."""
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], check=False, capture_output=True, text=True, timeout=30).stdout
    taken = {ipaddress.ip_interface(m).network for m in re.findall(r"inet (\S+)", used)}
    for _ in range(100):
        net = ipaddress.ip_network(f"10.251.{random.randrange(256)}.{random.randrange(64) * 4}/30")
        if not any(net.overlaps(t) for t in taken):
            hosts = list(net.hosts())
            return str(hosts[0]), str(hosts[1])
    raise RuntimeError("no free /30 in 10.251.0.0/16")


def require_root() -> None:
    if os.geteuid() != 0:
        message = "Samba AD needs root (network namespace, ports 389/636)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def provision_template(directory: Path) -> Path:
    """Provision the EXAMPLE.TEST domain with its users and groups into `directory` (once per test session)."""
    import json

    require_root()
    samba_tool = require_binary("samba-tool")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    empty = directory.parent / f"{directory.name}-empty.conf"
    empty.write_text("")
    log = directory.parent / f"{directory.name}-provision.log"
    result = subprocess.run(
        [samba_tool, "domain", "provision", "-s", str(empty), "--use-rfc2307", f"--realm={REALM}",
         f"--domain={DOMAIN}", "--server-role=dc", "--dns-backend=NONE", "--host-name=dc1",
         f"--adminpass={ADMIN_PASSWORD}", f"--targetdir={directory}",
         "--option=interfaces = lo", "--option=bind interfaces only = yes",
         "--option=server services = ldap, kdc"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"samba-tool domain provision failed ({result.returncode}):\n{tail(log)}")
    users = {SambaAD.SERVICE_USER: {"password": SambaAD.SERVICE_PASSWORD},
             SambaAD.RESET_USER: {"password": SambaAD.RESET_PASSWORD}}
    for name, (password, given, surname) in SambaAD.USERS.items():
        users[name] = {"password": password, "given": given, "surname": surname,
                       "mail": f"{name}@{SambaAD.UPN_SUFFIX}"}
    spec = {
        "users": users, "groups": list(SambaAD.GROUPS), "members": SambaAD.MEMBERS,
        "disabled": list(SambaAD.DISABLED), "expired": list(SambaAD.EXPIRED),
        "must_change": list(SambaAD.MUST_CHANGE), "lockout_threshold": LOCKOUT_THRESHOLD,
        "reset_rights": [SambaAD.RESET_USER],
    }
    result = subprocess.run(
        [SAMBA_PYTHON, "-c", _POPULATE, str(directory / "etc" / "smb.conf"), json.dumps(spec)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"populating the Samba template failed:\n{result.stdout}{result.stderr}")
    return directory
