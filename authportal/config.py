"""Configuration: one YAML file validated into a typed, frozen model.

Every problem is reported at once with its key path (``session.expiration:
invalid duration``); unknown keys are errors, never silently ignored. A check
between keys runs whenever the keys it reads are valid, whatever else is broken,
and names them (``session.domain: … (server.portal_url)``), so one run of
``check-config`` shows everything to fix.
``AUTHPORTAL_<PATH>`` environment variables override keys (``__`` between
levels) and every secret ``X`` may be given as ``X_file`` instead.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
import ssl
import string
import typing
from collections.abc import Callable, Collection
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from .x509_files import read_certificates, read_crls, signer
from .yamlfile import YamlError, parse_yaml

ENV_PREFIX = "AUTHPORTAL_"
#: Environment variable naming the config file for `serve` workers (like Authelia's X_AUTHELIA_CONFIG).
CONFIG_PATH_ENV = "X_AUTHPORTAL_CONFIG"

log = logging.getLogger("authportal.config")
ModelT = TypeVar("ModelT", bound=BaseModel)
Loaded = TypeVar("Loaded")

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(value: Any) -> float:
    """Seconds from `90s`, `5m`, `1h30m`, `30d` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("invalid duration (use e.g. 90s, 5m, 1h, 30d)")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("invalid duration (use e.g. 90s, 5m, 1h, 30d)")
    text = value.strip().lower()
    if text.isdigit():
        return float(text)
    parts = _DURATION_RE.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {value!r} (use e.g. 90s, 5m, 1h, 30d)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[str], BeforeValidator(_listify)]

#: Validation context key: the folder relative paths are taken from (the config file's; else the working directory).
_CONFIG_FOLDER = "config_folder"


def _beside(folder: Path, path: Path) -> Path:
    """The one rule for every path in the configuration: relative means beside the config file."""
    return path if path.is_absolute() else folder / path


def _config_folder(info: ValidationInfo) -> Path:
    folder = info.context.get(_CONFIG_FOLDER) if isinstance(info.context, dict) else None
    return folder if isinstance(folder, Path) else Path.cwd()


def _path_beside_the_config(path: Path, info: ValidationInfo) -> Path:
    return _beside(_config_folder(info), path)


#: Every path key has this type (secret `X_file` keys are read by `_read_secret_files`, by the same rule).
ConfigPath = Annotated[Path, AfterValidator(_path_beside_the_config)]


#: A DNS name in lower case, without a trailing dot.
DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)*")


class ConfigError(Exception):
    """All the problems found in a configuration, each `key.path: reason`.

    `authentication` is that section when it is valid although something else is not, so that its backend
    (the users file) can still be checked in the same run.
    """

    def __init__(self, errors: list[str], authentication: AuthenticationConfig | None = None):
        super().__init__("\n".join(errors))
        self.errors = errors
        self.authentication = authentication


class SiblingProblem(ValueError):
    """Raised by a field validator about another key of its section: reported at that key's path.

    A check between keys is a field validator on the last key it reads (the others are in `info.data` when
    they are valid), so it runs whatever else in the section is broken, which a model validator would not.
    """

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretsMixin(Model):
    """A model whose secret fields `X` may also be given as `X_file` (Docker/Kubernetes secrets).

    The files are read before validation by `_read_secret_files`, which walks the raw document
    along the schema, so every unreadable file is reported with its key path, together with the rest.
    """

    _secret_fields: ClassVar[tuple[str, ...]] = ()


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _nested_models(arg)]


def _read_secret_files(raw: Any, model: type[BaseModel], path: str, problems: list[str], failed: set[str],
                       folder: Path) -> None:
    """Replace `X_file: PATH` by `X: <content>` in `raw`, in place; problems name their key path."""
    if isinstance(raw, list):  # a list of sections (authentication.oidc.providers): each by its index
        for index, item in enumerate(raw):
            _read_secret_files(item, model, f"{path[:-1]}[{index}].", problems, failed, folder)
        return
    if not isinstance(raw, dict):
        return
    for name in getattr(model, "_secret_fields", ()):
        file_key = f"{name}_file"
        if file_key not in raw:
            continue
        secret_path = _beside(folder, Path(str(raw.pop(file_key))))
        if raw.get(name) not in (None, ""):
            problems.append(f"{path}{file_key}: set either {name} or {file_key}, not both")
            continue
        try:
            raw[name] = secret_path.read_text().rstrip("\r\n")
        except OSError as exc:
            problems.append(f"{path}{file_key}: cannot read {secret_path}: {exc.strerror}")
            failed.add(f"{path}{name}")
    for field_name, field in model.model_fields.items():
        for nested in _nested_models(field.annotation):
            _read_secret_files(raw.get(field_name), nested, f"{path}{field_name}.", problems, failed, folder)


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


