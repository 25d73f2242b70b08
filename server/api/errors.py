"""Map engine errors to gRPC status codes with ``google.rpc`` details.

Every servicer method is decorated with :func:`unary` or :func:`streaming`: an
:class:`EngineError` becomes its status code with an ``ErrorInfo`` (stable ``reason``)
and, for invalid arguments, a ``BadRequest`` listing every field violation. Anything
else is logged with its traceback and reported as INTERNAL with a generic message:
clients never see a stack trace.
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

from podium.server.engine import errors

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


def to_status(error: errors.EngineError) -> status_pb2.Status:
    """A ``google.rpc.Status`` carrying ErrorInfo and, when present, BadRequest."""
    code = status_code(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status.details.append(detail)
    if isinstance(error, errors.InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest(field_violations=list(error.violations))
        detail = any_pb2.Any()
        detail.Pack(bad)
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
            async for item in fn(self, request, context):
                yield item
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            await _report(context, fn.__name__, exc)

    return wrapper
