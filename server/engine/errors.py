"""Domain errors raised by the engine.

The API layer maps each class to a gRPC status code with ``google.rpc`` details; the
engine itself knows nothing about gRPC. ``reason`` is a stable UPPER_SNAKE code clients
can branch on (it becomes ``google.rpc.ErrorInfo.reason``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from google.rpc.error_details_pb2 import BadRequest, QuotaFailure

FieldViolation = BadRequest.FieldViolation
"""One problem with one request field: ``field`` is a proto field path such as
``steps[2].depends_on[0]``, ``description`` says what is wrong."""


@dataclass
class EngineError(Exception):
    """Base class of errors the API reports to clients."""

    message: str
    reason: str = "ERROR"
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


@dataclass
class InvalidArgument(EngineError):
    """The request is malformed; ``violations`` lists every problem found."""

    violations: Sequence[BadRequest.FieldViolation] = ()
    reason: str = "INVALID_ARGUMENT"


@dataclass
class NotFound(EngineError):
    """The named resource does not exist in the caller's organization."""

    reason: str = "NOT_FOUND"


@dataclass
class AlreadyExists(EngineError):
    """The resource exists already."""

    reason: str = "ALREADY_EXISTS"


@dataclass
class FailedPrecondition(EngineError):
    """The resource is not in a state that allows the operation."""

    reason: str = "FAILED_PRECONDITION"


@dataclass
class PermissionDenied(EngineError):
    """The caller may not do this (e.g. not one of an approval's approvers)."""

    reason: str = "PERMISSION_DENIED"


@dataclass
class ResourceExhausted(EngineError):
    """A limit was reached; ``quota_violations`` (sent as ``google.rpc.QuotaFailure``)
    names each quota reached, ``retry_after_seconds`` (``google.rpc.RetryInfo``) when
    the limit frees."""

    reason: str = "RESOURCE_EXHAUSTED"
    quota_violations: Sequence[QuotaFailure.Violation] = ()
    retry_after_seconds: float | None = None
    """When trying again may succeed (sent as ``google.rpc.RetryInfo``)."""


@dataclass
class Unavailable(EngineError):
    """A dependency (the database) is unreachable; retrying later may succeed."""

    reason: str = "UNAVAILABLE"
