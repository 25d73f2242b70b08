"""gRPC server metrics: a ``grpc.aio.ServerInterceptor`` counting RPCs by status code.

``grpc_server_handled_total{grpc_service, grpc_method, grpc_code}`` and
``grpc_server_handling_seconds{grpc_service, grpc_method}`` (the names of
go-grpc-prometheus). Only methods the server implements are counted: a call to an
unknown method is answered UNIMPLEMENTED by gRPC before any handler exists, and its
client-chosen name must not become a label value.

The status code is the one the handler ended with: OK when it returned, the code given
to ``context.abort`` / ``context.set_code``, CANCELLED when the call was cancelled,
UNKNOWN for an exception that escaped the handler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from podium.server.telemetry.metrics import Metrics

__all__ = ["MetricsInterceptor"]

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_OK = "OK"


def _code_name(context: Any, default: str) -> str:
    """The status code set on ``context`` (abort or set_code), else ``default``."""
    try:
        code = context.code()
    except Exception:  # pragma: no cover - older grpc without ServicerContext.code()
        return default
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:  # an int from the C core
        if status.value[0] == code:
            return status.name
    return default


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times every RPC of the implemented services into ``metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        handled = self._metrics.grpc_server_handled_total
        seconds = self._metrics.grpc_server_handling_seconds.labels(
            grpc_service=service, grpc_method=method
        )

        def record(code: str, started: float) -> None:
            seconds.observe(time.perf_counter() - started)
            handled.labels(grpc_service=service, grpc_method=method, grpc_code=code).inc()

        if handler.response_streaming:
            # The stubs type handlers as synchronous; on an aio server they are async.
            behavior: Any = (
                handler.stream_stream if handler.request_streaming else handler.unary_stream
            )

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                started = time.perf_counter()
                code = _OK
                try:
                    responses = behavior(request, context)
                    if hasattr(responses, "__aiter__"):
                        async for response in responses:
                            yield response
                    else:
                        # A handler writing with ``context.write`` (e.g. Health.Watch) is a
                        # coroutine, not an async generator.
                        await responses
                except (asyncio.CancelledError, GeneratorExit):
                    # A call cancelled while this generator waits at its ``yield`` is
                    # closed (GeneratorExit), not cancelled: the same for the caller.
                    code = "CANCELLED"
                    raise
                except grpc.aio.AbortError:
                    code = _code_name(context, "UNKNOWN")
                    raise
                except Exception:
                    code = "UNKNOWN"
                    raise
                else:
                    code = _code_name(context, _OK)
                finally:
                    record(code, started)

            factory = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return factory(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        unary_behavior: Any = (
            handler.stream_unary if handler.request_streaming else handler.unary_unary
        )

        async def unary(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = _OK
            try:
                response = await unary_behavior(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code_name(context, "UNKNOWN")
                raise
            except Exception:
                code = "UNKNOWN"
                raise
            else:
                code = _code_name(context, _OK)
            finally:
                record(code, started)
            return response

        factory = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return factory(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
