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
The server's files are watched: :class:`ReloadingServerCredentials` checks them (one
``stat`` each) when a client connects, and a replaced set is loaded and served to new
connections without a restart; a replaced set that does not check out (a key not yet
matching its new certificate) is logged and the previous one kept. Agent channel files
are read at start.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc

__all__ = [
    "MAX_PEM_BYTES",
    "KeyPair",
    "ReloadingServerCredentials",
    "ServerTls",
    "TlsFileError",
    "channel_credentials",
    "load_ca_bundle",
    "load_key_pair",
]

log = logging.getLogger("podium.server")

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


def channel_credentials(ca: bytes | None, pair: KeyPair | None) -> grpc.ChannelCredentials:
    """TLS credentials of an outbound channel: trust ``ca`` (None: the system's CA
    roots), present ``pair`` as the client certificate when given."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=pair.private_key if pair is not None else None,
        certificate_chain=pair.certificate_chain if pair is not None else None,
    )


ServerTls = tuple[KeyPair, bytes | None]
"""The server's certificate and key, and the client CA bundle (None: no mTLS)."""


def _signature(files: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    out: list[tuple[int, int, int] | None] = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class ReloadingServerCredentials:
    """Server credentials that follow their files: when a client connects, gRPC asks
    :meth:`_fetch` (on one of its own threads) for a new configuration; it returns one
    only when a file changed (size, mtime or inode) and the new set loads. Whether
    client certificates are required is fixed at start.

    Args:
        initial: what the server starts with (already checked).
        load: reads and checks the files again (raises ValueError naming the setting).
        files: the files to watch.
    """

    def __init__(
        self, initial: ServerTls, load: Callable[[], ServerTls], files: Sequence[Path]
    ) -> None:
        self._load = load
        self._files = tuple(files)
        self._lock = threading.Lock()
        self._seen = _signature(self._files)
        self.reloads = 0
        """Times a replaced set of files was loaded."""
        # gRPC documents None as "keep the current configuration"; its stubs omit it.
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(initial),
            fetch,
            require_client_authentication=initial[1] is not None,
        )

    @staticmethod
    def _configuration(tls: ServerTls) -> grpc.ServerCertificateConfiguration:
        pair, client_ca = tls
        return grpc.ssl_server_certificate_configuration(
            [(pair.private_key, pair.certificate_chain)], root_certificates=client_ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                signature = _signature(self._files)
                if signature == self._seen:
                    return None
                self._seen = signature  # a bad set is reported once, not per connection
                try:
                    tls = self._load()
                except ValueError as exc:
                    log.warning(
                        "TLS files changed but cannot be used; serving the previous "
                        "certificate: %s",
                        exc,
                    )
                    return None
                self.reloads += 1
                log.info("TLS files reloaded", extra={"reloads": self.reloads})
                return self._configuration(tls)
        except Exception:  # never fail a handshake for the reloader's sake
            log.exception("TLS reload check failed; serving the previous certificate")
            return None
