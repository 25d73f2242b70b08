"""TLS for the client side: the credentials of a channel to a Podium server over TLS
(optionally presenting a client certificate, for mTLS), and the credentials of an agent
server that Podium reaches over TLS (endpoints ``grpcs://HOST:PORT``).

    from podium.client import PodiumClient, tls_credentials

    credentials = tls_credentials(ca_file="certs/ca.pem", cert_file="me.pem", key_file="me.key")
    async with PodiumClient("podium.example.com:50051", credentials=credentials) as podium:
        ...

Files are PEM. Errors (:class:`TlsConfigError`) name the file, never its contents.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

__all__ = ["TlsConfigError", "agent_server_credentials", "tls_credentials"]

_MAX_PEM_BYTES = 1024 * 1024

PathLike = str | os.PathLike[str]


class TlsConfigError(ValueError):
    """A TLS file is missing, unreadable or not PEM; the message says which."""


def _read(what: str, path: PathLike) -> bytes:
    file = Path(path).expanduser()
    try:
        with file.open("rb") as handle:
            data = handle.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise TlsConfigError(f"{what} {file}: {exc.strerror or exc}") from None
    if len(data) > _MAX_PEM_BYTES or b"-----BEGIN " not in data:
        raise TlsConfigError(f"{what} {file}: not a PEM file")
    return data


def _pair(
    cert_file: PathLike | None, key_file: PathLike | None
) -> tuple[bytes | None, bytes | None]:
    if (cert_file is None) != (key_file is None):
        raise TlsConfigError("a client certificate needs both its certificate and its key file")
    if cert_file is None or key_file is None:
        return None, None
    return _read("certificate", cert_file), _read("key", key_file)


def tls_credentials(
    ca_file: PathLike | None = None,
    cert_file: PathLike | None = None,
    key_file: PathLike | None = None,
) -> grpc.ChannelCredentials:
    """Credentials of a TLS channel to Podium (``PodiumClient(credentials=...)``).

    Args:
        ca_file: PEM CA bundle the server's certificate must chain to; None trusts the
            system's CA roots.
        cert_file: PEM client certificate presented to the server (mTLS), with
            ``key_file`` (its unencrypted PEM key).

    Raises:
        TlsConfigError: a file is missing, unreadable or not PEM, or half a pair.
    """
    ca = None if ca_file is None else _read("CA file", ca_file)
    cert, key = _pair(cert_file, key_file)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def agent_server_credentials(
    cert_file: PathLike, key_file: PathLike, client_ca_file: PathLike | None = None
) -> grpc.ServerCredentials:
    """Credentials of an agent server over TLS (``Agent.serve(credentials=...)``).

    Args:
        cert_file: PEM certificate chain naming the host Podium calls (the host of the
            agent's ``grpcs://HOST:PORT`` endpoint).
        key_file: its unencrypted PEM key.
        client_ca_file: with it, mTLS: only clients (Podium) presenting a certificate
            chaining to this CA bundle complete the handshake.

    Raises:
        TlsConfigError: a file is missing, unreadable or not PEM.
    """
    cert, key = _pair(cert_file, key_file)
    assert cert is not None and key is not None
    client_ca = None if client_ca_file is None else _read("client CA file", client_ca_file)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
