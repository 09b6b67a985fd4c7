"""Certificate and CRL files, read one way for check-config and for the running portal.

A leaf module (only `cryptography`), so that the configuration can load the files it names as the verify path
will, and report a wrong path or a file of the wrong kind at its key.
"""
from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def read_certificates(path: Path) -> list[x509.Certificate]:
    """Every PEM certificate in `path`; ValueError when there is none."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        certificates = []
    if not certificates:
        raise ValueError(f"{path} holds no PEM certificate")
    return certificates


def read_crls(path: Path) -> list[x509.CertificateRevocationList]:
    """The CRLs in `path`: PEM blocks (one per CA, concatenated) or one DER CRL; ValueError when none reads."""
    data = path.read_bytes()
    blocks = _PEM_CRL.findall(data)
    try:
        crls = [x509.load_pem_x509_crl(block) for block in blocks] if blocks else [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise ValueError(f"{path} holds no readable CRL (PEM or DER): {exc}") from None
    return crls


def signer(crl: x509.CertificateRevocationList, authorities: list[x509.Certificate]) -> x509.Certificate | None:
    """The CA of `authorities` that signed `crl`, or None."""
    for authority in authorities:
        if authority.subject == crl.issuer and crl.is_signature_valid(authority.public_key()):  # type: ignore[arg-type]
            return authority
    return None
