"""Typed errors of the Podium client, mapped from gRPC status codes and details.

Every failed call of :class:`~podium.client.PodiumClient` raises a :class:`PodiumError`
subclass chosen by the status code. The ``google.rpc`` details the server packs are
unpacked onto the exception: ``ErrorInfo`` as :attr:`PodiumError.reason` (a stable
UPPER_SNAKE code such as ``RUN_NOT_FOUND``) and :attr:`PodiumError.metadata`, and
``BadRequest`` as :attr:`PodiumError.field_violations`.

=========================  ==================================
status code                exception
=========================  ==================================
INVALID_ARGUMENT           :class:`ValidationError`
NOT_FOUND                  :class:`NotFoundError`
ALREADY_EXISTS             :class:`AlreadyExistsError`
FAILED_PRECONDITION        :class:`FailedPreconditionError`
RESOURCE_EXHAUSTED         :class:`ResourceExhaustedError`
PERMISSION_DENIED          :class:`PermissionDeniedError`
UNAUTHENTICATED            :class:`UnauthenticatedError`
UNIMPLEMENTED              :class:`UnimplementedError`
UNAVAILABLE                :class:`UnavailableError`
DEADLINE_EXCEEDED          :class:`DeadlineExceededError`
anything else              :class:`PodiumError`
=========================  ==================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "NotFoundError",
    "PermissionDeniedError",
    "PodiumError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "ValidationError",
    "from_rpc_error",
    "from_status",
]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One problem of a request, from a ``google.rpc.BadRequest`` detail.

    Attributes:
        field: Path of the field in the request, e.g. ``definition.steps[2].depends_on[0]``.
        description: What is wrong with it.
    """

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


class PodiumError(Exception):
    """A call to Podium failed.

    Attributes:
        code: The gRPC status code.
        message: The status message.
        reason: ``ErrorInfo.reason``, a stable UPPER_SNAKE code (empty when absent).
        domain: ``ErrorInfo.domain`` (``podium.orchestration.v1`` for Podium's errors).
        metadata: ``ErrorInfo.metadata``.
        field_violations: Every ``BadRequest`` field violation, in the server's order.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))
        self.field_violations = field_violations
        super().__init__(self.describe())

    def describe(self) -> str:
        """The error on several lines: ``CODE: message``, then one line per violation."""
        head = f"{self.code.name}: {self.message}"
        if self.reason:
            head += f" [{self.reason}]"
        return "\n".join([head, *(f"  - {violation}" for violation in self.field_violations)])


class ValidationError(PodiumError):
    """INVALID_ARGUMENT: the request (often a definition) was refused; see
    :attr:`field_violations` for every problem."""


class NotFoundError(PodiumError):
    """NOT_FOUND: the named resource does not exist in the caller's organization."""


class AlreadyExistsError(PodiumError):
    """ALREADY_EXISTS: the resource exists already."""


class FailedPreconditionError(PodiumError):
    """FAILED_PRECONDITION: the resource is not in a state that allows the call
    (e.g. resuming a running run, deciding an approval twice)."""


class ResourceExhaustedError(PodiumError):
    """RESOURCE_EXHAUSTED: a quota or budget was reached."""


class PermissionDeniedError(PodiumError):
    """PERMISSION_DENIED: the caller may not do this."""


class UnauthenticatedError(PodiumError):
    """UNAUTHENTICATED: the call carried no valid credentials."""


class UnimplementedError(PodiumError):
    """UNIMPLEMENTED: the server does not implement this RPC (an older Podium, or a part
    of the contract that has not landed yet)."""


class UnavailableError(PodiumError):
    """UNAVAILABLE: the server cannot be reached, is starting, or is shutting down.
    Idempotent calls were already retried with backoff before this is raised."""


class DeadlineExceededError(PodiumError):
    """DEADLINE_EXCEEDED: the call did not finish within its deadline."""


_CLASSES: Mapping[grpc.StatusCode, type[PodiumError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def from_status(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None
) -> PodiumError:
    """The :class:`PodiumError` of a status code, message and optional rich status."""
    info = error_details_pb2.ErrorInfo()
    violations: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        if detail.TypeName() == error_details_pb2.ErrorInfo.DESCRIPTOR.full_name:
            detail.Unpack(info)
        elif detail.TypeName() == error_details_pb2.BadRequest.DESCRIPTOR.full_name:
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    cls = _CLASSES.get(code, PodiumError)
    return cls(
        code,
        message,
        reason=info.reason,
        domain=info.domain,
        metadata=dict(info.metadata),
        field_violations=tuple(violations),
    )


def from_rpc_error(error: grpc.RpcError) -> PodiumError:
    """The :class:`PodiumError` of a failed gRPC call (sync or asyncio)."""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return PodiumError(grpc.StatusCode.UNKNOWN, str(error))
    code = error.code()
    message = error.details() or ""
    try:
        # Reads code(), details() and trailing_metadata(), which both call kinds have.
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # a status-details trailer that contradicts the status
        status = None
    return from_status(code, message, status)
