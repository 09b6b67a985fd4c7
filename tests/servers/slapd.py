"""A real OpenLDAP slapd for the tests: plain slapd.conf, mdb, memberof + refint, ldap:// and ldaps://.

Entries are loaded with ``ldapadd`` against the running server (the memberof
overlay fills ``memberOf`` only on online adds). ``stop()`` / ``start()`` /
``restart()`` keep the data directory and the ports, so a test can take the
directory away and bring it back.

Its certificates come from a throw-away CA (tests/servers/ca.py).

The service account reads everything and may write (not read) `userPassword`, so it can reset passwords
with Password Modify; each user may change their own. ``SlapdServer(dir, ppolicy=True)`` adds the password
policy overlay with a default policy (`PPOLICY_DN`, below).
"""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from . import free_port, require_binary, stop_process, tail, wait_for_port
from .ca import CertificateAuthority


def ssha(password: str) -> str:
    """An OpenLDAP {SSHA} userPassword value."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


# --------------------------------------------------------------------------- slapd


class SlapdServer:
    """An OpenLDAP directory for dc=example,dc=com on 127.0.0.1 (ldap:// and ldaps://, StartTLS on ldap://)."""

    SUFFIX = "dc=example,dc=com"
    ADMIN_DN = "cn=admin,dc=example,dc=com"
    ADMIN_PASSWORD = "admin-Secret-1"
    SERVICE_DN = "cn=authportal,ou=svc,dc=example,dc=com"
    SERVICE_PASSWORD = "svc-Secret-2"
    PEOPLE_DN = "ou=people,dc=example,dc=com"
    GROUPS_DN = "ou=groups,dc=example,dc=com"

    #: uid -> (password, display name, mail); jsmith's DN holds a comma and parentheses on purpose.
    USERS: ClassVar[dict[str, tuple[str, str, str]]] = {
        "alice": ("alice-Pass-1", "Alice Liddell", "alice@example.com"),
        "bob": ("bob-Pass-2", "Bob Builder", "bob@example.com"),
        "carol": ("carol-Pass-3", "Carol Danvers", "carol@example.com"),
        "admin": ("admin-Pass-4", "Admin Istrator", "admin@example.com"),
        "jsmith": ("jsmith-Pass-5", "John Smith (ext)", "jsmith@example.com"),
    }
    PASSWORDS: ClassVar[dict[str, str]] = {uid: values[0] for uid, values in USERS.items()}
    #: uid -> departmentNumber (an attribute for `extra_attributes`: tests/test_identity_headers_proxies.py).
    DEPARTMENTS: ClassVar[dict[str, str]] = {"alice": "Platform", "bob": "Observability"}
    GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "admins": ("alice",),
        "monitoring": ("alice", "bob", "jsmith"),
    }

    POLICIES_DN = "ou=policies,dc=example,dc=com"
    PPOLICY_DN = "cn=default,ou=policies,dc=example,dc=com"
    #: The default policy with `ppolicy=True`: a reset by the rootdn must be followed by the user's own change;
    #: new passwords of 10 characters or more, none of the last 3; passwords expire after a day.
    PPOLICY: ClassVar[dict[str, str]] = {
        "pwdAttribute": "userPassword", "pwdMustChange": "TRUE", "pwdAllowUserChange": "TRUE", "pwdMinLength": "10",
        "pwdCheckQuality": "1", "pwdInHistory": "3", "pwdMaxAge": "86400",
    }

    def __init__(self, directory: Path, ppolicy: bool = False):
        self.ppolicy = ppolicy
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.slapd = require_binary("slapd")
        self.ldapadd = require_binary("ldapadd")
        self.ldapmodify = require_binary("ldapmodify")
        self.port = free_port()
        self.tls_port = free_port()
        self.log_file = self.directory / "slapd.log"
        self.process: subprocess.Popen | None = None
        self._loaded = False
        self._make_certificates()
        self._write_config()

    # ------------------------------------------------------------------ addresses and files
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def ldap_settings(self, **overrides: Any) -> dict[str, Any]:
        """The portal's `authentication.ldap` for this directory: plain ldap:// unless overridden."""
        return {"implementation": "openldap", "url": self.url, "base_dn": self.SUFFIX, "user": self.SERVICE_DN,
                "password": self.SERVICE_PASSWORD, "timeout": "2s", **overrides}

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def untrusted_ca_file(self) -> Path:
        """A second, self-signed CA that signed nothing the server presents."""
        return self.directory / "untrusted-ca.pem"

    @property
    def client_cert_file(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key_file(self) -> Path:
        return self.directory / "client.key"

    @property
    def untrusted_client_cert_file(self) -> Path:
        """A client certificate from the untrusted CA: slapd (TLSVerifyClient try) drops such a session."""
        return self.directory / "untrusted-client.pem"

    @property
    def untrusted_client_key_file(self) -> Path:
        return self.directory / "untrusted-client.key"

    def user_dn(self, uid: str) -> str:
        if uid == "jsmith":
            return rf"cn=Smith\, John (ext),{self.PEOPLE_DN}"
        return f"uid={uid},{self.PEOPLE_DN}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        (self.directory / "data").mkdir(exist_ok=True)
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                [self.slapd, "-d", "stats", "-f", str(self.directory / "slapd.conf"),
                 "-h", f"{self.url}/ {self.ldaps_url}/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        finally:
            log.close()
        wait_for_port(self.port, process=self.process, log=self.log_file)
        wait_for_port(self.tls_port, process=self.process, log=self.log_file)
        if not self._loaded:
            self.ldapadd_ldif(self._initial_ldif())
            self._loaded = True

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ------------------------------------------------------------------ directory changes
    def _ldap_tool(self, tool: str, ldif: str, *extra: str) -> None:
        result = subprocess.run(
            [tool, "-x", "-H", self.url, "-D", self.ADMIN_DN, "-w", self.ADMIN_PASSWORD, *extra],
            input=ldif, text=True, check=False, capture_output=True, timeout=30,
            env={**os.environ, "LDAPNOINIT": "1"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(tool).name} failed ({result.returncode}): {result.stderr}\n{tail(self.log_file)}")

    def ldapadd_ldif(self, ldif: str) -> None:
        self._ldap_tool(self.ldapadd, ldif)

    def ldapmodify_ldif(self, ldif: str) -> None:
        self._ldap_tool(self.ldapmodify, ldif)

    def add_user(self, uid: str, password: str, *operational: str) -> str:
        """A user of a test's own under ou=people (give it a unique uid); `operational` lines such as
        ``pwdChangedTime: 20000101000000Z`` are added with the relax control. Returns the DN."""
        dn = self.user_dn(uid)
        extra = "".join(f"{line}\n" for line in operational)
        ldif = (f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
                f"mail: {uid}@example.com\nuserPassword: {ssha(password)}\n{extra}")
        self._ldap_tool(self.ldapadd, ldif, *(("-e", "relax") if operational else ()))
        return dn

    def remove_member(self, group: str, uid: str) -> None:
        self.ldapmodify_ldif(
            f"dn: cn={group},{self.GROUPS_DN}\nchangetype: modify\ndelete: member\nmember: {self.user_dn(uid)}\n"
        )

    def add_member(self, group: str, uid: str) -> None:
        self.ldapmodify_ldif(
            f"dn: cn={group},{self.GROUPS_DN}\nchangetype: modify\nadd: member\nmember: {self.user_dn(uid)}\n"
        )

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def bind_count(self) -> int:
        """BIND operations slapd has logged so far (stats log level)."""
        return sum(1 for line in self.log_text().splitlines() if " BIND dn=" in line)

    # ------------------------------------------------------------------ setup
    def _make_certificates(self) -> None:
        ca = CertificateAuthority("authportal test CA")
        ca.write_cert(self.ca_file)
        ca.issue(self.directory / "server.pem", self.directory / "server.key", "localhost",
                 dns_names=("localhost",), ips=("127.0.0.1",))
        ca.issue(self.client_cert_file, self.client_key_file, "authportal client", client=True)
        untrusted = CertificateAuthority("untrusted test CA")
        untrusted.write_cert(self.untrusted_ca_file)
        untrusted.issue(self.untrusted_client_cert_file, self.untrusted_client_key_file, "intruder", client=True)

    def _write_config(self) -> None:
        d = self.directory
        (d / "slapd.conf").write_text(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload refint
{"moduleload ppolicy" if self.ppolicy else ""}
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key
TLSVerifyClient try
sizelimit 500

database mdb
maxsize 67108864
suffix "{self.SUFFIX}"
rootdn "{self.ADMIN_DN}"
rootpw {ssha(self.ADMIN_PASSWORD)}
directory {d}/data
index objectClass eq
index uid,cn,mail eq
index member eq
overlay memberof
overlay refint
refint_attributes member
{f'overlay ppolicy{chr(10)}ppolicy_default "{self.PPOLICY_DN}"' if self.ppolicy else ""}
access to attrs=userPassword
    by self =xw
    by dn.exact="{self.SERVICE_DN}" =w
    by anonymous auth
    by * none
access to *
    by dn.exact="{self.SERVICE_DN}" read
    by self read
    by * none
""")

    def _initial_ldif(self) -> str:
        entries = [
            f"dn: {self.SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
            f"dn: ou=svc,{self.SUFFIX}\nobjectClass: organizationalUnit\nou: svc\n",
            f"dn: {self.PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {self.GROUPS_DN}\nobjectClass: organizationalUnit\nou: groups\n",
            (f"dn: {self.SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
             f"cn: authportal\nuserPassword: {ssha(self.SERVICE_PASSWORD)}\n"),
        ]
        if self.ppolicy:  # before the users: a policy that does not exist yet is not applied
            entries.insert(1, f"dn: {self.POLICIES_DN}\nobjectClass: organizationalUnit\nou: policies\n")
            settings = "".join(f"{key}: {value}\n" for key, value in self.PPOLICY.items())
            entries.insert(2, f"dn: {self.PPOLICY_DN}\nobjectClass: device\nobjectClass: pwdPolicy\ncn: default\n"
                              f"{settings}")
        for uid, (password, name, mail) in self.USERS.items():
            given, _, surname = name.partition(" ")
            cn = "Smith, John (ext)" if uid == "jsmith" else name
            department = f"departmentNumber: {self.DEPARTMENTS[uid]}\n" if uid in self.DEPARTMENTS else ""
            entries.append(
                f"dn: {self.user_dn(uid)}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {cn}\n"
                f"sn: {surname or given}\ngivenName: {given}\ndisplayName: {name}\nmail: {mail}\n"
                f"userPassword: {ssha(password)}\n{department}"
            )
        for group, members in self.GROUPS.items():
            member_lines = "".join(f"member: {self.user_dn(uid)}\n" for uid in members)
            entries.append(f"dn: cn={group},{self.GROUPS_DN}\nobjectClass: groupOfNames\ncn: {group}\n{member_lines}")
        return "\n".join(entries)
