"""The A2A adapter: runs a step attempt on an A2A agent (A2A gRPC binding, 1.0 or 0.3).

:class:`A2AClient` has the call shape of :meth:`AgentClient.execute
<podium.server.agents.client.AgentClient.execute>`: the same request, deadline, metadata
and callbacks, and the same :class:`TaskSucceeded` / :class:`TaskFailed` outcomes, plus
:class:`TaskInputRequired` when the A2A task stops in ``TASK_STATE_INPUT_REQUIRED``.

Mapping (``podium.agent.v1`` -> ``lf.a2a.v1.A2AService``):

- ExecuteTask -> ``SendStreamingMessage`` with one user message: the step input as a
  ``data`` part (``application/json``), ``context_id`` = the step's conversation id, and
  Podium's ids (run, step, attempt, task, definition, skill, labels) under the message
  metadata key ``podium``. A continuation (``resume_task_id``) also sets ``task_id``.
- status updates -> progress: the text parts of the status message (``fraction`` from
  the status metadata ``fraction`` when it is a number, else -1 = unknown);
- artifact updates -> output chunks (their text parts, as they stream) and, when the task
  completes, the output (see :func:`output_from_artifacts`); file parts (``url`` /
  ``raw``) become Podium artifacts;
- ``COMPLETED`` -> :class:`TaskSucceeded`; ``FAILED`` -> ``A2A_TASK_FAILED`` (retryable),
  ``REJECTED`` -> ``A2A_TASK_REJECTED``, ``AUTH_REQUIRED`` -> ``A2A_AUTH_REQUIRED``
  (neither retryable), ``CANCELED`` (by the agent) -> ``CANCELLED`` (retryable). A
  status message's metadata may carry ``code`` and ``retryable`` to override these;
- ``INPUT_REQUIRED`` -> :class:`TaskInputRequired` (task id, context id, the agent's
  question);
- a reply that is a single ``Message`` (no task) -> success with the message as output;
- a gRPC status -> the transport failures of :class:`AgentClient` (same codes);
- cancelling the awaiting task -> the stream is cancelled and ``CancelTask`` is sent
  (bounded, best effort); so does a missed deadline.

A stream that ends without a terminal or interrupted state, or breaks with UNAVAILABLE,
INTERNAL or UNKNOWN (no A2A error) once the task exists, was cut (e.g. a proxy or the
agent's front end closed it while the task goes on): the adapter re-subscribes with
``SubscribeToTask``, takes its first ``Task`` as the snapshot and emits only the part of
each artifact's text it has not emitted yet, then follows the stream. When the task
already ended (subscribing is refused), ``GetTask`` provides the final snapshot.

The protocol version is read once per endpoint from the agent card: ``GetExtendedAgentCard``
of ``lf.a2a.v1`` (a 1.0 server that does not publish one still answers with an A2A error,
which is enough); else ``GetAgentCard`` of ``a2a.v1`` (protocol 0.3, told apart by its
card's ``protocol_version``). A 0.3 agent gets the same mapping: its calls go through
:class:`~podium.server.agents.a2a_v03.V03Api`, which converts each request to 0.3 and
each reply to the 1.0 types with a2a-sdk's compat conversions, so the attempt logic is
the same. Only difference: 0.3 has no ``ListTasks``, so an attempt cancelled before its
first event learns its task id from the stream's next event (bounded) to cancel it.
Another version (e.g. a card saying 2.0) fails with ``A2A_VERSION_UNSUPPORTED``.

Channels are reused per endpoint, as in :class:`AgentClient`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import grpc
from a2a.compat.v0_3 import a2a_v0_3_pb2, a2a_v0_3_pb2_grpc
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, VERSION_HEADER
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from podium.agent.v1 import agent_pb2
from podium.server.agents.a2a_v03 import (
    A2AConversionError,
    V03Api,
    is_legacy_version,
    is_v03_a2a_error,
)
from podium.server.agents.client import (
    AGENT_PROTOCOL_ERROR,
    CANCELLED,
    DEADLINE_EXCEEDED,
    ArtifactCallback,
    ChunkCallback,
    ProgressCallback,
    TaskFailed,
    TaskSucceeded,
    _transport_failure,
    dict_from_struct,
)

__all__ = [
    "A2A_AUTH_REQUIRED",
    "A2A_NOT_SERVED",
    "A2A_TASK_FAILED",
    "A2A_TASK_REJECTED",
    "A2A_VERSION_UNSUPPORTED",
    "INPUT_REQUIRED",
    "A2AClient",
    "A2AOutcome",
    "TaskInputRequired",
    "output_from_artifacts",
]

log = logging.getLogger("podium.agents.a2a")

A2A_TASK_FAILED = "A2A_TASK_FAILED"
"""The A2A task ended in ``TASK_STATE_FAILED`` without a code of its own (retryable)."""
A2A_TASK_REJECTED = "A2A_TASK_REJECTED"
"""The A2A agent rejected the task (``TASK_STATE_REJECTED``; not retryable)."""
A2A_AUTH_REQUIRED = "A2A_AUTH_REQUIRED"
"""The A2A agent asks for authentication (``TASK_STATE_AUTH_REQUIRED``; not retryable)."""
A2A_VERSION_UNSUPPORTED = "A2A_VERSION_UNSUPPORTED"
"""The endpoint speaks an A2A version the adapter does not (neither 1.x nor 0.3; not
retryable)."""
A2A_NOT_SERVED = "A2A_NOT_SERVED"
"""The endpoint serves no A2A service (neither ``lf.a2a.v1`` nor ``a2a.v1``)."""
INPUT_REQUIRED = "INPUT_REQUIRED"
"""The error code a step parked by :class:`TaskInputRequired` shows while it waits for
the answer (the engine parks it on an ``input_required`` approval)."""

_TaskState = a2a_pb2.TaskState
_TERMINAL = frozenset(
    {
        _TaskState.TASK_STATE_COMPLETED,
        _TaskState.TASK_STATE_FAILED,
        _TaskState.TASK_STATE_CANCELED,
        _TaskState.TASK_STATE_REJECTED,
    }
)
_INTERRUPTED = frozenset(
    {_TaskState.TASK_STATE_INPUT_REQUIRED, _TaskState.TASK_STATE_AUTH_REQUIRED}
)
_MAX_RESUBSCRIBES = 5
# A stream failing with one of these (without an A2A error) after the task was created
# is treated as cut: the task may well go on; SubscribeToTask tells.
_CUT_STATUSES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)
_CARD_TIMEOUT_SECONDS = 5.0
_CANCEL_TIMEOUT_SECONDS = 5.0
_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_A2A_ERROR_DOMAIN = "a2a-protocol.org"


@dataclass(frozen=True, slots=True)
class TaskInputRequired:
    """The A2A task stopped in ``TASK_STATE_INPUT_REQUIRED``: the agent waits for the
    user's reply, to be sent as a message with the same ``task_id`` and ``context_id``
    (``A2AClient.execute(..., resume_task_id=task_id)`` with the reply as the input).

    Attributes:
        task_id: the A2A task id (chosen by the agent).
        context_id: the A2A context id (the step's conversation id).
        message: the text of the agent's question (may be empty).
        data: the data parts of the question, in order.
        artifacts: artifacts received before the interruption.
    """

    task_id: str
    context_id: str
    message: str
    data: tuple[Any, ...] = ()
    artifacts: tuple[agent_pb2.Artifact, ...] = ()

    @property
    def ok(self) -> Literal[False]:
        """Always False: the step did not produce an output (yet)."""
        return False

    @property
    def usage(self) -> None:
        """A2A reports no usage (keeps the outcome interface of TaskFailed)."""
        return None


A2AOutcome = TaskSucceeded | TaskFailed | TaskInputRequired
"""Exactly one per :meth:`A2AClient.execute` call."""


# --------------------------------------------------------------------------- parts


def _text(parts: Sequence[a2a_pb2.Part]) -> str:
    return "".join(part.text for part in parts if part.WhichOneof("content") == "text")


def _json(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return dict_from_struct(value.struct_value)
    if kind == "list_value":
        return [_json(item) for item in value.list_value.values]
    # Scalars: wrap in a Struct to reuse the number rules of dict_from_struct.
    holder = struct_pb2.Struct()
    holder.fields["v"].CopyFrom(value)
    return dict_from_struct(holder)["v"]


def _data(parts: Sequence[a2a_pb2.Part]) -> list[Any]:
    return [_json(part.data) for part in parts if part.WhichOneof("content") == "data"]


def output_from_artifacts(
    artifacts: Sequence[a2a_pb2.Artifact], fallback: str = ""
) -> dict[str, Any]:
    """The step output of a completed A2A task.

    - exactly one ``data`` part holding an object: that object (with ``text`` added
      when there is text and the object has no ``text`` key);
    - otherwise ``{"text": <all text parts, in order>}`` when there is text, plus
      ``"data": [<each data part>]`` when there are data parts;
    - no text and no data: ``{"text": fallback}`` when ``fallback`` (the final status
      message) is not empty, else ``{}``.
    """
    parts = [part for artifact in artifacts for part in artifact.parts]
    text = _text(parts)
    data = _data(parts)
    if len(data) == 1 and isinstance(data[0], dict):
        output: dict[str, Any] = dict(data[0])
        if text and "text" not in output:
            output["text"] = text
        return output
    output = {}
    if text:
        output["text"] = text
    if data:
        output["data"] = data
    if not output and fallback:
        output["text"] = fallback
    return output


def _file_artifacts(artifact: a2a_pb2.Artifact) -> list[agent_pb2.Artifact]:
    files: list[agent_pb2.Artifact] = []
    for index, part in enumerate(artifact.parts):
        kind = part.WhichOneof("content")
        if kind not in ("url", "raw"):
            continue
        name = part.filename or artifact.name or f"{artifact.artifact_id}-{index}"
        files.append(
            agent_pb2.Artifact(
                name=name,
                media_type=part.media_type,
                uri=part.url if kind == "url" else "",
                data=part.raw if kind == "raw" else b"",
            )
        )
    return files


# --------------------------------------------------------------------------- attempt


class _Call(Protocol):
    """The part of a grpc.aio stream call the adapter uses."""

    async def read(self) -> Any: ...

    def cancel(self) -> bool: ...


class _Cut(Exception):
    """The stream ended without a terminal or interrupted state."""


@dataclass
class _Attempt:
    """What one execute call knows of its A2A task."""

    on_progress: ProgressCallback | None
    on_output_chunk: ChunkCallback | None
    on_artifact: ArtifactCallback | None
    task_id: str = ""
    context_id: str = ""
    state: int = _TaskState.TASK_STATE_UNSPECIFIED
    status_message: a2a_pb2.Message | None = None
    reply: a2a_pb2.Message | None = None
    # artifact_id -> the artifact as accumulated so far, and the text already emitted.
    artifacts: dict[str, a2a_pb2.Artifact] = field(default_factory=dict)
    emitted: dict[str, int] = field(default_factory=dict)
    files: list[agent_pb2.Artifact] = field(default_factory=list)
    last_progress: str | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.state in _TERMINAL or self.state in _INTERRUPTED

    async def _call(self, callback: Any, value: Any) -> None:
        if callback is not None:
            pending = callback(value)
            if pending is not None:
                await pending

    async def _status(self, status: a2a_pb2.TaskStatus) -> None:
        self.state = status.state
        # The message of the latest status only (a final status without one must not
        # report an older progress line as its message).
        self.status_message = status.message if status.HasField("message") else None
        if status.HasField("message"):
            text = _text(status.message.parts)
            if text and text != self.last_progress and status.state not in _TERMINAL:
                self.last_progress = text
                fraction = -1.0
                value = status.message.metadata.fields.get("fraction")
                if value is not None and value.WhichOneof("kind") == "number_value":
                    fraction = value.number_value
                await self._call(
                    self.on_progress, agent_pb2.Progress(message=text, fraction=fraction)
                )

    async def _emit_artifact(self, artifact: a2a_pb2.Artifact) -> None:
        """Emit the text of ``artifact`` not emitted yet (all of it when new; after a
        cut, only what the lost part of the stream carried)."""
        full = _text(artifact.parts)
        already = self.emitted.get(artifact.artifact_id, 0)
        self.emitted[artifact.artifact_id] = max(already, len(full))
        if len(full) > already:
            await self._call(self.on_output_chunk, agent_pb2.OutputChunk(text=full[already:]))

    async def _artifact_update(self, update: a2a_pb2.TaskArtifactUpdateEvent) -> None:
        artifact = update.artifact
        current = self.artifacts.get(artifact.artifact_id)
        before = len(self.files)
        if update.append and current is not None:
            current.parts.extend(artifact.parts)
            for key, value in artifact.metadata.fields.items():
                current.metadata.fields[key].CopyFrom(value)
        else:
            current = a2a_pb2.Artifact()
            current.CopyFrom(artifact)
            self.artifacts[artifact.artifact_id] = current
            if not update.append:
                # A replacement restarts the artifact's text.
                self.emitted[artifact.artifact_id] = 0
        self.files.extend(_file_artifacts(artifact))
        await self._emit_artifact(current)
        for file in self.files[before:]:
            await self._call(self.on_artifact, file)

    async def snapshot(self, task: a2a_pb2.Task) -> None:
        """Take ``task`` (a subscription's first message, or GetTask) as the current
        state, emitting only artifact text and files not emitted before."""
        self.task_id = task.id or self.task_id
        self.context_id = task.context_id or self.context_id
        for artifact in task.artifacts:
            known = self.artifacts.get(artifact.artifact_id)
            if known is None or list(known.parts) != list(artifact.parts):
                copy = a2a_pb2.Artifact()
                copy.CopyFrom(artifact)
                self.artifacts[artifact.artifact_id] = copy
                before = len(self.files)
                seen = {(f.name, f.uri, f.data) for f in self.files}
                for file in _file_artifacts(artifact):
                    if (file.name, file.uri, file.data) not in seen:
                        self.files.append(file)
                for file in self.files[before:]:
                    await self._call(self.on_artifact, file)
            await self._emit_artifact(artifact)
        await self._status(task.status)

    async def consume(self, call: _Call) -> None:
        """Apply the events of ``call`` until the task is done or the stream ends.

        Raises:
            _Cut: the stream ended first.
        """
        first = True
        while not self.done:
            message = await call.read()
            if not isinstance(message, a2a_pb2.StreamResponse):
                raise _Cut
            kind = message.WhichOneof("payload")
            if kind == "task":
                # The first Task of a stream is a snapshot (SubscribeToTask) or the
                # initial task; either way, artifacts not yet emitted are emitted.
                await self.snapshot(message.task)
            elif kind == "status_update":
                update = message.status_update
                self.task_id = update.task_id or self.task_id
                self.context_id = update.context_id or self.context_id
                await self._status(update.status)
            elif kind == "artifact_update":
                update_a = message.artifact_update
                self.task_id = update_a.task_id or self.task_id
                await self._artifact_update(update_a)
            elif kind == "message":
                if first and not self.task_id:
                    self.reply = message.message
                    self.context_id = message.message.context_id or self.context_id
            first = False

    def outcome(self) -> A2AOutcome:
        files = tuple(self.files)
        if self.reply is not None:
            parts = self.reply.parts
            output = output_from_artifacts([a2a_pb2.Artifact(parts=parts)])
            return TaskSucceeded(output=output, artifacts=files)
        status_text = _text(self.status_message.parts) if self.status_message else ""
        if self.state == _TaskState.TASK_STATE_COMPLETED:
            output = output_from_artifacts(list(self.artifacts.values()), status_text)
            return TaskSucceeded(output=output, artifacts=files)
        if self.state == _TaskState.TASK_STATE_INPUT_REQUIRED:
            data = tuple(_data(self.status_message.parts)) if self.status_message else ()
            return TaskInputRequired(
                task_id=self.task_id,
                context_id=self.context_id,
                message=status_text,
                data=data,
                artifacts=files,
            )
        defaults: dict[int, tuple[str, bool, str]] = {
            _TaskState.TASK_STATE_FAILED: (A2A_TASK_FAILED, True, "the A2A task failed"),
            _TaskState.TASK_STATE_REJECTED: (
                A2A_TASK_REJECTED,
                False,
                "the A2A agent rejected the task",
            ),
            _TaskState.TASK_STATE_AUTH_REQUIRED: (
                A2A_AUTH_REQUIRED,
                False,
                "the A2A agent requires authentication",
            ),
            _TaskState.TASK_STATE_CANCELED: (CANCELLED, True, "the A2A agent cancelled the task"),
        }
        code, retryable, default_message = defaults.get(
            self.state,
            (AGENT_PROTOCOL_ERROR, True, f"unexpected A2A task state {self.state}"),
        )
        if self.status_message is not None:
            metadata = self.status_message.metadata.fields
            if metadata.get("code") is not None and metadata["code"].string_value:
                code = metadata["code"].string_value
            if metadata.get("retryable") is not None:
                retryable = metadata["retryable"].bool_value
        return TaskFailed(
            code=code,
            message=status_text or default_message,
            retryable=retryable,
            origin="protocol" if code == AGENT_PROTOCOL_ERROR else "agent",
            artifacts=files,
        )


# --------------------------------------------------------------------------- client


class _Endpoint:
    """The channel of one endpoint, its stubs and its detected protocol version.

    ``a2a`` and ``legacy`` are the raw 1.0 and 0.3 stubs (version detection); ``api`` is
    what attempts call once the version is known: the 1.0 stub, or a :class:`V03Api`
    (the same calls and 1.0 types, made on the 0.3 service).
    """

    __slots__ = ("a2a", "api", "channel", "legacy", "version")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.a2a = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        self.legacy = a2a_v0_3_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        self.api: Any = self.a2a
        self.version: str | None = None

    def use(self, version: str) -> str:
        """Record the detected ``version`` and pick the stub attempts call."""
        self.version = version
        self.api = V03Api(self.channel) if is_legacy_version(version) else self.a2a
        return version


def _has_a2a_error(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call carries an A2A error (so the A2A service exists): an
    ``ErrorInfo`` of the A2A domain (1.0), or details naming an A2A error (0.3)."""
    if is_v03_a2a_error(exc):
        return True
    status = rpc_status.from_call(cast(grpc.Call, exc))
    if status is None:
        return False
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == _A2A_ERROR_DOMAIN:
            return True
    return False


class A2AClient:
    """Calls A2A agents (1.0 or 0.3) over the A2A gRPC binding, one reused channel per
    endpoint.

    Args:
        max_message_bytes: largest message sent or received.
        options: extra channel arguments.
        cancel_timeout_seconds: how long a ``CancelTask`` sent on cancellation may take.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
        cancel_timeout_seconds: float = _CANCEL_TIMEOUT_SECONDS,
    ) -> None:
        self._options: tuple[tuple[str, Any], ...] = (
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5_000),
            *options,
        )
        self._cancel_timeout = cancel_timeout_seconds
        self._endpoints: dict[str, _Endpoint] = {}
        self._closed = False

    # -- channels

    def _endpoint(self, endpoint: str) -> _Endpoint:
        entry = self._endpoints.get(endpoint)
        if entry is None:
            if self._closed:
                raise RuntimeError("A2AClient is closed")
            entry = _Endpoint(grpc.aio.insecure_channel(endpoint, options=self._options))
            self._endpoints[endpoint] = entry
        return entry

    @property
    def endpoints(self) -> list[str]:
        """Endpoints with an open channel."""
        return list(self._endpoints)

    async def discard(self, endpoint: str) -> None:
        """Close the channel to ``endpoint`` and forget its protocol version."""
        entry = self._endpoints.pop(endpoint, None)
        if entry is not None:
            await entry.channel.close(None)

    async def close(self) -> None:
        """Close every channel. Idempotent; the client cannot be used afterwards."""
        self._closed = True
        entries = list(self._endpoints.values())
        self._endpoints.clear()
        for entry in entries:
            await entry.channel.close(None)

    # -- version

    async def protocol_version(
        self, endpoint: str, *, card_timeout: float = _CARD_TIMEOUT_SECONDS
    ) -> str:
        """The A2A protocol version the agent at ``endpoint`` speaks (cached per channel).

        ``1.0`` when ``lf.a2a.v1.A2AService`` answers ``GetExtendedAgentCard`` (with a
        card, or with an A2A error such as "extended card not configured": the service
        exists); otherwise the ``protocol_version`` of the ``a2a.v1.A2AService`` card
        (``0.3``; also when that service exists but gives no card). "" (not cached)
        when neither service exists. The version also picks the stub attempts call.

        Raises:
            grpc.aio.AioRpcError: the agent could not be asked (e.g. UNAVAILABLE).
        """
        entry = self._endpoint(endpoint)
        if entry.version is not None:
            return entry.version
        metadata = ((VERSION_HEADER.lower(), PROTOCOL_VERSION_1_0),)
        try:
            card = await entry.a2a.GetExtendedAgentCard(
                a2a_pb2.GetExtendedAgentCardRequest(), timeout=card_timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNIMPLEMENTED or _has_a2a_error(exc):
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                return entry.use(PROTOCOL_VERSION_1_0)
        else:
            # The lf.a2a.v1 service answered: a 0.3 interface the card may also list
            # (served as a2a.v1 for older clients) is not the one to use.
            versions = [
                interface.protocol_version
                for interface in cast(a2a_pb2.AgentCard, card).supported_interfaces
                if interface.protocol_binding.upper() == "GRPC"
                and interface.protocol_version
                and not is_legacy_version(interface.protocol_version)
            ]
            return entry.use(versions[0] if versions else PROTOCOL_VERSION_1_0)
        try:
            legacy = await entry.legacy.GetAgentCard(
                a2a_v0_3_pb2.GetAgentCardRequest(), timeout=card_timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                # No card to give, or no such service: a GetTask of no task tells.
                try:
                    await entry.legacy.GetTask(
                        a2a_v0_3_pb2.GetTaskRequest(name="tasks/-"), timeout=card_timeout
                    )
                except grpc.aio.AioRpcError as probe:
                    if probe.code() is grpc.StatusCode.UNIMPLEMENTED:
                        # Not cached: the endpoint may yet become an A2A agent.
                        return ""
            return entry.use(PROTOCOL_VERSION_0_3)
        return entry.use(
            cast(a2a_v0_3_pb2.AgentCard, legacy).protocol_version or PROTOCOL_VERSION_0_3
        )

    # -- calls

    async def execute(
        self,
        endpoint: str,
        request: agent_pb2.ExecuteTaskRequest,
        *,
        timeout: float,  # noqa: ASYNC109 - the deadline of the whole attempt
        metadata: Sequence[tuple[str, str]] = (),
        on_progress: ProgressCallback | None = None,
        on_output_chunk: ChunkCallback | None = None,
        on_artifact: ArtifactCallback | None = None,
        resume_task_id: str = "",
    ) -> A2AOutcome:
        """Run one step attempt on the A2A agent at ``endpoint`` (see the module
        docstring for the mapping) and return its outcome.

        Args:
            timeout: seconds for the whole attempt, re-subscriptions included.
            metadata: call metadata, e.g. ``traceparent``.
            resume_task_id: the A2A task to continue (after :class:`TaskInputRequired`):
                the message then carries that ``task_id``, and the input is the reply.

        Raises:
            asyncio.CancelledError: the awaiting task was cancelled; the stream is
                cancelled and ``CancelTask`` sent to the agent.
            Exception: whatever a callback raised (the task is then cancelled too).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        entry = self._endpoint(endpoint)
        try:
            version = await self.protocol_version(
                endpoint, card_timeout=min(timeout, _CARD_TIMEOUT_SECONDS)
            )
        except grpc.aio.AioRpcError as exc:
            return _transport_failure(exc, [])
        legacy = is_legacy_version(version)
        if version and not version.startswith("1.") and not legacy:
            return TaskFailed(
                code=A2A_VERSION_UNSUPPORTED,
                message=(
                    f"the A2A agent at {endpoint} speaks A2A {version}; Podium supports "
                    "A2A 1.0 (lf.a2a.v1.A2AService) and 0.3 (a2a.v1.A2AService)"
                ),
                retryable=False,
                origin="protocol",
            )
        if not version:
            return TaskFailed(
                code=A2A_NOT_SERVED,
                message=f"{endpoint} serves no A2A service (lf.a2a.v1 or a2a.v1)",
                retryable=False,
                origin="protocol",
            )
        api = entry.api
        header = PROTOCOL_VERSION_0_3 if legacy else PROTOCOL_VERSION_1_0
        call_metadata = ((VERSION_HEADER.lower(), header), *metadata)
        attempt = _Attempt(on_progress, on_output_chunk, on_artifact)
        attempt.context_id = request.conversation_id
        attempt.task_id = resume_task_id
        call: Any = api.SendStreamingMessage(
            _send_request(request, resume_task_id),
            timeout=max(deadline - loop.time(), 0.001),
            metadata=call_metadata,
        )
        resubscribes = 0
        last_error: grpc.aio.AioRpcError | None = None
        finished = False
        try:
            while True:
                try:
                    await attempt.consume(call)
                    break
                except _Cut:
                    pass
                except grpc.aio.AioRpcError as exc:
                    if not attempt.task_id or (_has_a2a_error(exc) and not resubscribes):
                        raise
                    if _has_a2a_error(exc):
                        # Subscribing is refused once the task ended: read its state.
                        task = await api.GetTask(
                            a2a_pb2.GetTaskRequest(id=attempt.task_id),
                            timeout=max(deadline - loop.time(), 0.001),
                            metadata=call_metadata,
                        )
                        await attempt.snapshot(task)
                        if attempt.done:
                            break
                    elif exc.code() in _CUT_STATUSES:
                        # The connection broke mid-stream (e.g. a proxy reset it).
                        last_error = exc
                    else:
                        raise
                if not attempt.task_id:
                    finished = True
                    return TaskFailed(
                        code=AGENT_PROTOCOL_ERROR,
                        message="the A2A stream ended before the agent created a task",
                        retryable=True,
                        origin="protocol",
                        artifacts=tuple(attempt.files),
                    )
                resubscribes += 1
                if resubscribes > _MAX_RESUBSCRIBES:
                    if last_error is not None:
                        raise last_error
                    finished = True
                    await self._cancel_task(api, attempt.task_id, call_metadata)
                    return TaskFailed(
                        code=AGENT_PROTOCOL_ERROR,
                        message=(
                            f"the A2A stream of task {attempt.task_id} was cut {resubscribes} times"
                        ),
                        retryable=True,
                        origin="protocol",
                        artifacts=tuple(attempt.files),
                    )
                log.info(
                    "A2A stream cut; re-subscribing",
                    extra={"endpoint": endpoint, "a2a_task_id": attempt.task_id},
                )
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _DeadlineError
                call = api.SubscribeToTask(
                    a2a_pb2.SubscribeToTaskRequest(id=attempt.task_id),
                    timeout=remaining,
                    metadata=call_metadata,
                )
            finished = True
        except _DeadlineError:
            finished = True
            call.cancel()
            await self._cancel_task(api, attempt.task_id, call_metadata)
            return TaskFailed(
                code=DEADLINE_EXCEEDED,
                message="the A2A task outlived the step's deadline",
                retryable=True,
                origin="transport",
                grpc_status="DEADLINE_EXCEEDED",
                artifacts=tuple(attempt.files),
            )
        except A2AConversionError as exc:
            finished = True
            call.cancel()
            await self._cancel_task(api, attempt.task_id, call_metadata)
            return TaskFailed(
                code=AGENT_PROTOCOL_ERROR,
                message=str(exc),
                retryable=True,
                origin="protocol",
                artifacts=tuple(attempt.files),
            )
        except grpc.aio.AioRpcError as exc:
            finished = True
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                await self._cancel_task(api, attempt.task_id, call_metadata)
            return _transport_failure(exc, attempt.files)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if call.cancelled() and task is not None and task.cancelling() == 0:
                finished = True
                return TaskFailed(
                    code=CANCELLED,
                    message="the call was cancelled: the channel to the agent was closed",
                    retryable=True,
                    origin="transport",
                    grpc_status="CANCELLED",
                    artifacts=tuple(attempt.files),
                )
            raise
        finally:
            if not finished:
                # Cancelled (or a callback raised): stop the A2A task too. Cancelled
                # before the first event, its task is found by the context id (1.0:
                # ListTasks) or, as 0.3 has no ListTasks, by the stream's next event.
                task_ids = [attempt.task_id] if attempt.task_id else []
                if not task_ids and legacy:
                    task_ids = await self._next_task_id(call)
                call.cancel()
                if not task_ids:
                    task_ids = await self._active_tasks(api, attempt.context_id, call_metadata)
                for task_id in task_ids:
                    await self._cancel_task(api, task_id, call_metadata)
        return attempt.outcome()

    async def _next_task_id(self, call: Any) -> list[str]:
        """The task id of the next events of ``call`` that carry one (bounded by the
        cancel timeout, best effort: [] when none comes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._cancel_timeout
        try:
            while (remaining := deadline - loop.time()) > 0:
                message = await asyncio.wait_for(call.read(), remaining)
                if not isinstance(message, a2a_pb2.StreamResponse):
                    return []
                kind = message.WhichOneof("payload")
                if kind == "task":
                    task_id = message.task.id
                elif kind in ("status_update", "artifact_update"):
                    task_id = getattr(message, kind).task_id
                else:
                    task_id = ""
                if task_id:
                    return [task_id]
        except (TimeoutError, grpc.aio.AioRpcError, asyncio.CancelledError, A2AConversionError):
            pass
        return []

    async def _active_tasks(
        self, api: Any, context_id: str, metadata: Sequence[tuple[str, str]]
    ) -> list[str]:
        """The ids of the context's tasks still submitted or working (``ListTasks``;
        bounded, best effort: [] on any failure)."""
        if not context_id:
            return []
        try:
            response = await api.ListTasks(
                a2a_pb2.ListTasksRequest(context_id=context_id, history_length=0),
                timeout=self._cancel_timeout,
                metadata=tuple(metadata),
            )
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            log.warning("A2A ListTasks of context %s failed: %r", context_id, exc)
            return []
        active = (_TaskState.TASK_STATE_SUBMITTED, _TaskState.TASK_STATE_WORKING)
        listed = cast(a2a_pb2.ListTasksResponse, response)
        return [task.id for task in listed.tasks if task.status.state in active]

    async def _cancel_task(
        self, api: Any, task_id: str, metadata: Sequence[tuple[str, str]]
    ) -> None:
        """Send CancelTask for ``task_id`` (best effort, bounded; never raises)."""
        if not task_id:
            return
        try:
            await asyncio.shield(
                api.CancelTask(
                    a2a_pb2.CancelTaskRequest(id=task_id),
                    timeout=self._cancel_timeout,
                    metadata=tuple(metadata),
                )
            )
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            log.warning("A2A CancelTask of %s failed: %r", task_id, exc)
        except Exception:
            log.exception("A2A CancelTask of %s failed", task_id)


class _DeadlineError(Exception):
    """The attempt's deadline passed between two calls."""


def _send_request(
    request: agent_pb2.ExecuteTaskRequest, resume_task_id: str
) -> a2a_pb2.SendMessageRequest:
    """The SendMessageRequest of an ExecuteTaskRequest (see the module docstring)."""
    podium: dict[str, Any] = {
        "task_id": request.task_id,
        "run_id": request.run_id,
        "step_id": request.step_id,
        "attempt": request.attempt,
        "organization_id": request.organization_id,
    }
    if request.definition_name:
        podium["definition_name"] = request.definition_name
        podium["definition_version"] = request.definition_version
    if request.skill:
        podium["skill"] = request.skill
    if request.labels:
        podium["labels"] = dict(request.labels)
    data = struct_pb2.Value()
    data.struct_value.CopyFrom(request.input)
    message = a2a_pb2.Message(
        message_id=str(uuid.uuid4()),
        role=a2a_pb2.Role.ROLE_USER,
        context_id=request.conversation_id,
        task_id=resume_task_id,
        parts=[a2a_pb2.Part(data=data, media_type="application/json")],
    )
    message.metadata.update({"podium": podium})
    return a2a_pb2.SendMessageRequest(message=message)