class ServerConfig(Model):
    address: Annotated[str, BeforeValidator(_host_port)] = "127.0.0.1:9091"
    #: Public URL of the portal; defaults to http://<address>.
    portal_url: str | None = None
    #: Peers whose X-Original-* / X-Forwarded-* headers are believed.
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")]
    )
    workers: int = Field(default=1, ge=1, le=64)
    #: Request threads per worker. Password checks may use all but 2 of them at once; the 2 stay free for
    #: verifies, so a burst of logins never stalls the proxies (logins beyond that get 503 + Retry-After).
    #: Default 2 x cores + 1 (5 on 2 cores): what granian considers sane for WSGI on this machine.
    threads: int = Field(default_factory=lambda: max(3, 2 * (os.cpu_count() or 1) + 1), ge=3, le=256)
    #: The name session listings give this instance (which one a session signed in on); default hostname:port.
    instance_name: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @field_validator("portal_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_url(value)

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def instance(self) -> str:
        """`instance_name`, else this machine's host name and the port the portal listens on."""
        return self.instance_name or f"{socket.gethostname()}:{self.port}"


def _readable(key: str, path: Path) -> None:
    try:
        path.open("rb").close()
    except OSError as exc:
        raise SiblingProblem(key, f"cannot read {path}: {exc.strerror}") from None


class TlsFilesConfig(Model):
    """A CA to verify the server with and a client certificate (LDAP's and Redis's `tls`). Checked by loading the
    files as the client will, so a wrong path or PEM fails check-config too."""

    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: Annotated[ConfigPath | None, Field(validate_default=True)] = None

    @field_validator("ca_file")
    @classmethod
    def _ca_loads(cls, ca_file: Path | None) -> Path | None:
        if ca_file is not None:
            _readable("ca_file", ca_file)
            try:
                ssl.create_default_context(cafile=str(ca_file))
            except ssl.SSLError as exc:
                raise ValueError(f"{ca_file} holds no PEM certificate ({exc.reason})") from None
        return ca_file

    @field_validator("key_file")
    @classmethod
    def _client_certificate_loads(cls, key_file: Path | None, info: ValidationInfo) -> Path | None:
        if "cert_file" not in info.data:  # invalid: reported at its key
            return key_file
        cert_file = info.data["cert_file"]
        if cert_file is None:
            if key_file is not None:
                raise ValueError("set cert_file too: a key is no certificate")
            return key_file
        _readable("cert_file", cert_file)
        if key_file is not None:
            _readable("key_file", key_file)
        try:  # an empty passphrase: an encrypted key fails here rather than prompting at start-up
            ssl.create_default_context().load_cert_chain(str(cert_file), str(key_file) if key_file else None, "")
        except ssl.SSLError as exc:
            raise SiblingProblem("cert_file", "not a PEM certificate with its unencrypted key (key_file) "
                                              f"({exc.reason})") from None
        return key_file


def _read_x509(key: str, path: Path, read: Callable[[Path], Loaded]) -> Loaded:
    """A certificate or CRL file read as the verify path reads it: problems at `key`."""
    _readable(key, path)
    try:
        return read(path)
    except ValueError as exc:
        raise SiblingProblem(key, str(exc)) from None


class ClientCertificatesConfig(Model):
    """Client certificates (mTLS) on the verify endpoints: the proxy verifies, the portal maps them to users.

    The proxy passes the certificate in X-SSL-Client-Cert and its verdict in X-SSL-Client-Verify; both are
    believed only from server.trusted_proxies. A certificate is one factor, like Basic and API tokens.
    """

    enable: bool = False
    #: Which field names the user: the subject's CN, the SAN e-mail (the user with that address), the SAN DNS
    #: name, or the group of `regex` found in the subject (RFC 4514, e.g. `CN=alice,OU=ops,O=Example`).
    map: Literal["subject_cn", "san_email", "san_dns", "subject_regex"] = "subject_cn"
    regex: Annotated[str | None, Field(validate_default=True)] = None
    #: The CAs that issue client certificates directly: the portal re-checks signature, dates and clientAuth.
    ca_file: ConfigPath | None = None
    #: Revoked certificates (PEM, one CRL per CA, or DER), re-read when the file changes; needs ca_file.
    crl_file: Annotated[ConfigPath | None, Field(validate_default=True)] = None
    #: Whether a certificate satisfies two_factor rules (a machine credential is one factor otherwise).
    counts_as_two_factor: bool = False

    @field_validator("regex")
    @classmethod
    def _one_user_group(cls, regex: str | None, info: ValidationInfo) -> str | None:
        mapped = info.data.get("map")
        if regex is None:
            if mapped == "subject_regex":
                raise ValueError("required when map is subject_regex: a pattern whose group is the user name, "
                                 "e.g. '^CN=([^,]+),OU=monitoring'")
            return None
        if mapped is not None and mapped != "subject_regex":
            raise ValueError(f"only read with map: subject_regex (map is {mapped})")
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        if compiled.groups == 0:
            raise ValueError("has no group: put the user name in one, e.g. 'CN=([^,]+)'")
        if compiled.groups > 1 and "user" not in compiled.groupindex:
            raise ValueError(f"has {compiled.groups} groups: name the user's (?P<user>...)")
        return regex

    @field_validator("ca_file")
    @classmethod
    def _authorities_load(cls, ca_file: Path | None) -> Path | None:
        if ca_file is not None:
            _read_x509("ca_file", ca_file, read_certificates)
        return ca_file

    @field_validator("crl_file")
    @classmethod
    def _crl_signed_by_a_ca(cls, crl_file: Path | None, info: ValidationInfo) -> Path | None:
        if crl_file is None or "ca_file" not in info.data:  # an invalid ca_file is reported at its key
            return crl_file
        ca_file = info.data["ca_file"]
        if ca_file is None:
            raise ValueError("needs ca_file: a CRL is believed only with the signature of a CA in ca_file")
        authorities = read_certificates(ca_file)
        for crl in _read_x509("crl_file", crl_file, read_crls):
            if signer(crl, authorities) is None:
                raise ValueError(f"the CRL of {crl.issuer.rfc4514_string()} is not signed by a CA in ca_file")
        return crl_file


class RedisSentinelConfig(SecretsMixin):
    """Where the sentinels are and how to sign in to them (the Redis servers take session.redis's username and
    password)."""

    _secret_fields = ("password",)
    master_name: Annotated[str, Field(min_length=1)]
    nodes: Annotated[list[Annotated[str, BeforeValidator(_host_port)]], Field(min_length=1)]
    username: str | None = None
    password: SecretStr | None = None


class RedisConfig(SecretsMixin):
    """One Redis (`url`) or the primary a set of sentinels names (`sentinel`); reached by `redis_client.py`."""

    _secret_fields = ("password",)
    url: str | None = None
    sentinel: Annotated[RedisSentinelConfig | None, Field(validate_default=True)] = None
    username: str | None = None
    password: SecretStr | None = None
    tls: Annotated[TlsFilesConfig | None, Field(validate_default=True)] = None
    timeout: Duration = 2.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("sentinel")
    @classmethod
    def _url_or_sentinel(cls, sentinel: RedisSentinelConfig | None, info: ValidationInfo) -> RedisSentinelConfig | None:
        if "url" not in info.data:  # invalid: reported at its key
            return sentinel
        if sentinel is not None and info.data["url"] is not None:
            raise ValueError("set either session.redis.url or session.redis.sentinel, not both")
        if sentinel is None and info.data["url"] is None:
            raise SiblingProblem("url", "required key is missing (or session.redis.sentinel)")
        return sentinel

    @field_validator("tls")
    @classmethod
    def _tls_needs_rediss(cls, tls: TlsFilesConfig | None, info: ValidationInfo) -> TlsFilesConfig | None:
        url = info.data.get("url")
        if tls is not None and url is not None and urlsplit(url).scheme != "rediss":
            raise ValueError("needs a rediss:// URL (session.redis.url): TLS files for a connection without TLS")
        return tls


def _dns_domain(value: str) -> str:
    value = value.strip().lstrip(".").lower()
    if not DOMAIN_RE.fullmatch(value):
        raise ValueError(f"not a DNS domain: {value!r}")
    return value


def _absolute_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL, e.g. https://auth.example.com")
    return value.rstrip("/")


CookieName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")]


class CookieDomainConfig(Model):
    """One cookie domain of several (`session.cookies`): its own portal URL, cookie and session lifetimes."""

    domain: Annotated[str, AfterValidator(_dns_domain)]
    portal_url: Annotated[str, AfterValidator(_absolute_url)]
    #: Default: session.cookie_name; the lifetimes default to session's.
    name: CookieName | None = None
    expiration: Duration | None = None
    inactivity: Duration | None = None
    remember_me: Duration | None = None


@dataclass(frozen=True)
class CookieDomain:
    """A cookie domain as the portal uses it: `session.cookies[]` filled from `session`, or the one that
    `session.domain` and `server.portal_url` describe (`domain` None: the portal host only)."""

    domain: str | None
    portal_url: str
    name: str
    expiration: float
    inactivity: float
    remember_me: float

    def covers(self, host: str) -> bool:
        """Whether a request to `host` (lower case, no port) carries this cookie."""
        if self.domain is None:
            return host == (urlsplit(self.portal_url).hostname or "")
        return host == self.domain or host.endswith("." + self.domain)


class SessionConfig(Model):
    cookie_name: CookieName = "authportal_session"
    #: Cookie domain shared by every protected subdomain; unset = the portal host only.
    domain: str | None = None
    expiration: Duration = 3600.0
    #: Idle time after which a session ends; 0 turns the check off.
    inactivity: Duration = 900.0
    #: Lifetime of a "remember me" session; 0 hides the checkbox.
    remember_me: Duration = 30 * 86400.0
    cookie_secure: bool = True
    #: How long a worker trusts its in-memory copy of a session (bounds cross-instance staleness).
    cache_ttl: Duration = Field(default=1.0, le=10)
    redis: RedisConfig | None = None
    #: Several cookie domains, each with its portal URL (instead of `domain` + `server.portal_url`).
    cookies: list[CookieDomainConfig] = []

    @field_validator("domain")
    @classmethod
    def _check_domain(cls, value: str | None) -> str | None:
        return None if value is None else _dns_domain(value)

    @field_validator("cookies")
    @classmethod
    def _no_overlap(cls, cookies: list[CookieDomainConfig], info: ValidationInfo) -> list[CookieDomainConfig]:
        if cookies and info.data.get("domain"):
            raise ValueError("set session.domain or session.cookies, not both")
        for later, cookie in enumerate(cookies):
            for earlier in cookies[:later]:
                a, b = earlier.domain, cookie.domain
                if a == b or a.endswith("." + b) or b.endswith("." + a):
                    raise ValueError(f"[{later}].domain {b!r} overlaps {a!r}: a browser would send both cookies, "
                                     "and which session decides would depend on it")
            host = (urlsplit(cookie.portal_url).hostname or "").lower()
            if host != cookie.domain and not host.endswith("." + cookie.domain):
                raise ValueError(f"[{later}].portal_url: {cookie.portal_url} is not under {cookie.domain!r}: "
                                 "its cookie would never reach the portal")
        return cookies


class PasswordHashConfig(Model):
    """argon2id parameters for new hashes (OWASP: m=64 MiB, t=3, p=4 is comfortably above the minimum)."""

    iterations: int = Field(default=3, ge=1)
    memory: int = Field(default=65536, ge=8192, description="KiB")
    parallelism: int = Field(default=4, ge=1)
    #: At most this many password hashes run at once (bounds memory under a login burst).
    max_concurrent: int = Field(default=2, ge=1)


class FileBackendConfig(Model):
    path: ConfigPath
    watch: bool = True
    password: PasswordHashConfig = PasswordHashConfig()


LdapImplementation = Literal["custom", "openldap", "activedirectory", "freeipa", "rfc2307bis"]

# No "(!(pwdLastSet=0))": a user who must change the password at next logon (or whose password expired) is
# found, so that the right password leads to the change-password form (the provider refuses them elsewhere).
_AD_ACCOUNT_ENABLED = (
    "(!(userAccountControl:1.2.840.113556.1.4.803:=2))"
    "(|(!(accountExpires=*))(accountExpires=0)(accountExpires>={date-time:microsoft-nt}))"
)
_STANDARD_ATTRIBUTES = {"username_attribute": "uid", "mail_attribute": "mail",
                        "display_name_attribute": "displayName", "group_name_attribute": "cn"}

#: What each `implementation` fills in for the keys left unset (docs/ldap.md has the table).
LDAP_PRESETS: dict[str, dict[str, str]] = {
    "custom": {
        **_STANDARD_ATTRIBUTES,
        "users_filter": "(&({username_attribute}={input})(objectClass=person))",
        "groups_filter": "(|(member={dn})(uniqueMember={dn}))",
    },
    "openldap": {
        **_STANDARD_ATTRIBUTES,
        "users_filter": "(&({username_attribute}={input})(objectClass=inetOrgPerson))",
        "groups_filter": (
            "(|(&(member={dn})(objectClass=groupOfNames))"
            "(&(uniqueMember={dn})(objectClass=groupOfUniqueNames)))"
        ),
    },
    "activedirectory": {
        **_STANDARD_ATTRIBUTES,
        "username_attribute": "sAMAccountName",
        # Login by sAMAccountName or userPrincipalName; normal user accounts only; enabled, not expired.
        "users_filter": (
            "(&(|({username_attribute}={input})(userPrincipalName={input}))"
            "(sAMAccountType=805306368)" + _AD_ACCOUNT_ENABLED + ")"
        ),
        # LDAP_MATCHING_RULE_IN_CHAIN: every group the user is in, directly or through nested groups.
        "groups_filter": "(&(member:1.2.840.113556.1.4.1941:={dn})(objectClass=group))",
    },
    "freeipa": {
        **_STANDARD_ATTRIBUTES,
        "users_filter": (
            "(&({username_attribute}={input})(objectClass=person)(!(nsAccountLock=TRUE))"
            "(|(!(krbPrincipalExpiration=*))(krbPrincipalExpiration>={date-time:generalized})))"
        ),
        "groups_filter": "(&(member={dn})(objectClass=groupOfNames))",
        "additional_users_dn": "cn=users,cn=accounts",
        "additional_groups_dn": "cn=groups,cn=accounts",
    },
    "rfc2307bis": {
        **_STANDARD_ATTRIBUTES,
        "users_filter": "(&({username_attribute}={input})(|(objectClass=inetOrgPerson)(objectClass=posixAccount)))",
        "groups_filter": (
            "(&(|(member={dn})(uniqueMember={dn}))"
            "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup)))"
        ),
    },
}


class LdapTlsConfig(TlsFilesConfig):
    skip_verify: bool = False
    minimum_version: Literal["TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3"] = "TLS1.2"


def _ldap_urls(urls: list[str]) -> list[str]:
    if not urls:
        raise ValueError("at least one URL is required")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("ldap", "ldaps"):
            raise ValueError(f"{url!r} is not an ldap:// or ldaps:// URL")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
    return urls


def _ldap_attribute(name: str) -> str:
    # Here, not at the top: the filters module loads ldap3 (~0.1 s), which only an LDAP configuration needs.
    from .authentication.ldap.filters import check_attribute_name

    return check_attribute_name(name)


#: An attribute name, put into filters as it is: checked so that it cannot change a filter.
LdapAttribute = Annotated[str, AfterValidator(_ldap_attribute)]


class LdapConfig(SecretsMixin):
    """Once validated, complete: the preset filled every attribute and filter left unset, and the filters and
    TLS files were checked (Authelia's validator does the same), so the provider reads plain values."""

    _secret_fields = ("password",)
    implementation: LdapImplementation = "custom"
    url: Annotated[StrList, AfterValidator(_ldap_urls)]
    start_tls: bool = False
    tls: LdapTlsConfig = LdapTlsConfig()
    timeout: Duration = 5.0
    base_dn: str
    additional_users_dn: str | None = None
    additional_groups_dn: str | None = None
    user: str | None = None
    password: SecretStr | None = Field(default=None, validate_default=True)
    # From the preset when unset. The attributes come before the filters, which name them.
    username_attribute: LdapAttribute
    mail_attribute: LdapAttribute
    display_name_attribute: LdapAttribute
    group_name_attribute: LdapAttribute
    #: More attributes read with each user, for identity headers (`{attributes.NAME}`).
    extra_attributes: list[LdapAttribute] = []
    users_filter: str
    groups_filter: str
    refresh_interval: Duration = 300.0
    pool_size: int = Field(default=4, ge=1, le=64)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_the_preset(cls, data: Any) -> Any:
        """Keys left unset (or null) take the implementation's values; an unknown implementation is reported
        at its key, and `custom` stands in so that the other keys are still checked."""
        if not isinstance(data, dict):
            return data
        name = data.get("implementation", "custom")
        preset = LDAP_PRESETS.get(name if isinstance(name, str) else "custom", LDAP_PRESETS["custom"])
        return {**data, **{key: value for key, value in preset.items() if data.get(key) is None}}

    @field_validator("start_tls")
    @classmethod
    def _not_twice_tls(cls, start_tls: bool, info: ValidationInfo) -> bool:
        if start_tls and any(u.startswith("ldaps://") for u in info.data.get("url", [])):
            raise ValueError("cannot be combined with an ldaps:// URL (authentication.ldap.url): ldaps is TLS already")
        return start_tls

    @field_validator("password")
    @classmethod
    def _password_for_user(cls, password: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if password is None and info.data.get("user"):
            raise ValueError("required (or password_file) when authentication.ldap.user is set")
        return password

    @field_validator("users_filter", "groups_filter")
    @classmethod
    def _check_filter(cls, template: str, info: ValidationInfo) -> str:
        from .authentication.ldap.filters import (
            ATTRIBUTE_KEYS,
            GROUPS_FILTER_PLACEHOLDERS,
            USERS_FILTER_PLACEHOLDERS,
            check_filter,
        )

        # A broken attribute name is reported at its own key; a stand-in lets the filter be checked anyway.
        attributes = {key: info.data.get(key) or "attribute" for key in ATTRIBUTE_KEYS}
        if info.field_name == "users_filter":
            check_filter(template, attributes, USERS_FILTER_PLACEHOLDERS, needs_one_of=("input",))
        else:
            check_filter(template, attributes, GROUPS_FILTER_PLACEHOLDERS, needs_one_of=("dn", "username", "input"))
        return template


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
OIDC_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"


def _issuer_url(value: str) -> str:
    """An issuer is https, or http on this machine only (trials and tests): its tokens decide who signs in."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("must be an https URL without query or fragment, e.g. https://sso.example.com/realms/corp")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"must be https: http is allowed only on this machine ({', '.join(LOOPBACK_HOSTS)})")
    return value.rstrip("/")


class OidcProviderConfig(SecretsMixin):
    """One OpenID Provider the login page offers a "Sign in with …" button for."""

    _secret_fields = ("client_secret",)
    #: In the callback URL (/oidc/callback/<name>) and in sessions: short, lower case.
    name: Annotated[str, Field(pattern=OIDC_NAME)]
    display_name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    issuer: Annotated[str, AfterValidator(_issuer_url)]
    client_id: Annotated[str, Field(min_length=1)]
    client_secret: SecretStr | None = Field(default=None, validate_default=True)
    scopes: list[str] = ["openid", "profile", "email", "groups"]
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    #: Only users whose e-mail is in one of these domains (empty: any).
    allowed_domains: list[Annotated[str, AfterValidator(_dns_domain)]] = []
    #: Only members of one of these groups (empty: any).
    allowed_groups: list[str] = []
    #: `amr` or `acr` values that count as the portal's second factor (e.g. [mfa, otp, hwk]).
    two_factor_claims: list[str] = []
    #: Where the groups come from: the provider's claims, or the LDAP directory (authentication.ldap).
    groups_from: Literal["provider", "ldap"] = "provider"
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    #: How often a session's groups are asked of the provider again.
    refresh_interval: Duration = Field(default=300.0, ge=1)
    timeout: Duration = Field(default=10.0, gt=0, le=60)

    @field_validator("client_secret")
    @classmethod
    def _required(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            raise ValueError("required (or client_secret_file): the portal authenticates itself to the provider")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, scopes: list[str]) -> list[str]:
        if "openid" not in scopes:
            raise ValueError("must include openid")
        return scopes

    @property
    def label(self) -> str:
        return self.display_name or self.name


class OidcConfig(Model):
    providers: list[OidcProviderConfig] = []
    #: Only the providers' buttons on the login page (the password form is gone; Basic still works).
    hide_password_form: bool = False

    @field_validator("providers")
    @classmethod
    def _unique_names(cls, providers: list[OidcProviderConfig]) -> list[OidcProviderConfig]:
        names = [provider.name for provider in providers]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"provider names must be unique: {', '.join(twice)} more than once")
        return providers

    @field_validator("hide_password_form")
    @classmethod
    def _some_button(cls, hide: bool, info: ValidationInfo) -> bool:
        if hide and not info.data.get("providers", [None]):
            raise ValueError("needs at least one provider: else nobody could sign in")
        return hide


class AuthenticationConfig(Model):
    backend: Literal["file", "ldap"] = "file"
    file: FileBackendConfig | None = Field(default=None, validate_default=True)
    ldap: LdapConfig | None = Field(default=None, validate_default=True)
    #: Machine clients: HTTP Basic on the verify endpoints (a rule may override it).
    basic_auth: bool = True
    basic_auth_realm: str = "authportal"
    #: Client certificates (mTLS) passed by the proxy: a machine credential like Basic and tokens.
    client_certificates: ClientCertificatesConfig = ClientCertificatesConfig()
    #: How long a successful Basic check is remembered (keyed by a MAC of it, never the password); 0 disables.
    credentials_cache_ttl: Duration = 60.0
    credentials_cache_size: int = Field(default=10000, ge=1)
    #: Sign-in through OpenID Providers (a button each on the login page).
    oidc: OidcConfig = OidcConfig()

    @field_validator("file", "ldap")
    @classmethod
    def _section_of_the_backend(cls, section: Any, info: ValidationInfo) -> Any:
        if section is None and info.data.get("backend") == info.field_name:
            raise ValueError(f"required key is missing (authentication.backend is {info.field_name!r})")
        return section

    @field_validator("oidc")
    @classmethod
    def _groups_from_ldap(cls, oidc: OidcConfig, info: ValidationInfo) -> OidcConfig:
        for index, provider in enumerate(oidc.providers):
            if provider.groups_from == "ldap" and info.data.get("backend", "ldap") != "ldap":
                raise SiblingProblem(f"oidc.providers[{index}].groups_from",
                                     "ldap needs authentication.backend: ldap")
        return oidc


class TotpConfig(Model):
    issuer: str = "authportal"
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha1"
    digits: Literal[6, 8] = 6
    period: int = Field(default=30, ge=15, le=120)
    skew: int = Field(default=1, ge=0, le=3)
    allow_enrollment: bool = True
    #: How recent the password check must be to enrol or replace a device.
    reauthentication: Duration = 300.0


class WebAuthnConfig(Model):
    """Security keys and passkeys (names as Authelia's `webauthn:` section)."""

    enable: bool = True
    #: The name authenticators show for this portal ("Sign in to …").
    display_name: str = Field(default="authportal", min_length=1, max_length=64)
    #: The relying party ID: a key works on this domain and its subdomains. Default: session.domain, else
    #: the portal's host.
    rp_id: str | None = None
    user_verification: Literal["preferred", "required", "discouraged"] = "preferred"
    timeout: Duration = Field(default=60.0, ge=10, le=600)
    #: "Sign in with a passkey" on the login page (discoverable credentials, no username typed).
    passkey_login: bool = False

    @field_validator("rp_id")
    @classmethod
    def _check_rp_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower().strip(".")
        if not DOMAIN_RE.fullmatch(value) or value.rpartition(".")[2].isdigit():
            raise ValueError(f"{value!r} is not a domain name (a security key is bound to a name, never an address)")
        return value


class I18nConfig(Model):
    """The pages' language when neither the picker's cookie nor the browser's Accept-Language names one."""

    default_locale: str = "en"

    @field_validator("default_locale")
    @classmethod
    def _shipped(cls, value: str) -> str:
        from .languages import CODES, find

        language = find(value)
        if language is None:
            raise ValueError(f"{value!r} is not a shipped language; one of: {', '.join(CODES)}")
        return language.catalog


_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
FOOTER_LINK = re.compile(r"\[([^\[\]]+)\]\(([^()\s]+)\)")
LOGO_TYPES = {".svg": "image/svg+xml", ".png": "image/png"}
MAX_LOGO_BYTES = 512 * 1024


def contrast_with_white(color: str) -> float:
    """WCAG 2.1 contrast ratio of white text on `color` (#rrggbb)."""
    def channel(hex_pair: str) -> float:
        value = int(hex_pair, 16) / 255
        return value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4

    red, green, blue = (channel(color[i:i + 2]) for i in (1, 3, 5))
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return 1.05 / (luminance + 0.05)


class BrandingConfig(Model):
    """The company's name, logo, colour and footer on every page."""

    #: Shown in the page header and the window title instead of "authportal".
    name: str = Field(default="authportal", min_length=1, max_length=64)
    #: An SVG or PNG (at most 512 KiB), served with a content hash in its URL and a long cache lifetime.
    logo_file: ConfigPath | None = None
    #: The sign-in button's background (#rrggbb); its text is white, so it must reach 4.5:1 against white.
    primary_color: str | None = None
    #: A line at the bottom of every page: plain text, with links written as [text](https://…).
    footer: str | None = Field(default=None, max_length=500)

    @field_validator("logo_file")
    @classmethod
    def _logo(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if path.suffix.lower() not in LOGO_TYPES:
            raise ValueError(f"{path.name}: the logo must be an .svg or a .png file")
        _readable("logo_file", path)
        data = path.read_bytes()
        if len(data) > MAX_LOGO_BYTES:
            raise ValueError(f"{path.name} is {len(data)} bytes; a logo may be at most {MAX_LOGO_BYTES} bytes")
        if path.suffix.lower() == ".png" and not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"{path.name} is not a PNG image")
        if path.suffix.lower() == ".svg" and b"<svg" not in data[:4096]:
            raise ValueError(f"{path.name} is not an SVG image (no <svg> element at its start)")
        return path

    @field_validator("primary_color")
    @classmethod
    def _readable_on_white(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _HEX_COLOR.fullmatch(value):
            raise ValueError(f"{value!r} is not a colour written as #rrggbb")
        ratio = contrast_with_white(value)
        if ratio < 4.5:
            raise ValueError(f"white text on {value} has a contrast of {ratio:.2f}:1; it needs at least 4.5:1 "
                             "(WCAG AA): choose a darker colour")
        return value.lower()

    @field_validator("footer")
    @classmethod
    def _links(cls, value: str | None) -> str | None:
        for _text, url in FOOTER_LINK.findall(value or ""):
            if not url.startswith(("https://", "http://", "mailto:")):
                raise ValueError(f"the link {url!r} must start with https://, http:// or mailto:")
        return value


class PasswordPolicyConfig(Model):
    """What a new password must be (NIST SP 800-63B: length and strength, no composition rules)."""

    min_length: int = Field(default=12, ge=1, le=1024)
    max_length: int = Field(default=128, ge=8, le=1024)
    #: zxcvbn's guessability score (0-4) a new password must reach; 0 turns the strength check off.
    zxcvbn_min_score: int = Field(default=3, ge=0, le=4)

    @field_validator("max_length")
    @classmethod
    def _not_below_min(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("min_length")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least min_length ({minimum})")
        return value


class EnableConfig(Model):
    enable: bool = False


class ResetPasswordValidationConfig(Model):
    #: How long a reset link works.
    expiration: Duration = Field(default=600.0, ge=60, le=86400)


class IdentityValidationConfig(Model):
    reset_password: ResetPasswordValidationConfig = ResetPasswordValidationConfig()
    #: Users who lost their second factor may remove it through an e-mailed link (after their password).
    reset_second_factor: bool = False


class SmtpConfig(SecretsMixin):
    _secret_fields = ("password",)
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(pattern=r"^[^\s@<>]+@[^\s@<>]+$|^[^<>]*<[^\s@<>]+@[^\s@<>]+>$")
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    ca_file: ConfigPath | None = None
    timeout: Duration = Field(default=10.0, gt=0, le=60)

    @field_validator("tls")
    @classmethod
    def _plain_only_on_loopback(cls, value: str, info: ValidationInfo) -> str:
        host = info.data.get("host")
        if value == "none" and host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"none is allowed only to a server on this machine (host is {host!r}): the messages "
                             "carry reset links")
        return value


class FilesystemNotifierConfig(Model):
    #: Messages are appended to this file (trials and tests).
    path: ConfigPath


class NotifierConfig(Model):
    """Where e-mails (password reset links) go: exactly one of smtp, filesystem."""

    smtp: SmtpConfig | None = None
    filesystem: FilesystemNotifierConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> NotifierConfig:
        if (self.smtp is None) == (self.filesystem is None):
            raise ValueError("set exactly one of smtp, filesystem")
        return self


class SqliteConfig(Model):
    path: ConfigPath


class PostgresConfig(SecretsMixin):
    _secret_fields = ("password",)
    url: str
    password: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
            raise ValueError("must be a postgresql:// URL")
        return value


class StorageConfig(Model):
    sqlite: SqliteConfig | None = None
    postgres: PostgresConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StorageConfig:
        if (self.sqlite is None) == (self.postgres is None):
            raise ValueError("configure exactly one of sqlite or postgres")
        return self


#: What failures count against, and what a ban then holds: the user (from anywhere), the client address (any
#: user), or the user from that address only.
RegulationMode = Literal["user", "ip", "user_ip"]
DEFAULT_REGULATION_MODES: tuple[RegulationMode, ...] = ("user", "ip")


class RegulationConfig(Model):
    #: Failures for one user (mode user) or one user from one address (mode user_ip) before that is banned.
    max_retries: int = Field(default=5, ge=1)
    #: Failures from one client IP (any user) before that IP is banned; 0 turns it off.
    ip_max_retries: int = Field(default=20, ge=0)
    find_time: Duration = 120.0
    ban_time: Duration = 300.0
    modes: Annotated[list[RegulationMode], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_REGULATION_MODES))
    #: Client networks never banned by address (mode ip): a scrapers' network, a NAT many people share.
    exempt_networks: list[IPvAnyNetwork] = []
    #: Every first-factor answer takes at least this long, so timing leaks nothing.
    minimum_delay: Duration = 0.25


Policy = Literal["bypass", "deny", "one_factor", "two_factor"]


#: A header name (RFC 9110 token), as a proxy passes it on.
HEADER_NAME_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
#: Headers the portal must never set for the application: they change how the proxy or the app reads the request.
RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection", "cookie",
                              "set-cookie", "authorization", "proxy-authorization", "location", "www-authenticate",
                              "upgrade", "te", "trailer", "keep-alive", "x-forwarded-for", "x-forwarded-host",
                              "x-forwarded-proto", "x-forwarded-uri", "x-forwarded-method", "x-original-url",
                              "x-original-method", "x-real-ip", "cache-control", "retry-after"})
#: An attribute name in a template (`{attributes.employeeNumber}`): an LDAP attribute or a users-file key.
ATTRIBUTE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")
#: What a header template may say: {username}, {groups}, {name}, {email}, {attributes.NAME}.
TEMPLATE_FIELDS = frozenset({"username", "groups", "name", "email"})
DEFAULT_IDENTITY_HEADERS = {"Remote-User": "{username}", "Remote-Groups": "{groups}", "Remote-Name": "{name}",
                            "Remote-Email": "{email}"}


def check_header_name(name: str) -> str:
    if not HEADER_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a header name (letters, digits and -, at most 64)")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"{name!r} is a header the proxy or the application reads for itself: choose another name")
    return name


def check_template(template: str) -> str:
    """A header value template: text with {username}, {groups}, {name}, {email} or {attributes.NAME}."""
    try:
        fields = [field for _, field, spec, conversion in string.Formatter().parse(template) if field is not None]
        specs = [(spec, conversion) for _, field, spec, conversion in string.Formatter().parse(template)
                 if field is not None]
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for field in fields:
        attribute = field.removeprefix("attributes.")
        if field not in TEMPLATE_FIELDS and (field == attribute or not ATTRIBUTE_NAME_RE.fullmatch(attribute)):
            raise ValueError(f"{template!r}: unknown placeholder {{{field}}} (use {{username}}, {{groups}}, "
                             "{name}, {email} or {attributes.NAME})")
    if any(spec or conversion for spec, conversion in specs):
        raise ValueError(f"{template!r}: a placeholder takes no format or conversion")
    if any(c in template for c in "\r\n\x00"):
        raise ValueError(f"{template!r}: no line breaks or NUL in a header value")
    return template


class FromGroups(Model):
    """A header value chosen by the user's groups: the first entry whose group the user has; else `default`
    (null: no header)."""

    from_groups: dict[str, str]
    default: str | None = None

    @field_validator("from_groups")
    @classmethod
    def _values(cls, mapping: dict[str, str]) -> dict[str, str]:
        if not mapping:
            raise ValueError("name at least one group")
        for value in mapping.values():
            check_template(value)
        return mapping

    @field_validator("default")
    @classmethod
    def _default(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)


HeaderValue = str | FromGroups


def _check_headers(headers: dict[str, HeaderValue]) -> dict[str, HeaderValue]:
    for name, value in headers.items():
        check_header_name(name)
        if isinstance(value, str):
            check_template(value)
    if len({name.lower() for name in headers}) != len(headers):
        raise ValueError("a header is named twice (header names ignore case)")
    return headers


class IdentityConfig(Model):
    #: The headers the verify endpoints answer with for a signed-in user: name -> value template.
    headers: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_IDENTITY_HEADERS))

    @field_validator("headers")
    @classmethod
    def _check(cls, headers: dict[str, str]) -> dict[str, str]:
        _check_headers(dict(headers))
        return headers


