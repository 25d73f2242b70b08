"""A2A 0.3 over gRPC (``a2a.v1.A2AService``) behind the ``lf.a2a.v1`` calls of the adapter.

:class:`V03Api` has the methods of the ``lf.a2a.v1`` stub that
:class:`~podium.server.agents.a2a.A2AClient` uses (``SendStreamingMessage``,
``SubscribeToTask``, ``GetTask``, ``CancelTask``, ``ListTasks``), taking and returning
the 1.0 types, so one attempt loop serves both versions. Each request is converted to
its 0.3 message and each reply back to 1.0 with a2a-sdk's compat conversions, the chain
of its own ``CompatGrpcTransport``: ``conversions.to_compat_*`` (1.0 proto -> 0.3
pydantic), ``proto_utils.ToProto`` (-> 0.3 proto), and back ``proto_utils.FromProto``
then ``conversions.to_core_*``.

Differences the caller sees:

- 0.3 has no ``ListTasks``: :meth:`V03Api.ListTasks` answers an empty list (a task
  cancelled before its first event cannot be found by its context);
- a reply that cannot be converted raises :class:`A2AConversionError`;
- gRPC errors pass through unchanged; a 0.3 server names its A2A error in the status
  details (``TaskNotFoundError: ...``) instead of an ``ErrorInfo``
  (:func:`is_v03_a2a_error`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import grpc
from a2a.compat.v0_3 import a2a_v0_3_pb2, a2a_v0_3_pb2_grpc, conversions, proto_utils
from a2a.compat.v0_3 import types as types_v03
from a2a.compat.v0_3.versions import is_legacy_version
from a2a.types import a2a_pb2
from a2a.utils.errors import JSON_RPC_ERROR_CODE_MAP

__all__ = [
    "A2AConversionError",
    "V03Api",
    "V03Call",
    "is_legacy_version",
    "is_v03_a2a_error",
]

_A2A_ERROR_NAMES = frozenset(error.__name__ for error in JSON_RPC_ERROR_CODE_MAP)
# What a reply that does not fit the 0.3 model raises while being converted (pydantic's
# ValidationError is a ValueError).
_CONVERSION_ERRORS = (ValueError, KeyError, TypeError)


class A2AConversionError(Exception):
    """A 0.3 reply could not be converted to its A2A 1.0 form."""


def is_v03_a2a_error(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call is an A2A error of a 0.3 server: details of the form
    ``<A2A error class name>: <message>`` (how a2a-sdk's 0.3 handlers abort)."""
    details = exc.details() or ""
    name, separator, _ = details.partition(": ")
    return bool(separator) and name in _A2A_ERROR_NAMES


def _stream_response(response: a2a_v0_3_pb2.StreamResponse) -> a2a_pb2.StreamResponse:
    try:
        return conversions.to_core_stream_response(
            types_v03.SendStreamingMessageSuccessResponse(
                result=proto_utils.FromProto.stream_response(response)
            )
        )
    except _CONVERSION_ERRORS as exc:
        raise A2AConversionError(f"an A2A 0.3 stream event could not be read: {exc}") from exc


def _task(task: a2a_v0_3_pb2.Task) -> a2a_pb2.Task:
    try:
        return conversions.to_core_task(proto_utils.FromProto.task(task))
    except _CONVERSION_ERRORS as exc:
        raise A2AConversionError(f"an A2A 0.3 task could not be read: {exc}") from exc


class V03Call:
    """A 0.3 stream call whose :meth:`read` returns 1.0 ``StreamResponse`` messages
    (``grpc.aio.EOF`` at the end, gRPC errors unchanged).

    Cancelling a :meth:`read` does not cancel the call (grpc.aio cancels the RPC when a
    read is cancelled): the read goes on in its own task and the next :meth:`read`
    takes its result. So the adapter, cancelled before it learnt the task id, can still
    read the next event for it (0.3 has no ListTasks); :meth:`cancel` ends the call.
    """

    __slots__ = ("_call", "_pending")

    def __init__(self, call: Any) -> None:
        self._call = call
        self._pending: asyncio.Future[Any] | None = None

    async def read(self) -> Any:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._call.read())
            self._pending.add_done_callback(_retrieve)
        message = await asyncio.shield(self._pending)
        self._pending = None
        if not isinstance(message, a2a_v0_3_pb2.StreamResponse):
            return message  # grpc.aio.EOF
        return _stream_response(message)

    def cancel(self) -> bool:
        return cast(bool, self._call.cancel())

    def cancelled(self) -> bool:
        return cast(bool, self._call.cancelled())


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a read nobody awaits any more as seen (no asyncio warning)."""
    if not future.cancelled():
        future.exception()


def _task_name(task_id: str) -> str:
    return f"tasks/{task_id}"


class V03Api:
    """The adapter's ``lf.a2a.v1`` calls, made on ``a2a.v1.A2AService`` (see the module
    docstring). Keyword arguments (``timeout``, ``metadata``) are those of grpc.aio."""

    __slots__ = ("stub",)

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = a2a_v0_3_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]

    def SendStreamingMessage(
        self,
        request: a2a_pb2.SendMessageRequest,
        *,
        timeout: float,
        metadata: Sequence[tuple[str, str]],
    ) -> V03Call:
        params = conversions.to_compat_send_message_request(request, request_id=0).params
        legacy = a2a_v0_3_pb2.SendMessageRequest(
            request=proto_utils.ToProto.message(params.message),
            configuration=proto_utils.ToProto.message_send_configuration(params.configuration),
            metadata=proto_utils.ToProto.metadata(params.metadata),
        )
        return V03Call(
            self.stub.SendStreamingMessage(legacy, timeout=timeout, metadata=tuple(metadata))
        )

    def SubscribeToTask(
        self,
        request: a2a_pb2.SubscribeToTaskRequest,
        *,
        timeout: float,
        metadata: Sequence[tuple[str, str]],
    ) -> V03Call:
        legacy = a2a_v0_3_pb2.TaskSubscriptionRequest(name=_task_name(request.id))
        return V03Call(
            self.stub.TaskSubscription(legacy, timeout=timeout, metadata=tuple(metadata))
        )

    async def GetTask(
        self,
        request: a2a_pb2.GetTaskRequest,
        *,
        timeout: float,  # noqa: ASYNC109
        metadata: Sequence[tuple[str, str]],
    ) -> a2a_pb2.Task:
        legacy = a2a_v0_3_pb2.GetTaskRequest(name=_task_name(request.id))
        return _task(await self.stub.GetTask(legacy, timeout=timeout, metadata=tuple(metadata)))

    async def CancelTask(
        self,
        request: a2a_pb2.CancelTaskRequest,
        *,
        timeout: float,  # noqa: ASYNC109
        metadata: Sequence[tuple[str, str]],
    ) -> a2a_pb2.Task:
        legacy = a2a_v0_3_pb2.CancelTaskRequest(name=_task_name(request.id))
        return _task(await self.stub.CancelTask(legacy, timeout=timeout, metadata=tuple(metadata)))

    async def ListTasks(
        self,
        request: a2a_pb2.ListTasksRequest,
        *,
        timeout: float,  # noqa: ASYNC109
        metadata: Sequence[tuple[str, str]],
    ) -> a2a_pb2.ListTasksResponse:
        """0.3 has no ListTasks: always empty."""
        del request, timeout, metadata
        return a2a_pb2.ListTasksResponse()
