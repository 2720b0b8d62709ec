"""A private CA and the certificates the HA shape needs, made with ``cryptography``:

```
<dir>/                 mode 0700
  ca.pem  ca.key       the CA (ten years); clients are given ca.pem (--tls-ca)
  <name>.pem <name>.key   one leaf per process: nats-1..3, etcd-e1..e3, etcd-client
```

Keys are 0600 from their first byte and every file is written atomically (``write_private``):
no reader sees half a key. Certificates are 0644 — public, and a service in a container under
another uid must read ``ca.pem`` — in a directory that is itself 0700. ``ensure`` makes what is
missing and keeps what is there: a restarted stack presents the same certificates, so agents
that hold ``ca.pem`` keep connecting. A leaf is made again (by the same CA) only when it is
gone, expires within ``RENEW_BEFORE``, was not signed by this CA, or does not name a host it
must.

Keys are ECDSA P-256: nats-server, etcd, gRPC and Python's ``ssl`` all take them, and one is
made in a millisecond (an RSA key takes a hundred).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confbus.cli.security.roster import private_dir, write_private
from confbus.procs.tls import TlsFiles

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest a browser-era server certificate may live; renewed on restart
RENEW_BEFORE = dt.timedelta(days=30)
LOOPBACK = ("127.0.0.1", "localhost")
ORGANIZATION = "confbus"


@dataclass(frozen=True)
class Leaf:
    """One certificate to have: who it is, the names it must carry, what it is for."""

    name: str  # file stem: nats-1, etcd-e2, etcd-client
    hosts: tuple[str, ...] = LOOPBACK  # DNS names and IP addresses (subjectAltName)
    server: bool = True  # serverAuth: it accepts TLS connections
    client: bool = True  # clientAuth: it dials others (routes, etcd peers, the store)
    common_name: str = ""  # the name itself, unless a peer checks for another (etcd's)


def ensure(directory: Path, leaves: Sequence[Leaf]) -> dict[str, TlsFiles]:
    """The CA under ``directory`` and each leaf it signed: kept if good, made if not."""
    private_dir(directory)
    ca_cert, ca_key = _ca(directory)
    out = {}
    for leaf in leaves:
        cert_path, key_path = directory / f"{leaf.name}.pem", directory / f"{leaf.name}.key"
        if not _still_good(cert_path, key_path, leaf, ca_cert):
            cert, key = _issue(leaf, ca_cert, ca_key)
            write_private(key_path, _key_pem(key))
            write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), public=True)
        out[leaf.name] = TlsFiles(directory / CA_CERT, cert_path, key_path)
    return out


def _ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc > _now():
            return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{ORGANIZATION} CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key first: a certificate on disk without its key is made again next time (and
    # every leaf with it, as no longer signed by this CA).
    write_private(key_path, _key_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), public=True)
    return cert, key


def _issue(
    leaf: Leaf, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [
        *([ExtendedKeyUsageOID.SERVER_AUTH] if leaf.server else []),
        *([ExtendedKeyUsageOID.CLIENT_AUTH] if leaf.client else []),
    ]
    now = _now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, leaf.common_name or leaf.name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if leaf.hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in leaf.hosts]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _still_good(cert_path: Path, key_path: Path, leaf: Leaf, ca_cert: x509.Certificate) -> bool:
    if not cert_path.exists() or not key_path.exists():
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.public_key() != key.public_key():
        return False
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in common_names] != [leaf.common_name or leaf.name]:
        return False
    if cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not leaf.hosts
    return {_general_name(h) for h in leaf.hosts} <= set(names)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a leaf signs TLS handshakes (ECDSA: digital signatures only)."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
