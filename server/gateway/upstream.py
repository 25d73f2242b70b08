"""The gateway's side of gRPC: one channel to the server's own listen address.

:data:`METHODS` lists the unary RPCs of ``OrchestrationService`` from its descriptor
(so a new RPC is reachable over HTTP without a change here). :class:`Upstream` calls
them, and WatchRun / WatchRuns, with the caller's ``authorization`` metadata; a failed
call becomes an :class:`UpstreamError` carrying the server's ``google.rpc.Status``
(code, message and details exactly as the gRPC client would see them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from podium.orchestration.v1 import orchestration_service_pb2 as pb

__all__ = ["METHODS", "Method", "Upstream", "UpstreamError", "loopback_target", "status_of"]

SERVICE = pb.DESCRIPTOR.services_by_name["OrchestrationService"]

UNARY_TIMEOUT_SECONDS = 60.0
"""Deadline of a forwarded unary call (no RPC of the contract takes this long)."""

Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Method:
    """One unary RPC: its name, gRPC path and message classes."""

    name: str
    path: str
    request: type[Message]
    response: type[Message]


def _unary_methods() -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for method in SERVICE.methods:
        if method.client_streaming or method.server_streaming:
            continue
        methods[method.name] = Method(
            name=method.name,
            path=f"/{SERVICE.full_name}/{method.name}",
            request=message_factory.GetMessageClass(method.input_type),
            response=message_factory.GetMessageClass(method.output_type),
        )
    return methods


METHODS: dict[str, Method] = _unary_methods()
"""Every unary RPC of OrchestrationService by name (``StartRun``, ``GetRun``, ...)."""


class UpstreamError(Exception):
    """A gRPC call failed; ``status`` is the ``google.rpc.Status`` the server sent."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The rich status of a failed call: ``grpc-status-details-bin`` when the server
    sent one (the API always does), else the bare code and message."""
    trailing: Any = error.trailing_metadata() or ()
    for key, value in trailing:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                break
            if status.code == error.code().value[0]:
                return status
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def loopback_target(listen_address: str) -> str:
    """Where to reach a server listening on ``listen_address`` from this process: a
    wildcard host (``0.0.0.0``, ``[::]``) becomes the loopback address."""
    host, _, port = listen_address.rpartition(":")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


class Upstream:
    """A gRPC channel to the server itself."""

    def __init__(self, target: str, *, max_message_bytes: int) -> None:
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self._unary: dict[str, Any] = {
            name: self._channel.unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
            for name, method in METHODS.items()
        }
        self._watch_run = self._channel.unary_stream(
            f"/{SERVICE.full_name}/WatchRun",
            request_serializer=pb.WatchRunRequest.SerializeToString,
            response_deserializer=pb.WatchRunResponse.FromString,
        )
        self._watch_runs = self._channel.unary_stream(
            f"/{SERVICE.full_name}/WatchRuns",
            request_serializer=pb.WatchRunsRequest.SerializeToString,
            response_deserializer=pb.WatchRunsResponse.FromString,
        )

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel itself (the A2A JSON-RPC binding calls A2AService on it)."""
        return self._channel

    async def call(self, name: str, request: Message, metadata: Metadata) -> Message:
        """Call the unary RPC ``name``; raises :class:`UpstreamError` with its status."""
        try:
            response: Message = await self._unary[name](
                request, metadata=tuple(metadata), timeout=UNARY_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            raise UpstreamError(status_of(exc)) from None
        return response

    async def watch_run(
        self, request: pb.WatchRunRequest, metadata: Metadata
    ) -> AsyncIterator[pb.WatchRunResponse]:
        """WatchRun's responses; raises :class:`UpstreamError` when the stream fails."""
        call = self._watch_run(request, metadata=tuple(metadata))
        async for response in self._stream(call):
            yield response

    async def watch_runs(
        self, request: pb.WatchRunsRequest, metadata: Metadata
    ) -> AsyncIterator[pb.WatchRunsResponse]:
        """WatchRuns' responses; raises :class:`UpstreamError` when the stream fails."""
        call = self._watch_runs(request, metadata=tuple(metadata))
        async for response in self._stream(call):
            yield response

    @staticmethod
    async def _stream(call: Any) -> AsyncIterator[Any]:
        try:
            while True:
                response = await call.read()
                if not isinstance(response, Message):
                    return  # grpc.aio.EOF
                yield response
        except grpc.aio.AioRpcError as exc:
            raise UpstreamError(status_of(exc)) from None
        finally:
            # The HTTP client went away (or the stream ended): end the gRPC call too.
            call.cancel()

    async def close(self) -> None:
        """Close the channel (calls in flight are cancelled)."""
        await self._channel.close(None)