class NamedNetworks(Model):
    name: str
    networks: list[IPvAnyNetwork]


#: The names in access_control.networks while its rules are validated; None: unknown (they are invalid).
_network_names: ContextVar[frozenset[str] | None] = ContextVar("network_names", default=None)


class AccessRule(Model):
    domain: StrList = []
    domain_regex: Annotated[StrList, Field(validate_default=True)] = []
    resources: StrList = []
    methods: list[str] = []
    #: Each item is OR'ed; an item that is itself a list is AND'ed (`[[group:a, group:b]]`).
    subject: list[str | list[str]] = []
    networks: StrList = []
    policy: Policy
    #: Accept HTTP Basic / Bearer tokens here; unset = authentication.basic_auth.
    basic_auth: bool | None = None
    #: Headers this rule adds to (or overrides in) `identity.headers`: a template, or a value chosen by group.
    headers: dict[str, HeaderValue] = {}
    #: Step-up: the password (and, for two_factor, the second factor) must have been checked at most this long
    #: ago, even inside a longer session; else the portal asks again ("Confirm it's you").
    max_age: Duration | None = Field(default=None, gt=0)

    @field_validator("headers")
    @classmethod
    def _check_rule_headers(cls, headers: dict[str, HeaderValue]) -> dict[str, HeaderValue]:
        return _check_headers(headers)

    @field_validator("domain_regex", "resources")
    @classmethod
    def _check_regexes(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return values

    @field_validator("networks")
    @classmethod
    def _check_networks(cls, values: list[str]) -> list[str]:
        names = _network_names.get()
        if names is None:  # validated outside access_control, or its names are broken (reported there)
            return values
        for net in values:
            if net in names:
                continue
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is neither a CIDR nor a name from access_control.networks") from None
        return values

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, values: list[str]) -> list[str]:
        known = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PROPFIND"}
        upper = [v.upper() for v in values]
        unknown = sorted(set(upper) - known)
        if unknown:
            raise ValueError(f"unknown HTTP method(s): {', '.join(unknown)}")
        return upper

    @field_validator("subject")
    @classmethod
    def _check_subjects(cls, values: list[str | list[str]]) -> list[str | list[str]]:
        return check_subjects(values)

    @field_validator("domain_regex")
    @classmethod
    def _some_domain(cls, domain_regex: list[str], info: ValidationInfo) -> list[str]:
        if not domain_regex and info.data.get("domain") == []:
            raise SiblingProblem("domain", "a rule needs domain or domain_regex")
        return domain_regex

    @field_validator("policy")
    @classmethod
    def _bypass_for_anyone(cls, policy: Policy, info: ValidationInfo) -> Policy:
        if policy == "bypass" and info.data.get("subject"):
            raise SiblingProblem("subject", "a bypass rule cannot have a subject (nobody is logged in to match it)")
        return policy


