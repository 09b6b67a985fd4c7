"""Client certificates (mTLS) on the verify path: the proxy's certificate and verdict turned into an identity.

The proxy terminates TLS and verifies the certificate (nginx `ssl_verify_client`, HAProxy `verify`); it passes
the certificate in X-SSL-Client-Cert (nginx: URL-escaped PEM, `$ssl_client_escaped_cert`; HAProxy: base64 DER,
`ssl_c_der,base64`) and its verdict in X-SSL-Client-Verify (`SUCCESS`, `NONE`, `FAILED:reason`). The verify
path reads them only from trusted proxies. Nothing is guessed: a certificate without a readable verdict, or one
that cannot be read, is the proxy's mistake (a 400 with the reason); a failed verdict is refused.

On a cache miss the portal re-parses the certificate, re-checks it against its own `ca_file` (the issuing CA's
signature), its dates and clientAuth usage, its revocation in `crl_file` (re-read when the file changes), and
maps it to a user of the users file or directory, through the one credential path (`CredentialChecks`: bans,
metrics, audit). A success is remembered under a MAC of the header for `session.cache_ttl`, so a scraper's
requests cost a hash and a dict lookup, and a CRL that revokes a certificate holds within that bound.
"""
from __future__ import annotations

import base64
import datetime
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .authentication import UserProvider
from .config import ClientCertificatesConfig, Config
from .credentials import CredentialChecks, Refused
from .identity import ONE_FACTOR, TWO_FACTOR, Identity
from .identity_headers import DEFAULT_TEMPLATES, HeaderTemplates
from .machine_auth import CredentialCache
from .x509_files import read_certificates, read_crls, signer

if TYPE_CHECKING:  # not at run time: `authportal serve` must choose the metrics' storage before they load
    from .metrics import Metrics

log = logging.getLogger("authportal.client_certificates")

CERT_KEY = "HTTP_X_SSL_CLIENT_CERT"
VERIFY_KEY = "HTTP_X_SSL_CLIENT_VERIFY"
#: A PEM certificate with a long chain of extensions is a few KiB; URL-escaping adds a third.
MAX_HEADER = 32 * 1024
#: Where a second verdict starts: X-SSL-Client-Verify sent twice (the values arrive joined by a comma).
_JOINED_VERDICT = re.compile(r",\s*(?:SUCCESS|NONE|FAILED)")


class ProxyHeaderError(ValueError):
    """The proxy's certificate headers cannot be read: the verify path answers 400 with this reason."""


@dataclass(frozen=True, slots=True)
class Presented:
    """A certificate as the proxy passed it: the header's value and the verdict, SUCCESS or FAILED:reason."""

    value: str
    verdict: str


def presented(environ: dict[str, Any]) -> Presented | None:
    """The certificate on a verify request, None without one. Raises ProxyHeaderError for unreadable headers."""
    value = environ.get(CERT_KEY)
    if not value:  # no header, or an empty one (nginx sends none for an empty variable): no certificate
        return None
    verdict = environ.get(VERIFY_KEY)
    if verdict is None:
        raise ProxyHeaderError("X-SSL-Client-Cert without X-SSL-Client-Verify: the proxy must pass both "
                               "(nginx: $ssl_client_escaped_cert and $ssl_client_verify; see examples/)")
    if not verdict:
        raise ProxyHeaderError("empty X-SSL-Client-Verify beside a certificate: the verdict cannot be read")
    if _JOINED_VERDICT.search(verdict):
        raise ProxyHeaderError("X-SSL-Client-Verify was sent twice (the values arrive joined by a comma)")
    if verdict == "NONE":
        raise ProxyHeaderError("X-SSL-Client-Verify says NONE beside a certificate: the headers contradict each other")
    if verdict != "SUCCESS" and not verdict.startswith("FAILED:"):
        raise ProxyHeaderError("malformed X-SSL-Client-Verify: expected SUCCESS, NONE or FAILED:reason")
    if "," in value:  # neither URL-escaped PEM nor base64 holds a comma
        raise ProxyHeaderError("X-SSL-Client-Cert was sent twice (the values arrive joined by a comma)")
    if len(value) > MAX_HEADER:
        raise ProxyHeaderError(f"X-SSL-Client-Cert is longer than {MAX_HEADER} characters")
    return Presented(value, verdict)


