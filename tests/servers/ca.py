"""A throw-away X.509 certificate authority for the tests: the CA, the certificates it issues, their pins.

slapd and Samba AD present certificates from one (verified for real by the
portal's ldap3), nginx serves the https layout with one (examples/nginx/https.conf,
trusted by `requests` through `verify=` and by Chromium through `spki_sha256`).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class CertificateAuthority:
    """A throw-away CA (EC P-256) that issues server and client certificates as PEM files."""

    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def write_cert(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, cert_path: Path, key_path: Path, common_name: str, dns_names: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), client: bool = False, emails: tuple[str, ...] = (),
              valid: tuple[datetime.timedelta, datetime.timedelta] | None = None) -> tuple[Path, Path]:
        """Write a leaf certificate and its (0600) key with the given SANs; `valid`: (from, until) relative to now
        (default: from an hour ago for 7 days; an expired one: `(-2 days, -1 day)`)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        since, until = valid or (datetime.timedelta(hours=-1), datetime.timedelta(days=7))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + since)
            .not_valid_after(now + until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        names += [x509.RFC822Name(email) for email in emails]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
        )
        key_path.chmod(0o600)
        return cert_path, key_path


    def write_crl(self, path: Path, revoked: tuple[Path, ...] = (),
                  next_update: datetime.timedelta = datetime.timedelta(days=1)) -> Path:
        """Write (atomically, as an operator's `mv` does) a PEM CRL revoking the certificates in these files."""
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
                   .last_update(now + min(-datetime.timedelta(minutes=5), next_update - datetime.timedelta(days=1)))
                   .next_update(now + next_update))
        for cert_path in revoked:
            serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
        temporary = path.with_name(path.name + ".new")
        temporary.write_bytes(builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        temporary.replace(path)
        return path


def spki_sha256(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate: the pin Chromium's
    `--ignore-certificate-errors-spki-list` and HPKP-style pins take."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
