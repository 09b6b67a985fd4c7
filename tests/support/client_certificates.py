"""Client certificates for the mTLS tests: one CA the portal trusts, one it does not, and the people's certificates.

`Pki(directory)` issues them (EC keys: milliseconds); `escaped(path)` is what nginx's
`$ssl_client_escaped_cert` passes the portal, `der_base64(path)` what HAProxy's `ssl_c_der,base64` passes.
"""
from __future__ import annotations

import base64
import datetime
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.servers.ca import CertificateAuthority

DAY = datetime.timedelta(days=1)


class Pki:
    """A client CA of the tests' own in `directory`, its CRL, and the certificates it issues there."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.authority = CertificateAuthority("authportal test client CA")
        #: The CA the portal's client_certificates.ca_file (and the proxy's client CA) holds.
        self.ca_file = self.authority.write_cert(directory / "client-ca.pem")
        #: A CRL of that CA, revoking nobody at first.
        self.crl_file = self.authority.write_crl(directory / "crl.pem")

    def client(self, name: str, common_name: str | None = None, **options) -> tuple[Path, Path]:
        """(certificate, key) files of a client certificate for CN `common_name` (default `name`)."""
        return self.authority.issue(self.directory / f"{name}.pem", self.directory / f"{name}.key",
                                    common_name or name, client=True, **options)

    def expired(self, name: str) -> tuple[Path, Path]:
        return self.client(name, valid=(-2 * DAY, -DAY))

    def stranger(self, name: str) -> tuple[Path, Path]:
        """A client certificate for CN `name` from a CA nobody trusts."""
        other = CertificateAuthority("a CA nobody trusts")
        return other.issue(self.directory / f"{name}.pem", self.directory / f"{name}.key", name, client=True)

    def revoke(self, *cert_files: Path) -> None:
        """Replace crl_file with one that revokes these certificates (as an operator's new CRL does)."""
        self.authority.write_crl(self.crl_file, cert_files)


def escaped(cert_file: Path) -> str:
    """nginx's `$ssl_client_escaped_cert`: the PEM, URL-escaped."""
    return quote(cert_file.read_text(), safe="")


def der_base64(cert_file: Path) -> str:
    """HAProxy's `%[ssl_c_der,base64]`."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def presented(cert_file: Path, verdict: str = "SUCCESS") -> dict[str, str]:
    """The two headers a proxy sends the verify endpoint for a client that presented `cert_file`."""
    return {"X-SSL-Client-Cert": escaped(cert_file), "X-SSL-Client-Verify": verdict}