def decode(value: str) -> x509.Certificate:
    """The certificate in X-SSL-Client-Cert: URL-escaped PEM (nginx) or base64 DER (HAProxy)."""
    text = unquote(value) if "%" in value else value
    try:
        if "-----BEGIN CERTIFICATE-----" in text:
            certificates = x509.load_pem_x509_certificates(text.encode("ascii"))
            if len(certificates) != 1:
                raise ProxyHeaderError(f"X-SSL-Client-Cert holds {len(certificates)} certificates, not one")
            return certificates[0]
        return x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
    except ProxyHeaderError:
        raise
    except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors too
        raise ProxyHeaderError("unreadable X-SSL-Client-Cert: neither a URL-escaped PEM certificate (nginx "
                               "$ssl_client_escaped_cert) nor base64 DER (HAProxy ssl_c_der,base64)") from None


def _refuse(reason: str) -> NoReturn:
    raise Refused(reason, reason)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _the_one(values: list[str], what: str) -> str:
    if len(values) != 1:
        _refuse(f"certificate has {len(values) or 'no'} {what}, not one")
    return values[0]


def _san(certificate: x509.Certificate, kind: type[x509.RFC822Name] | type[x509.DNSName]) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(names.get_values_for_type(kind))


class RevocationList:
    """crl_file, re-read when it changes (one stat per check); every CRL in it signed by a CA of ca_file.

    A file that cannot be read or is not signed refuses every certificate until it is fixed (fail closed):
    keeping the previous list would let through what the new one revokes.
    """

    def __init__(self, path: Path, authorities: list[x509.Certificate]):
        self.path = path
        self.authorities = authorities
        self._stamp: tuple[int, int, int] | None = None
        self._crls: dict[x509.Name, x509.CertificateRevocationList] = {}
        self._problem: str | None = None
        self._lock = threading.Lock()

    def check(self, certificate: x509.Certificate, now: datetime.datetime) -> None:
        """Refused when the certificate is revoked, or when the CRL of its issuer is missing or out of date."""
        self._reload_if_changed()
        if self._problem is not None:
            _refuse(self._problem)
        crl = self._crls.get(certificate.issuer)
        if crl is None:
            _refuse(f"crl_file holds no CRL of {certificate.issuer.rfc4514_string()}")
        if crl.next_update_utc is not None and now > crl.next_update_utc:
            _refuse(f"the CRL of {crl.issuer.rfc4514_string()} is out of date (next update "
                    f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC): replace crl_file")
        if crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None:
            _refuse("certificate revoked (crl_file)")

    def _reload_if_changed(self) -> None:
        try:
            status = os.stat(self.path)
            stamp = (status.st_mtime_ns, status.st_size, status.st_ino)
        except OSError as exc:
            stamp = (-1, -1, -1)
            problem: str | None = f"crl_file {self.path} cannot be read: {exc.strerror}"
        else:
            problem = None
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            crls: dict[x509.Name, x509.CertificateRevocationList] = {}
            if problem is None:
                try:
                    for crl in read_crls(self.path):
                        if signer(crl, self.authorities) is None:
                            raise ValueError(f"the CRL of {crl.issuer.rfc4514_string()} is not signed by a CA "
                                             "in ca_file")
                        crls[crl.issuer] = crl
                except (OSError, ValueError) as exc:
                    problem = f"crl_file {self.path}: {exc}"
            if problem is not None:
                log.warning("refusing every client certificate until crl_file is fixed: %s", problem)
            else:
                log.info("crl_file read: %s (%d CRL)", self.path, len(crls))
            self._crls, self._problem, self._stamp = crls, problem, stamp


