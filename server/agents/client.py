"""The gRPC client Podium uses to call agents (``podium.agent.v1.AgentService``).

:class:`AgentClient` calls each endpoint over one reused ``grpc.aio`` channel of an
:class:`~podium.server.agents.channels.AgentChannels` pool (its own, or the one it shares
with the A2A client). :meth:`AgentClient.execute` runs one step attempt: it relays the
agent's progress, output chunks and artifacts to optional callbacks, in stream order,
and returns exactly one :data:`TaskOutcome`:

- :class:`TaskSucceeded` with the output as a plain dict (integral numbers as ``int``);
- :class:`TaskFailed` with a stable ``code``, a ``message`` and ``retryable``: the
  agent's own error (``origin="agent"``), a gRPC status (``origin="transport"``:
  ``DEADLINE_EXCEEDED``, ``AGENT_UNAVAILABLE``, ``CANCELLED``, ``AGENT_MESSAGE_TOO_LARGE``,
  ``AGENT_<STATUS>``), or a broken stream (``origin="protocol"``,
  ``AGENT_PROTOCOL_ERROR``).

Cancelling the task awaiting :meth:`AgentClient.execute` cancels the gRPC call, so the
agent sees CANCELLED. This module is on the engine's hot path: it does no JSON
re-encoding and no per-call allocation beyond the call itself.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from podium.agent.v1 import agent_pb2, agent_pb2_grpc
from podium.server.agents.channels import DEFAULT_MAX_MESSAGE_BYTES, AgentChannels, PooledClient

__all__ = [
    "AGENT_ERROR",
    "AGENT_MESSAGE_TOO_LARGE",
    "AGENT_PROTOCOL_ERROR",
    "AGENT_UNAVAILABLE",
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "AgentCallError",
    "AgentClient",
    "ArtifactCallback",
    "ChunkCallback",
    "ProgressCallback",
    "TaskFailed",
    "TaskOutcome",
    "TaskSucceeded",
    "TaskUsage",
    "channel_closed",
    "channel_closed_failure",
    "dict_from_struct",
    "protocol_failure",
    "struct_from_dict",
    "transport_failure",
]

DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
"""The call outlived its deadline (the step's timeout)."""
AGENT_UNAVAILABLE = "AGENT_UNAVAILABLE"
"""The agent cannot be reached (refused, unresolvable, connection lost)."""
CANCELLED = "CANCELLED"
"""The agent side cancelled the call (e.g. the agent is shutting down)."""
AGENT_PROTOCOL_ERROR = "AGENT_PROTOCOL_ERROR"
"""The stream broke the contract: no result, a second result, messages after it."""
AGENT_MESSAGE_TOO_LARGE = "AGENT_MESSAGE_TOO_LARGE"
"""A request or response exceeded a gRPC message size limit (not retryable)."""
AGENT_ERROR = "AGENT_ERROR"
"""An agent's error result that carries no code of its own."""

ProgressCallback: TypeAlias = Callable[[agent_pb2.Progress], Awaitable[None] | None]
"""Called with each progress message; may be a plain function or a coroutine function."""
ChunkCallback: TypeAlias = Callable[[agent_pb2.OutputChunk], Awaitable[None] | None]
"""Called with each output chunk; may be a plain function or a coroutine function."""
ArtifactCallback: TypeAlias = Callable[[agent_pb2.Artifact], Awaitable[None] | None]
"""Called with each artifact; may be a plain function or a coroutine function."""

_MAX_SAFE_INTEGER = 2**53

# gRPC status -> (code, retryable) for failures of the call itself. Unlisted statuses
# become AGENT_<STATUS>, retryable: the engine's max_attempts bounds the retries.
_STATUS_OUTCOMES: dict[grpc.StatusCode, tuple[str, bool]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: (DEADLINE_EXCEEDED, True),
    grpc.StatusCode.UNAVAILABLE: (AGENT_UNAVAILABLE, True),
    grpc.StatusCode.CANCELLED: (CANCELLED, True),
    # The request can never succeed as sent.
    grpc.StatusCode.INVALID_ARGUMENT: ("AGENT_INVALID_ARGUMENT", False),
    grpc.StatusCode.UNIMPLEMENTED: ("AGENT_UNIMPLEMENTED", False),
    grpc.StatusCode.NOT_FOUND: ("AGENT_NOT_FOUND", False),
    grpc.StatusCode.ALREADY_EXISTS: ("AGENT_ALREADY_EXISTS", False),
    grpc.StatusCode.PERMISSION_DENIED: ("AGENT_PERMISSION_DENIED", False),
    grpc.StatusCode.UNAUTHENTICATED: ("AGENT_UNAUTHENTICATED", False),
    grpc.StatusCode.FAILED_PRECONDITION: ("AGENT_FAILED_PRECONDITION", False),
    grpc.StatusCode.OUT_OF_RANGE: ("AGENT_OUT_OF_RANGE", False),
    grpc.StatusCode.DATA_LOSS: ("AGENT_DATA_LOSS", False),
}


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class TaskUsage:
    """Model usage reported by the agent (``podium.agent.v1.Usage``)."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class TaskSucceeded:
    """The agent returned an output.

    Attributes:
        output: the output Struct as a plain dict, integral numbers as ``int``.
        usage: the reported usage, None when the agent sent none.
        artifacts: every artifact of the stream, in order.
    """

    output: dict[str, Any]
    usage: TaskUsage | None = None
    artifacts: tuple[agent_pb2.Artifact, ...] = ()

    @property
    def ok(self) -> Literal[True]:
        """Always True (lets callers test ``outcome.ok``)."""
        return True


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The attempt failed.

    Attributes:
        code: stable UPPER_SNAKE code: the agent's own (``origin="agent"``), or one of
            ``DEADLINE_EXCEEDED``, ``AGENT_UNAVAILABLE``, ``CANCELLED``,
            ``AGENT_<GRPC_STATUS>`` (``"transport"``), ``AGENT_PROTOCOL_ERROR``
            (``"protocol"``).
        message: human-readable explanation.
        retryable: whether another attempt may succeed (the engine still applies the
            step's retry policy).
        origin: ``agent`` (an error result), ``transport`` (the call ended with a non-OK
            gRPC status) or ``protocol`` (the stream broke the contract).
        grpc_status: the gRPC status name for ``transport`` failures, else None.
        usage: usage reported with an error result, else None.
        artifacts: artifacts received before the failure.
    """

    code: str
    message: str
    retryable: bool
    origin: Literal["agent", "transport", "protocol"]
    grpc_status: str | None = None
    usage: TaskUsage | None = None
    artifacts: tuple[agent_pb2.Artifact, ...] = ()

    @property
    def ok(self) -> Literal[False]:
        """Always False (lets callers test ``outcome.ok``)."""
        return False


TaskOutcome: TypeAlias = TaskSucceeded | TaskFailed
"""Exactly one per :meth:`AgentClient.execute` call."""


class AgentCallError(Exception):
    """A unary agent call (:meth:`AgentClient.get_card`) failed.

    Attributes:
        code: as :attr:`TaskFailed.code` for transport failures.
        retryable: whether trying again may succeed.
        grpc_status: the gRPC status name.
    """

    def __init__(self, message: str, *, code: str, retryable: bool, grpc_status: str) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.grpc_status = grpc_status


# --------------------------------------------------------------------------- structs


def struct_from_dict(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """A Struct holding ``value`` (JSON-like data: dict, list, str, number, bool, None).

    ``Struct.update`` is used: about 2.4x faster than ``json_format.ParseDict`` for a
    small input. To fill a request in place use ``request.input.update(value)``.
    """
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) <= _MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {key: _value(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    return None


def dict_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """``struct`` as a plain dict; integral numbers within +-2**53 become ``int``
    (Struct stores every number as a double). Faster than ``MessageToDict``."""
    return {key: _value(item) for key, item in struct.fields.items()}


def _usage(result: agent_pb2.TaskResult) -> TaskUsage | None:
    if not result.HasField("usage"):
        return None
    usage = result.usage
    cost = usage.cost_usd
    # What an agent reports feeds budgets and quotas: negative or non-finite values
    # count as 0, and the model name is bounded.
    return TaskUsage(
        model=usage.model[:_MAX_MODEL_CHARS],
        input_tokens=max(0, usage.input_tokens),
        output_tokens=max(0, usage.output_tokens),
        cost_usd=cost if math.isfinite(cost) and cost > 0 else 0.0,
    )


_MAX_MODEL_CHARS = 256


# --------------------------------------------------------------------------- client


class _Stubs:
    """The stubs of one endpoint's channel."""

    __slots__ = ("agent", "health")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.agent = agent_pb2_grpc.AgentServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


class AgentClient(PooledClient[_Stubs]):
    """Calls agents over gRPC, one reused channel per endpoint.

    Args:
        channels: the channel pool to use (shared with the A2A client by
            :class:`~podium.server.agents.dispatch.AgentDispatcher`); by default the
            client opens its own, and :meth:`close` closes it. Keepalive and reconnection
            are tuned on the pool (:class:`~podium.server.agents.channels.AgentChannels`).
        max_message_bytes: largest message sent or received (own pool only).
        options: extra channel arguments (own pool only).
    """

    def __init__(
        self,
        *,
        channels: AgentChannels | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(channels, _Stubs, max_message_bytes=max_message_bytes, options=options)

    # -- calls

    async def execute(
        self,
        endpoint: str,
        request: agent_pb2.ExecuteTaskRequest,
        *,
        timeout: float,  # noqa: ASYNC109 - the gRPC deadline of the call
        metadata: Sequence[tuple[str, str]] = (),
        on_progress: ProgressCallback | None = None,
        on_output_chunk: ChunkCallback | None = None,
        on_artifact: ArtifactCallback | None = None,
    ) -> TaskOutcome:
        """Run one step attempt on the agent at ``endpoint`` and return its outcome.

        Progress messages, output chunks and artifacts are passed to the callbacks in
        stream order as they arrive (a coroutine callback is awaited before the next
        message is read, which applies back-pressure to the agent). Artifacts are also
        collected into the outcome. The stream must end with exactly one ``result``.

        A non-OK status ends the attempt with a ``transport`` failure even when a result
        came before it. Messages with an unknown (newer) event kind are ignored.

        Args:
            timeout: the gRPC deadline in seconds (the step's timeout).
            metadata: call metadata, e.g. ``traceparent``.

        Raises:
            asyncio.CancelledError: the awaiting task was cancelled; the call is
                cancelled too (the agent sees CANCELLED).
            Exception: whatever a callback raised (the call is then cancelled).
        """
        call = self._endpoint(endpoint).agent.ExecuteTask(
            request, timeout=timeout, metadata=tuple(metadata) if metadata else None
        )
        result: agent_pb2.TaskResult | None = None
        artifacts: list[agent_pb2.Artifact] = []
        finished = False
        try:
            while True:
                message = await call.read()
                if not isinstance(message, agent_pb2.ExecuteTaskResponse):
                    break  # grpc.aio.EOF
                kind = message.WhichOneof("event")
                if result is not None:
                    what = (
                        "a second result"
                        if kind == "result"
                        else f"another message ({kind or 'empty'})"
                    )
                    finished = True
                    call.cancel()
                    return protocol_failure(f"the agent sent {what} after its result", artifacts)
                if kind == "result":
                    result = message.result
                elif kind == "progress":
                    if on_progress is not None:
                        pending = on_progress(message.progress)
                        if pending is not None:
                            await pending
                elif kind == "output_chunk":
                    if on_output_chunk is not None:
                        pending = on_output_chunk(message.output_chunk)
                        if pending is not None:
                            await pending
                elif kind == "artifact":
                    artifacts.append(message.artifact)
                    if on_artifact is not None:
                        pending = on_artifact(message.artifact)
                        if pending is not None:
                            await pending
            finished = True
        except grpc.aio.AioRpcError as exc:
            finished = True
            return transport_failure(exc, artifacts)
        except asyncio.CancelledError:
            if channel_closed(call):
                finished = True
                return channel_closed_failure(artifacts)
            raise
        finally:
            if not finished:
                call.cancel()
        if result is None:
            return protocol_failure("the stream ended without a result", artifacts)
        if result.HasField("error"):
            error = result.error
            return TaskFailed(
                code=error.code or AGENT_ERROR,
                message=error.message or "the agent reported an error without a message",
                retryable=error.retryable,
                origin="agent",
                usage=_usage(result),
                artifacts=tuple(artifacts),
            )
        # A result with neither output nor error is a success with an empty output.
        return TaskSucceeded(
            output=dict_from_struct(result.output),
            usage=_usage(result),
            artifacts=tuple(artifacts),
        )

    async def check_health(
        self,
        endpoint: str,
        timeout: float = 2.0,  # noqa: ASYNC109 - the gRPC deadline of the call
        service: str = "",
        *,
        if_unimplemented: bool = False,
    ) -> bool:
        """Whether the agent's ``grpc.health.v1.Health`` answers SERVING for ``service``
        ("" is the whole server) within ``timeout`` seconds; False on any failure, but
        ``if_unimplemented`` when the agent answers that it serves no health service."""
        try:
            response = await self._endpoint(endpoint).health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return if_unimplemented and exc.code() is grpc.StatusCode.UNIMPLEMENTED
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def get_card(
        self,
        endpoint: str,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the gRPC deadline of the call
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agent_pb2.AgentCard:
        """The agent's self-description (``GetAgentCard``).

        Raises:
            AgentCallError: the call failed (code and retryable as for ``execute``).
        """
        try:
            response = await self._endpoint(endpoint).agent.GetAgentCard(
                agent_pb2.GetAgentCardRequest(),
                timeout=timeout,
                metadata=tuple(metadata) if metadata else None,
            )
        except grpc.aio.AioRpcError as exc:
            failure = transport_failure(exc, [])
            raise AgentCallError(
                failure.message,
                code=failure.code,
                retryable=failure.retryable,
                grpc_status=failure.grpc_status or "",
            ) from None
        return response.card


# --------------------------------------------------------------------------- failures


def transport_failure(
    exc: grpc.aio.AioRpcError, artifacts: Sequence[agent_pb2.Artifact]
) -> TaskFailed:
    """The failure of a call that ended with the non-OK status of ``exc``."""
    status = exc.code()
    details = exc.details() or status.name
    if status is grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        # A request or response over a message limit (ours or the agent's): the same
        # attempt will hit it again.
        code, retryable = AGENT_MESSAGE_TOO_LARGE, False
    else:
        code, retryable = _STATUS_OUTCOMES.get(status, (f"AGENT_{status.name}", True))
    return TaskFailed(
        code=code,
        message=f"agent call failed: {status.name}: {details}",
        retryable=retryable,
        origin="transport",
        grpc_status=status.name,
        artifacts=tuple(artifacts),
    )


def protocol_failure(message: str, artifacts: Sequence[agent_pb2.Artifact]) -> TaskFailed:
    """An ``AGENT_PROTOCOL_ERROR`` failure (retryable): the agent broke the contract."""
    return TaskFailed(
        code=AGENT_PROTOCOL_ERROR,
        message=message,
        retryable=True,
        origin="protocol",
        artifacts=tuple(artifacts),
    )


def channel_closed(call: grpc.aio.Call) -> bool:
    """Whether a ``CancelledError`` out of ``call`` means the call was cancelled locally
    (its channel closed by ``close()`` or ``discard()``) while the awaiting task was not:
    a failed attempt (:func:`channel_closed_failure`), not a cancellation of the caller.
    """
    task = asyncio.current_task()
    return bool(call.cancelled()) and task is not None and task.cancelling() == 0


def channel_closed_failure(artifacts: Sequence[agent_pb2.Artifact]) -> TaskFailed:
    """The failure of a call whose channel was closed under it (retryable)."""
    return TaskFailed(
        code=CANCELLED,
        message="the call was cancelled: the channel to the agent was closed",
        retryable=True,
        origin="transport",
        grpc_status="CANCELLED",
        artifacts=tuple(artifacts),
    )