class AccessControlConfig(Model):
    default_policy: Policy = "deny"
    networks: list[NamedNetworks] = []
    rules: list[AccessRule] = []

    @field_validator("rules", mode="wrap")
    @classmethod
    def _rules_know_the_network_names(cls, rules: Any, handler: ValidatorFunctionWrapHandler,
                                      info: ValidationInfo) -> list[AccessRule]:
        """Each rule checks its own `networks` against the names, so a broken rule hides no other's error."""
        names = frozenset(n.name for n in info.data["networks"]) if "networks" in info.data else None
        token = _network_names.set(names)
        try:
            return handler(rules)
        finally:
            _network_names.reset(token)


def check_subjects(values: list[str | list[str]]) -> list[str | list[str]]:
    """A rule's `subject` (also administration.subject): items OR'ed, a nested list AND'ed."""
    for item in values:
        for subject in [item] if isinstance(item, str) else item:
            kind, _, name = subject.partition(":")
            if kind not in ("user", "group") or not name:
                raise ValueError(f"subject {subject!r} must be 'user:NAME' or 'group:NAME'")
    return values


class AdministrationConfig(Model):
    #: Who may open /admin (with two factors), like a rule's subject; empty: /admin is off (404).
    subject: list[str | list[str]] = []

    @field_validator("subject")
    @classmethod
    def _check_subjects(cls, values: list[str | list[str]]) -> list[str | list[str]]:
        return check_subjects(values)

    def admits(self, user: str, groups: Collection[str]) -> bool:
        """Whether a user is in `subject` (items OR'ed, a nested list AND'ed, as in an access rule)."""
        for item in self.subject:
            names = [item] if isinstance(item, str) else item
            if all(name[5:] == user if name.startswith("user:") else name[6:] in groups for name in names):
                return True
        return False


class LogConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    #: Audit events as JSON lines in their own file (they also go to the `authportal.audit` logger).
    audit_file: ConfigPath | None = None


#: Who may read /metrics unless configured: loopback and private networks, where Prometheus scrapes from.
PRIVATE_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


class MetricsConfig(Model):
    enabled: bool = True
    #: Client networks allowed to read /metrics; empty = anyone who reaches the portal.
    networks: list[IPvAnyNetwork] = Field(default_factory=lambda: [ipaddress.ip_network(n) for n in PRIVATE_NETWORKS])


class Config(SecretsMixin):
    """The whole configuration. Checks between sections are run by `parse_config` (`_combination_problems`),
    on the keys they read validated alone, so that they run even when another section is broken."""

    _secret_fields = ("secret_key",)
    server: ServerConfig = ServerConfig()
    secret_key: SecretStr
    session: SessionConfig = SessionConfig()
    authentication: AuthenticationConfig
    totp: TotpConfig = TotpConfig()
    webauthn: WebAuthnConfig = WebAuthnConfig()
    identity: IdentityConfig = IdentityConfig()
    password_policy: PasswordPolicyConfig = PasswordPolicyConfig()
    password_change: EnableConfig = EnableConfig()
    password_reset: EnableConfig = EnableConfig()
    identity_validation: IdentityValidationConfig = IdentityValidationConfig()
    notifier: Annotated[NotifierConfig | None, Field(validate_default=True)] = None
    storage: StorageConfig
    regulation: RegulationConfig = RegulationConfig()
    access_control: AccessControlConfig = AccessControlConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    administration: AdministrationConfig = AdministrationConfig()
    i18n: I18nConfig = I18nConfig()
    branding: BrandingConfig = BrandingConfig()
    #: The pages' colours: light, dark, or auto (follows the browser's prefers-color-scheme).
    theme: Literal["light", "dark", "auto"] = "light"

    @field_validator("secret_key")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @property
    def portal_url(self) -> str:
        """The portal's main URL (links in e-mails, security keys): server.portal_url, else the first cookie's."""
        if self.server.portal_url is None and self.session.cookies:
            return self.session.cookies[0].portal_url
        return _portal_url(self.server)

    @cached_property
    def cookie_domains(self) -> tuple[CookieDomain, ...]:
        """Every cookie domain with its portal URL; one when `session.cookies` is not used."""
        session = self.session
        if not session.cookies:
            return (CookieDomain(session.domain, self.portal_url, session.cookie_name, session.expiration,
                                 session.inactivity, session.remember_me),)
        return tuple(CookieDomain(
            c.domain, c.portal_url, c.name or session.cookie_name,
            session.expiration if c.expiration is None else c.expiration,
            session.inactivity if c.inactivity is None else c.inactivity,
            session.remember_me if c.remember_me is None else c.remember_me) for c in session.cookies)

    def cookie_for(self, host: str) -> CookieDomain | None:
        """The cookie domain a request to `host` (any case, with or without port) belongs to, if any."""
        if host.startswith("["):  # [v6]:port
            bare = host[1:host.find("]")] if "]" in host else host
        else:
            bare = host.rpartition(":")[0] if host.count(":") == 1 else host
        bare = bare.rstrip(".").lower()
        return next((cookie for cookie in self.cookie_domains if cookie.covers(bare)), None)

    @field_validator("notifier")
    @classmethod
    def _notifier_for_links(cls, notifier: NotifierConfig | None, info: ValidationInfo) -> NotifierConfig | None:
        if notifier is not None:
            return notifier
        reset = info.data.get("password_reset")
        if reset is not None and reset.enable:
            raise ValueError("required by password_reset.enable: the reset links are sent by e-mail "
                             "(notifier.smtp, or notifier.filesystem for trials)")
        validation = info.data.get("identity_validation")
        if validation is not None and validation.reset_second_factor:
            raise ValueError("required by identity_validation.reset_second_factor: the links are sent by e-mail "
                             "(notifier.smtp, or notifier.filesystem for trials)")
        return notifier

    @property
    def webauthn_rp_id(self) -> str:
        """The relying party ID security keys are bound to: webauthn.rp_id, else session.domain, else the portal host."""
        return self.webauthn.rp_id or self.session.domain or _portal_host(self.server)

    @property
    def webauthn_unavailable(self) -> str | None:
        """Why browsers would refuse security keys for this portal (None: they can be used)."""
        if not self.webauthn.enable:
            return "webauthn.enable is false"
        url = urlsplit(self.portal_url)
        host = url.hostname or ""
        if host.rpartition(".")[2].isdigit() or ":" in host:
            return f"the portal is reached by an address ({host}, server.portal_url): keys need a host name"
        if url.scheme != "https" and host != "localhost":
            return "the portal is not on https (server.portal_url): browsers offer keys only to secure sites"
        return None

    def warnings(self) -> list[str]:
        """Legal but risky settings, logged loudly at every start."""
        found = []
        if not self.session.cookie_secure:
            found.append("session.cookie_secure is false: cookies travel over plain http (trials only)")
        ldap = self.authentication.ldap
        if self.authentication.backend == "ldap" and ldap and ldap.tls.skip_verify:
            found.append("authentication.ldap.tls.skip_verify is true: the directory's certificate is NOT verified")
        if (self.authentication.backend == "ldap" and ldap and ldap.implementation == "activedirectory"
                and not ldap.start_tls and any(url.startswith("ldap://") for url in ldap.url)):
            found.append("authentication.ldap.url is plain ldap:// without start_tls: Active Directory refuses "
                         "password changes and resets in clear, and the portal does not send them so")
        if self.access_control.default_policy == "bypass" and not self.access_control.rules:
            found.append("access_control.default_policy is bypass and there are no rules: nothing is protected")
        for net in self.server.trusted_proxies:
            if net.prefixlen == 0:
                found.append(f"server.trusted_proxies contains {net}: any client can forge the original URL")
        certificates = self.authentication.client_certificates
        if certificates.enable and certificates.ca_file is None:
            found.append("authentication.client_certificates has no ca_file: whose certificate is believed rests on "
                         "the proxy's verdict alone (give the portal the proxy's client CA)")
        return found


