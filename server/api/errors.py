"""Map engine errors to gRPC status codes with ``google.rpc`` details.

Every servicer method is decorated with :func:`unary` or :func:`streaming`: an
:class:`EngineError` becomes its status code with an ``ErrorInfo`` (stable ``reason``)
and, for invalid arguments, a ``BadRequest`` listing every field violation. Anything
else is logged with its traceback and reported as INTERNAL with a generic message:
clients never see a stack trace. Before the handler runs, every string field of the
request is checked (:func:`~podium.server.engine.requests.check_request`: no NUL
character, bounded length).

The status travels in trailing metadata (``grpc-message`` and
``grpc-status-details-bin``), which gRPC clients cap (8 KiB soft, 16 KiB hard by
default), so what an error echoes is bounded: the message to ``MAX_MESSAGE_BYTES``
bytes, each ErrorInfo metadata value and violation field to ``MAX_ECHO_CHARS``
characters (the metadata to ``MAX_METADATA_BYTES`` in all), each description to
``MAX_DESCRIPTION_CHARS``, and the violations to ``MAX_VIOLATION_BYTES`` serialized, the
last one then saying how many more were found. The whole status stays under 5 KiB on
the wire (percent-encoded message and base64 details).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from podium.server.api.peer_identity import log_client_identity
from podium.server.engine import errors
from podium.server.engine.requests import check_request

log = logging.getLogger(__name__)

ERROR_DOMAIN = "podium.orchestration.v1"

_CODES: Sequence[tuple[type[errors.EngineError], grpc.StatusCode]] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_code(error: errors.EngineError) -> grpc.StatusCode:
    """The gRPC status code of an engine error."""
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.UNKNOWN


MAX_MESSAGE_BYTES = 400
MAX_ECHO_CHARS = 200
MAX_DESCRIPTION_CHARS = 400
MAX_METADATA_BYTES = 600
MAX_VIOLATION_BYTES = 1500


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut_bytes(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes (on a character boundary), with an ellipsis."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode("utf-8", errors="ignore") + "…"


def _violations(
    violations: Sequence[error_details_pb2.BadRequest.FieldViolation],
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The violations to send: each cut, as many as fit in MAX_VIOLATION_BYTES, then one
    saying how many more were found."""
    kept: list[error_details_pb2.BadRequest.FieldViolation] = []
    size = 0
    for index, violation in enumerate(violations):
        short = error_details_pb2.BadRequest.FieldViolation(
            field=_cut(violation.field, MAX_ECHO_CHARS),
            description=_cut(violation.description, MAX_DESCRIPTION_CHARS),
            reason=_cut(violation.reason, MAX_ECHO_CHARS),
        )
        size += short.ByteSize() + 3
        if size > MAX_VIOLATION_BYTES:
            rest = len(violations) - index
            kept.append(
                error_details_pb2.BadRequest.FieldViolation(
                    field=short.field,
                    description=f"and {rest} more problem(s) not shown",
                    reason="MORE_VIOLATIONS",
                )
            )
            break
        kept.append(short)
    return kept


def to_status(error: errors.EngineError) -> status_pb2.Status:
    """A ``google.rpc.Status`` carrying ErrorInfo and, when present, BadRequest, every
    echoed value bounded (see the module docstring)."""
    code = status_code(error)
    status = status_pb2.Status(
        code=code.value[0], message=_cut_bytes(error.message, MAX_MESSAGE_BYTES)
    )
    metadata: dict[str, str] = {}
    size = 0
    for key, value in error.metadata.items():
        short_key, short_value = _cut(key, MAX_ECHO_CHARS // 4), _cut(value, MAX_ECHO_CHARS)
        size += len(short_key.encode()) + len(short_value.encode()) + 4
        if size > MAX_METADATA_BYTES:
            break
        metadata[short_key] = short_value
    info = error_details_pb2.ErrorInfo(
        reason=_cut(error.reason, MAX_ECHO_CHARS), domain=ERROR_DOMAIN, metadata=metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status.details.append(detail)
    if isinstance(error, errors.InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest(field_violations=_violations(error.violations))
        detail = any_pb2.Any()
        detail.Pack(bad)
        status.details.append(detail)
    if isinstance(error, errors.ResourceExhausted) and error.quota_violations:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=_cut(v.subject, MAX_ECHO_CHARS),
                    description=_cut(v.description, MAX_DESCRIPTION_CHARS),
                )
                for v in error.quota_violations[:8]
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(quota)
        status.details.append(detail)
    if isinstance(error, errors.ResourceExhausted) and error.retry_after_seconds is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        detail = any_pb2.Any()
        detail.Pack(retry)
        status.details.append(detail)
    return status


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: errors.EngineError) -> NoReturn:
    """Abort the RPC with ``error`` as a rich status."""
    status = rpc_status.to_status(to_status(error))
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable")  # context.abort always raises


async def abort_code(
    context: grpc.aio.ServicerContext[Any, Any], code: int, message: str, reason: str
) -> NoReturn:
    """Abort with a ``google.rpc.Code`` value and an ErrorInfo reason."""
    status = status_pb2.Status(code=code, message=message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    status.details.append(detail)
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, rich.trailing_metadata)
    raise AssertionError("unreachable")


async def _report(
    context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception
) -> NoReturn:
    if isinstance(exc, errors.EngineError):
        await abort(context, exc)
    log.error("unexpected error in %s", method, exc_info=exc)
    await abort_code(
        context, code_pb2.INTERNAL, f"{method} failed unexpectedly; see the server log", "INTERNAL"
    )


_Servicer = TypeVar("_Servicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Context = grpc.aio.ServicerContext[Any, Any]


def unary(
    fn: Callable[[_Servicer, _Request, _Context], Awaitable[_Response]],
) -> Callable[[_Servicer, _Request, _Context], Awaitable[_Response]]:
    """Decorate a unary servicer method so that its errors become rich statuses."""

    @functools.wraps(fn)
    async def wrapper(self: _Servicer, request: _Request, context: _Context) -> _Response:
        try:
            check_request(request)  # type: ignore[arg-type]
            log_client_identity(context, fn.__name__)
            return await fn(self, request, context)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            await _report(context, fn.__name__, exc)

    return wrapper


def streaming(
    fn: Callable[[_Servicer, _Request, _Context], AsyncIterator[_Response]],
) -> Callable[[_Servicer, _Request, _Context], AsyncIterator[_Response]]:
    """Decorate a server-streaming servicer method (an async generator) likewise."""

    @functools.wraps(fn)
    async def wrapper(
        self: _Servicer, request: _Request, context: _Context
    ) -> AsyncIterator[_Response]:
        try:
            check_request(request)  # type: ignore[arg-type]
            log_client_identity(context, fn.__name__)
            async for item in fn(self, request, context):
                yield item
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            await _report(context, fn.__name__, exc)

    return wrapper
