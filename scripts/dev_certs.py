"""Make development TLS certificates: a CA, a server certificate and client certificates.

    .venv/bin/python scripts/dev_certs.py certs/                  # CA + server (localhost)
    .venv/bin/python scripts/dev_certs.py certs/ --client alice   # + certs/alice.pem/.key
    .venv/bin/python scripts/dev_certs.py certs/ --name agents.internal --ip 10.0.0.5

Writes into the directory (created if need be; an existing CA there is reused, so
later runs add certificates that the same CA signed):

- ``ca.pem`` / ``ca.key``: a self-signed CA (``PODIUM_TLS_CLIENT_CA_FILE``, the
  clients' ``--tls-ca``, ``PODIUM_AGENT_TLS_CA_FILE``);
- ``server.pem`` / ``server.key``: a server certificate for ``localhost``,
  ``127.0.0.1`` and ``::1`` plus every ``--name`` and ``--ip`` (``PODIUM_TLS_CERT_FILE``
  and ``PODIUM_TLS_KEY_FILE``, or an agent's ``--tls-cert``);
- ``NAME.pem`` / ``NAME.key`` for every ``--client NAME``: a client certificate whose
  common name is NAME (``--tls-cert`` / ``--tls-key`` of the clients).

Keys are ECDSA P-256, unencrypted, mode 0600. For development and tests only: a
production deployment takes its certificates from its own CA or ACME. Tests import
:func:`make_ca`, :func:`issue` and :func:`write` (``cryptography`` is in the dev extra).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "issue", "load_ca", "make_ca", "write"]

DEFAULT_NAMES = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in PEM."""

    certificate: bytes
    key: bytes = field(repr=False)

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate)

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def make_ca(common_name: str = "Podium development CA", *, days: int = 365) -> Issued:
    """A self-signed CA certificate (may sign end-entity certificates only)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue(
    ca: Issued,
    common_name: str,
    *,
    names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    server: bool = False,
    client: bool = False,
    days: int = 90,
) -> Issued:
    """A certificate signed by ``ca`` for ``common_name`` with DNS ``names`` and IP
    ``ips`` as subject alternative names, usable as a TLS server and/or client."""
    key = _key()
    not_before, not_after = _validity(days)
    usages = [
        *([ExtendedKeyUsageOID.SERVER_AUTH] if server else []),
        *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []),
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    alternatives: list[x509.GeneralName] = [
        *(x509.DNSName(name) for name in names),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
    ]
    if alternatives:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    cert = builder.sign(ca.private_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def write(directory: Path, stem: str, issued: Issued) -> tuple[Path, Path]:
    """Write ``STEM.pem`` and ``STEM.key`` (mode 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(issued.certificate)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(issued.key)
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def load_ca(directory: Path) -> Issued | None:
    """The CA written earlier into ``directory``, or None."""
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if not (cert_path.exists() and key_path.exists()):
        return None
    return Issued(cert_path.read_bytes(), key_path.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the PEM files")
    parser.add_argument(
        "--name", action="append", default=[], help="another DNS name of the server"
    )
    parser.add_argument(
        "--ip", action="append", default=[], help="another IP address of the server"
    )
    parser.add_argument(
        "--client", action="append", default=[], help="make NAME.pem/NAME.key with CN NAME"
    )
    parser.add_argument("--days", type=int, default=90, help="validity of the leaf certificates")
    args = parser.parse_args(argv)
    try:
        ips = tuple(str(ipaddress.ip_address(ip)) for ip in (*DEFAULT_IPS, *args.ip))
    except ValueError as exc:
        parser.error(str(exc))
    ca = load_ca(args.directory)
    if ca is None:
        ca = make_ca()
        write(args.directory, "ca", ca)
        print(f"wrote {args.directory / 'ca.pem'} (new CA)")
    names = (*DEFAULT_NAMES, *args.name)
    server = issue(ca, names[0], names=names, ips=ips, server=True, days=args.days)
    write(args.directory, "server", server)
    print(f"wrote {args.directory / 'server.pem'} for {', '.join((*names, *ips))}")
    for client in args.client:
        if not client or "/" in client or client.startswith("."):
            parser.error(f"--client {client!r}: expected a plain name")
        write(args.directory, client, issue(ca, client, client=True, days=args.days))
        print(f"wrote {args.directory / (client + '.pem')} (client, CN={client})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