class CertificateRules:
    """What a certificate must be, and whose it is: the checks of `client_certificates`, without the proxy."""

    def __init__(self, config: ClientCertificatesConfig, provider: UserProvider,
                 clock: Callable[[], datetime.datetime] = _now):
        self.provider = provider
        self.clock = clock
        self.level = TWO_FACTOR if config.counts_as_two_factor else ONE_FACTOR
        self.authorities = read_certificates(config.ca_file) if config.ca_file is not None else None
        self.revocations = (RevocationList(config.crl_file, self.authorities or [])
                            if config.crl_file is not None else None)
        self.regex = re.compile(config.regex) if config.regex is not None else None
        self.username: Callable[[x509.Certificate], str] = {
            "subject_cn": self._subject_cn, "san_email": self._san_email,
            "san_dns": self._san_dns, "subject_regex": self._subject_regex}[config.map]

    def user_of(self, certificate: x509.Certificate) -> str:
        """The user a valid certificate names. Raises Refused with the reason."""
        now = self.clock()
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            _refuse("certificate expired or not yet valid")
        try:
            usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = None  # no extendedKeyUsage: any use, as OpenSSL reads it
        if usage is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            _refuse("certificate not for client authentication (extendedKeyUsage without clientAuth)")
        if self.authorities is not None:
            self._check_issuer(certificate, now)
        if self.revocations is not None:
            self.revocations.check(certificate, now)
        return self.username(certificate)

    def _check_issuer(self, certificate: x509.Certificate, now: datetime.datetime) -> None:
        assert self.authorities is not None
        for authority in self.authorities:
            if authority.subject != certificate.issuer:
                continue
            try:
                certificate.verify_directly_issued_by(authority)
            except (ValueError, TypeError, InvalidSignature):
                continue
            if not authority.not_valid_before_utc <= now <= authority.not_valid_after_utc:
                _refuse(f"the issuing CA {authority.subject.rfc4514_string()} expired or is not yet valid")
            return
        _refuse(f"certificate not issued by a CA in ca_file (issuer {certificate.issuer.rfc4514_string()})")

    def _subject_cn(self, certificate: x509.Certificate) -> str:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return _the_one([str(name.value) for name in names], "subject CN")

    def _san_email(self, certificate: x509.Certificate) -> str:
        email = _the_one(_san(certificate, x509.RFC822Name), "subjectAltName e-mail")
        user = self.provider.username_for_email(email)
        if user is None:
            _refuse(f"no user has the certificate's e-mail {email}")
        return user

    def _san_dns(self, certificate: x509.Certificate) -> str:
        return _the_one(_san(certificate, x509.DNSName), "subjectAltName DNS name")

    def _subject_regex(self, certificate: x509.Certificate) -> str:
        assert self.regex is not None
        subject = certificate.subject.rfc4514_string()
        found = self.regex.search(subject)
        user = (found.group("user") if "user" in self.regex.groupindex else found.group(1)) if found else None
        if not user:
            _refuse(f"client_certificates.regex finds no user in {subject}")
        return user


class ClientCertificates:
    """The verify path's entry: a presented certificate to an Identity (or None), cheaply for repeat callers."""

    def __init__(self, rules: CertificateRules, checks: CredentialChecks, cache: CredentialCache,
                 templates: HeaderTemplates = DEFAULT_TEMPLATES):
        self.rules = rules
        self.checks = checks
        self.cache = cache
        self.templates = templates

    def authenticate(self, certificate: Presented, client_ip: str) -> Identity | None:
        """None when refused (audited); raises Busy when no check slot is free, ProxyHeaderError when unreadable."""
        if certificate.verdict != "SUCCESS":  # never cached: a refusal is checked, counted and audited each time
            reason = f"the proxy refused the certificate: {certificate.verdict[len('FAILED:'):] or 'no reason'}"
            return self.checks.certificate(client_ip, lambda: _refuse(reason)).found
        return self.cache.remembered(self.cache.key(certificate.value),
                                     lambda: self._check(certificate.value, client_ip))

    def _check(self, value: str, client_ip: str) -> Identity | None:
        parsed = decode(value)
        return self.checks.certificate(client_ip, lambda: self._identity(parsed)).found

    def _identity(self, certificate: x509.Certificate) -> Identity:
        user = self.rules.user_of(certificate)
        details = self.rules.provider.get_details(user)
        if details is None:
            _refuse(f"the certificate's user {user!r} is unknown or disabled")
        return Identity.from_details(details, self.rules.level, self.templates)


def open_client_certificates(config: Config, provider: UserProvider, checks: CredentialChecks, metrics: Metrics,
                             templates: HeaderTemplates) -> ClientCertificates | None:
    """The verify path's certificate checks; None when client_certificates.enable is false (nothing is read)."""
    settings = config.authentication.client_certificates
    if not settings.enable:
        return None
    cache = CredentialCache(config.session.cache_ttl, config.authentication.credentials_cache_size,
                            on_lookup=lambda hit: metrics.cache_lookups.labels("hit" if hit else "miss").inc())
    return ClientCertificates(CertificateRules(settings, provider), checks, cache, templates)
