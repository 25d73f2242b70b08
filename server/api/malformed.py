"""Malformed request bytes answered INVALID_ARGUMENT, not UNKNOWN with a traceback.

``grpc.aio`` deserializes a request with the handler's ``request_deserializer`` before
the servicer method runs; a ``DecodeError`` there (invalid UTF-8 in a string field, a
truncated body, a wrong wire type) escapes every ``try`` of the servicer and of the
interceptors, and gRPC answers ``UNKNOWN "Unexpected <class ...DecodeError>"`` and logs
a traceback. :class:`MalformedRequestInterceptor` gives every handler (of every
service: orchestration, health, reflection) a deserializer that turns the error into a
:class:`MalformedRequest` value, and a behavior that answers such a value with
INVALID_ARGUMENT (reason ``MALFORMED_REQUEST``) before the servicer sees it. The
generated code is untouched.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.rpc import code_pb2

from podium.server.api.errors import abort_code

__all__ = ["MalformedRequest", "MalformedRequestInterceptor"]

log = logging.getLogger(__name__)

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """A request whose bytes could not be parsed; ``error`` says why."""

    error: str


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or whatever a parser raises on bad bytes
            return MalformedRequest(f"{type(exc).__name__}: {exc}"[:200])

    return deserialize


async def _refuse(context: Any, method: str, request: MalformedRequest) -> None:
    log.info("malformed request refused", extra={"method": method, "error": request.error})
    await abort_code(
        context,
        code_pb2.INVALID_ARGUMENT,
        "the request is not a valid protobuf message of this method's type (invalid UTF-8 "
        f"in a string field, a truncated body or a wrong wire type): {request.error}",
        "MALFORMED_REQUEST",
    )


async def _checked(requests: AsyncIterator[Any], context: Any, method: str) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, MalformedRequest):
            await _refuse(context, method, request)
        yield request


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses undecodable requests with INVALID_ARGUMENT (see the module docstring).
    Put it last in the server's interceptors, so that the others see the refusal."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        deserializer = _safe(handler.request_deserializer)
        serializer = handler.response_serializer
        # The stubs type handlers as synchronous; on an aio server they are async.
        if handler.request_streaming:
            streamed: Any = handler.stream_stream or handler.stream_unary

            def behavior(requests: Any, context: Any) -> Any:
                return streamed(_checked(requests, context, method), context)

            factory: Any = (
                grpc.stream_stream_rpc_method_handler
                if handler.response_streaming
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(  # type: ignore[no-any-return]
                behavior, request_deserializer=deserializer, response_serializer=serializer
            )
        if handler.response_streaming:
            stream: Any = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, MalformedRequest):
                    await _refuse(context, method, request)
                responses = stream(request, context)
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        yield response
                else:
                    # A handler writing with ``context.write`` (Health.Watch) is a coroutine.
                    await responses

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=deserializer, response_serializer=serializer
            )
        unary: Any = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            if isinstance(request, MalformedRequest):
                await _refuse(context, method, request)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=deserializer, response_serializer=serializer
        )
