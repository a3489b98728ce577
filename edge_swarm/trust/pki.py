"""The swarm's own X.509 certificate authority, for TLS between devices and the broker.

How it works
------------
- ``make_ca(swarm)`` makes a self-signed CA certificate (``CN=edge-swarm {swarm} CA``,
  ``basicConstraints CA:TRUE, pathlen:0``) and its private key. Devices trust only this CA
  for the broker connection; no public CA, no internet needed.
- ``issue_server_cert(ca, hosts)`` issues the broker's certificate: every host name or IP
  address a device may dial is a subjectAltName (clients check the name they dialled against
  it, so a certificate for ``gateway.local`` does not serve ``192.168.1.10`` unless both are
  listed). ``issue_client_cert(ca, name)`` issues an optional client certificate (``CN``
  = the node id) for brokers set to ``require_certificate``.
- Keys are ECDSA P-256: supported by Mosquitto's OpenSSL, Python's ``ssl`` and small boards
  alike, and cheap to handshake on a Pi.
- ``write_private(path, data)`` writes a secret (a private key, a password) with mode 0600
  from the start: the file is created owner-only, never chmod-ed after the fact.

Everything is PEM ``bytes`` in and out; only ``write_private``/``write_public`` touch files.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ledger_lite import files

__all__ = [
    "CA_DAYS",
    "CERT_DAYS",
    "CertPair",
    "PkiError",
    "issue_client_cert",
    "issue_server_cert",
    "load_cert",
    "make_ca",
    "write_private",
    "write_public",
]

CA_DAYS = 3650
"""Validity of a swarm CA, in days (about ten years: re-trusting every device is costly)."""

CERT_DAYS = 825
"""Validity of server and client certificates, in days (the longest browsers accept)."""

# Every certificate is valid from 2000-01-01, not from when it was issued: a Raspberry Pi has
# no hardware clock, and on a LAN without internet time it boots with the time it last saved
# (weeks or years behind after a power cut or a fresh image). A TLS check against such a
# clock must not refuse the site's broker; the validity that matters ends at not_valid_after.
_NOT_BEFORE = _dt.datetime(2000, 1, 1, tzinfo=_dt.timezone.utc)


class PkiError(ValueError):
    """A certificate or key given to this module is unusable (misuse, or a corrupt file)."""


class CertPair(NamedTuple):
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def make_ca(swarm: str, days: int = CA_DAYS) -> CertPair:
    """Make a new swarm CA: a self-signed certificate and its private key (PEM bytes).

    Raises PkiError on an empty swarm id or a non-positive ``days``.
    """
    if not isinstance(swarm, str) or not swarm:
        raise PkiError("the swarm id must be a non-empty string")
    if days < 1:
        raise PkiError("days must be at least 1")
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-swarm"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"edge-swarm {swarm} CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def load_cert(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate; raise PkiError if it is not one."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from None


def _load_ca(ca: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = load_cert(ca.cert_pem)
    try:
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an EC key made by make_ca")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise PkiError("the CA key does not belong to the CA certificate")
    return cert, key


def _san(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        if not isinstance(host, str) or not host.strip():
            raise PkiError(f"not a host name or IP address: {host!r}")
        host = host.strip()
        if host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if not names:
        raise PkiError("a server certificate needs at least one host name or IP address")
    return names


def _issue(
    ca: CertPair,
    common_name: str,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None,
    days: int,
) -> CertPair:
    if days < 1:
        raise PkiError("days must be at least 1")
    ca_cert, ca_key = _load_ca(ca)
    key = _new_key()
    now = _now()
    not_after = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_server_cert(ca: CertPair, hosts: Iterable[str], days: int = CERT_DAYS) -> CertPair:
    """Issue the broker's TLS certificate, valid for every name and IP address in ``hosts``.

    ``hosts`` holds DNS names (``gateway.local``) and IP addresses (``192.168.1.10``,
    ``::1``); each becomes a subjectAltName, the first is also the CN. The validity ends no
    later than the CA's. Raises PkiError on an empty list, a bad host, or a CA pair whose
    key does not match its certificate.
    """
    san = _san(hosts)
    first = san[0].value
    return _issue(ca, str(first), ExtendedKeyUsageOID.SERVER_AUTH, san, days)


def issue_client_cert(ca: CertPair, name: str, days: int = CERT_DAYS) -> CertPair:
    """Issue a TLS client certificate with ``CN=name`` (a node id). Raises PkiError."""
    if not isinstance(name, str) or not name:
        raise PkiError("a client certificate needs a non-empty name")
    return _issue(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, None, days)


def write_private(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a secret (private key, password) readable by its owner only (mode 0600).

    The file is created with 0600 (the umask can only remove bits), written to a temporary
    name and renamed over ``path``, so a reader never sees half a key and a file that was
    once world-readable is replaced rather than reused. Returns the path.
    """
    return files.write_private(path, data)


def write_public(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a public file (certificate, configuration) with mode 0644. Returns the path."""
    path = Path(path)
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path