def _portal_url(server: ServerConfig) -> str:
    return server.portal_url or f"http://{server.address}"


def _portal_host(server: ServerConfig) -> str:
    return (urlsplit(_portal_url(server)).hostname or "").lower()


def _covers(domain: str, host: str) -> bool:
    return host == domain or host.endswith("." + domain)


def _combination_problems(server: ServerConfig | None, session: SessionConfig | None,
                          webauthn: WebAuthnConfig | None) -> list[str]:
    """Checks between sections (run by parse_config): the session cookie must reach the portal, and the
    security keys' relying party must be the portal's domain."""
    if server is None or session is None:  # what they read is invalid, and reported as such
        return []
    problems = []
    portal_url = _portal_url(server)
    host = _portal_host(server)
    domain = session.domain
    rp_id = webauthn.rp_id if webauthn is not None else None
    if rp_id and not _covers(rp_id, host):
        problems.append(f"webauthn.rp_id: {rp_id!r} does not cover the portal host {host!r} (server.portal_url): "
                        "browsers refuse a key for a domain the page is not on")
    if domain and not _covers(domain, host):
        problems.append(f"session.domain: {domain!r} does not cover the portal host {host!r} (server.portal_url): "
                        "the session cookie would never reach the portal")
    plain = "but session.cookie_secure is true: browsers do not send Secure cookies back over http; use an " \
            "https:// URL, or for a plain-http trial set session.cookie_secure: false"
    for index, cookie in enumerate(session.cookies):
        if cookie.portal_url.startswith("http://") and session.cookie_secure:
            problems.append(f"session.cookies[{index}].portal_url: is http:// {plain}")
    if session.cookies and server.portal_url is None:
        return problems  # the cookies' portal URLs are the portal's
    if portal_url.startswith("http://") and session.cookie_secure and host not in ("127.0.0.1", "localhost", "::1"):
        given = "is http://" if server.portal_url else f"is not set, so it is {portal_url} (from server.address),"
        problems.append(f"server.portal_url: {given} {plain}")
    return problems


