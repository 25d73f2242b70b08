"""TLS material of the server: its certificate and key, the CA that client certificates
must chain to (mTLS), and what Podium presents to and trusts of agents.

A neutral module below every layer but :mod:`podium.server.addresses` (it imports
nothing of Podium): the configuration checks the files with it at start, so a missing,
unreadable or mismatched file stops ``podium serve`` before it binds a port or writes
to the database; :mod:`podium.server.app` builds the gRPC server credentials and
:mod:`podium.server.agents.channels` the agent channel credentials from what it loads.

The files are checked with the standard library's :mod:`ssl` (the same OpenSSL gRPC's
Python wheels do not share, but the same PEM rules): a certificate chain must parse, the
key must parse without a passphrase and belong to the certificate, a CA bundle must hold
at least one certificate. Errors name the setting and the file, never its contents.
The files are read once at start: replacing them takes a restart (see operations.md).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

__all__ = [
    "MAX_PEM_BYTES",
    "KeyPair",
    "TlsFileError",
    "channel_credentials",
    "load_ca_bundle",
    "load_key_pair",
    "server_credentials",
]

MAX_PEM_BYTES = 1024 * 1024
"""Largest PEM file read (a certificate chain or CA bundle is a few KiB; the system's
whole CA bundle is about 200 KiB)."""


class TlsFileError(ValueError):
    """A TLS file cannot be used; the message names the setting and the file."""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate chain and its private key (never printed)."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)


def _read(setting: str, path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise TlsFileError(f"{setting}: {path} does not exist") from None
    except IsADirectoryError:
        raise TlsFileError(f"{setting}: {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise TlsFileError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise TlsFileError(f"{setting}: {path} is larger than {MAX_PEM_BYTES} bytes")
    if b"-----BEGIN " not in data:
        raise TlsFileError(f"{setting}: {path} is not a PEM file (no -----BEGIN line)")
    return data


def _no_passphrase() -> bytes:
    # Called by OpenSSL only for an encrypted key: gRPC cannot use one.
    raise TlsFileError("encrypted")


def load_key_pair(
    cert_file: Path,
    key_file: Path,
    *,
    cert_setting: str = "PODIUM_TLS_CERT_FILE",
    key_setting: str = "PODIUM_TLS_KEY_FILE",
) -> KeyPair:
    """Read and check a certificate chain and its key.

    Raises:
        TlsFileError: a file is missing, unreadable, too large or not PEM; the chain has
            no certificate; the key is encrypted, malformed or not the certificate's.
    """
    chain = _read(cert_setting, cert_file)
    key = _read(key_setting, key_file)
    if b"-----BEGIN CERTIFICATE-----" not in chain:
        raise TlsFileError(f"{cert_setting}: {cert_file} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in key:
        raise TlsFileError(f"{key_setting}: {key_file} holds no PEM private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except TlsFileError:
        raise TlsFileError(
            f"{key_setting}: {key_file} is an encrypted key; gRPC needs it unencrypted "
            "(e.g. openssl pkey -in KEY -out KEY.plain), readable by the server only"
        ) from None
    except ssl.SSLError as exc:
        problem = _pair_problem(exc, cert_file, key_file, cert_setting, key_setting)
        raise TlsFileError(problem) from None
    except OSError as exc:  # replaced between the read and the check
        raise TlsFileError(f"{cert_setting}: cannot read {cert_file}: {exc}") from None
    return KeyPair(certificate_chain=chain, private_key=key)


def _pair_problem(
    exc: ssl.SSLError, cert_file: Path, key_file: Path, cert_setting: str, key_setting: str
) -> str:
    if "KEY_VALUES_MISMATCH" in (exc.reason or "").upper():
        return (
            f"{key_setting}: the key in {key_file} does not belong to the certificate in "
            f"{cert_file} ({cert_setting})"
        )
    return (
        f"{cert_setting}/{key_setting}: OpenSSL cannot load {cert_file} with {key_file} "
        f"({exc.reason or exc.library or 'malformed PEM'})"
    )


def load_ca_bundle(setting: str, path: Path) -> bytes:
    """Read and check a PEM bundle of CA certificates.

    Raises:
        TlsFileError: missing, unreadable, too large, not PEM, or without a certificate.
    """
    data = _read(setting, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFileError(f"{setting}: {path} holds no usable CA certificate ({exc})") from None
    if not context.get_ca_certs():
        raise TlsFileError(f"{setting}: {path} holds no CA certificate")
    return data


def server_credentials(pair: KeyPair, client_ca: bytes | None) -> grpc.ServerCredentials:
    """The gRPC server's TLS credentials; with ``client_ca``, mTLS: every client must
    present a certificate that chains to it, or the handshake fails."""
    return grpc.ssl_server_credentials(
        [(pair.private_key, pair.certificate_chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(ca: bytes | None, pair: KeyPair | None) -> grpc.ChannelCredentials:
    """TLS credentials of an outbound channel: trust ``ca`` (None: the system's CA
    roots), present ``pair`` as the client certificate when given."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=pair.private_key if pair is not None else None,
        certificate_chain=pair.certificate_chain if pair is not None else None,
    )
