"""Who the client is according to its verified TLS certificate (mTLS).

With ``PODIUM_TLS_CLIENT_CA_FILE`` set, gRPC completes a handshake only with clients
whose certificate chains to that CA, and records the certificate's names in the call's
auth context: :func:`peer_identity` reads them. Without mTLS (plaintext, or TLS
without a client CA) there is no verified certificate and it returns None, so a
caller can never mistake an unverified claim for an identity.

Authentication is not decided here: this module only tells who presented which
certificate. :func:`log_client_identity` (called by ``@unary`` / ``@streaming``) logs
it at debug level as ``client identity``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

__all__ = ["PeerIdentity", "identity_from_auth_context", "log_client_identity", "peer_identity"]

log = logging.getLogger("podium.server.api")

_MAX_NAMES = 32
"""Names kept from one certificate (its SANs are bounded by the certificate size)."""


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The verified client certificate's names.

    Attributes:
        common_name: the subject's CN ("" when the certificate has none).
        alternative_names: its subject alternative names (DNS names, URIs such as SPIFFE
            IDs, e-mail addresses, IP addresses), as gRPC reports them.
    """

    common_name: str
    alternative_names: tuple[str, ...] = ()

    @property
    def principal(self) -> str:
        """One name for the client: the first alternative name (what gRPC itself takes
        as the peer identity when there are SANs), else the common name."""
        return self.alternative_names[0] if self.alternative_names else self.common_name


def _texts(values: Iterable[bytes] | None) -> list[str]:
    return [value.decode("utf-8", "replace") for value in (values or ())][:_MAX_NAMES]


def identity_from_auth_context(auth: Mapping[str, Iterable[bytes]]) -> PeerIdentity | None:
    """The identity in a gRPC auth context (``ServicerContext.auth_context()``): None
    unless the transport is TLS and the client presented a certificate gRPC verified."""
    if b"ssl" not in list(auth.get("transport_security_type") or ()):
        return None
    common = _texts(auth.get("x509_common_name"))
    alternatives = tuple(_texts(auth.get("x509_subject_alternative_name")))
    if not common and not alternatives:
        return None  # TLS without a client certificate
    return PeerIdentity(common_name=common[0] if common else "", alternative_names=alternatives)


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> PeerIdentity | None:
    """The verified client certificate identity of the call, or None (see the module).

    Only a certificate that passed verification reaches the auth context: with mTLS
    (``require_client_auth``) the handshake of any other client fails before a call.
    """
    return identity_from_auth_context(context.auth_context())


def log_client_identity(context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    """Log ``client identity`` (debug) with the method and the certificate's names when
    the call came over mTLS; nothing otherwise, and no work unless debug is on."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    identity = peer_identity(context)
    if identity is None:
        return
    log.debug(
        "client identity",
        extra={
            "method": method,
            "common_name": identity.common_name,
            "alternative_names": list(identity.alternative_names),
        },
    )