def _valid_alone(model: type[ModelT], raw: dict[str, Any], name: str, context: dict[str, Any],
                 keys: tuple[str, ...] | None = None) -> ModelT | None:
    """Section `name` of the raw document (only its `keys`, if given) validated by itself, or None if invalid:
    a check between sections still runs when the document has errors elsewhere."""
    section = raw.get(name, {})
    if not isinstance(section, dict):
        return None
    if keys is not None:
        section = {key: value for key, value in section.items() if key in keys}
    try:
        return model.model_validate(section, context=context)
    except ValidationError:
        return None


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif str(item).startswith(("function-", "union[", "list[", "str", "is-instance")):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _format_errors(exc: ValidationError) -> list[str]:
    errors = []
    for err in exc.errors(include_url=False):
        loc, message = err["loc"], err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SiblingProblem):
            loc = (*loc[:-1], cause.key)
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing" and err["loc"] == ("secret_key",):
            message = "required (or secret_key_file): it signs cookies and encrypts TOTP secrets"
        elif err["type"] == "missing":
            message = "required key is missing"
        errors.append(f"{_format_loc(loc)}: {message}")
    return sorted(set(errors), key=errors.index)


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> list[str]:
    """Merge `AUTHPORTAL_A__B=value` into raw[a][b]; returns problems found."""
    problems = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if not all(path):
            problems.append(f"{name}: malformed variable name")
            continue
        node = raw
        for key in path[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                problems.append(f"{name}: {'.'.join(path)} does not name a configuration key")
                break
            node = child
        else:
            # Text, converted to the key's type by validation: read as YAML, a secret such as `abc #1` or
            # `0123` would lose its tail or turn into a number. Only a flow list/mapping is YAML.
            node[path[-1]] = value
            if value.lstrip()[:1] in ("[", "{"):
                with contextlib.suppress(YamlError):  # malformed: validation names the key
                    node[path[-1]] = parse_yaml(value)
    return problems


def parse_config(raw: Any, environ: dict[str, str] | None = None, folder: Path | None = None) -> Config:
    """Validate a decoded YAML document (plus environment overrides); relative paths are taken from `folder`
    (the working directory if None), so every path in the result is absolute."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): the configuration must be a mapping of keys"])
    folder = Path.cwd() if folder is None else folder
    context = {_CONFIG_FOLDER: folder}
    problems = _apply_env(raw, dict(os.environ) if environ is None else environ)
    unreadable: set[str] = set()
    _read_secret_files(raw, Config, "", problems, unreadable, folder)
    try:
        config = Config.model_validate(raw, context=context)
    except ValidationError as exc:
        errors = [e for e in _format_errors(exc) if e.split(":", 1)[0] not in unreadable]
        errors += _combination_problems(
            _valid_alone(ServerConfig, raw, "server", context, ("address", "portal_url")),
            _valid_alone(SessionConfig, raw, "session", context, ("domain", "cookie_secure", "cookies")),
            _valid_alone(WebAuthnConfig, raw, "webauthn", context, ("rp_id",)),
        )
        raise ConfigError(problems + errors, _valid_alone(AuthenticationConfig, raw, "authentication", context)) \
            from None
    problems += _combination_problems(config.server, config.session, config.webauthn)
    if problems:
        raise ConfigError(problems, config.authentication)
    return config


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read and validate a configuration file; relative paths are taken from its folder, whatever the
    working directory (`check-config` run from elsewhere sees the files the server will)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration file: {exc.strerror}"]) from None
    try:
        raw = parse_yaml(text)
    except YamlError as exc:
        raise ConfigError([f"{path}: malformed YAML ({exc})"]) from None
    return parse_config(raw, environ, folder=path.resolve().parent)
