"""How the events of an A2A task become a step attempt's progress, output and outcome.

:class:`AttemptState` is what one :meth:`A2AClient.execute
<podium.server.agents.a2a.A2AClient.execute>` call knows of its A2A task. It reads the
events of a stream (:meth:`AttemptState.consume`) or a task snapshot
(:meth:`AttemptState.snapshot`) and relays them to the attempt's callbacks:

- status updates -> progress: the text parts of the status message (``fraction`` from
  the number under ``fraction`` in the status message's metadata, else in the status
  update's own metadata, else -1 = unknown), each new text once;
- artifact updates -> output chunks (their text parts, as they stream; after a snapshot
  only the text not emitted yet) and Podium artifacts (file parts: ``url`` / ``raw``);

and, once the task is done, gives the outcome (:meth:`AttemptState.outcome`): the
output of a completed task (:func:`output_from_artifacts`), :class:`TaskInputRequired`,
or a :class:`~podium.server.agents.client.TaskFailed` with the code of the final state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from a2a.types import a2a_pb2
from google.protobuf import struct_pb2

from podium.agent.v1 import agent_pb2
from podium.server.agents.client import (
    AGENT_PROTOCOL_ERROR,
    CANCELLED,
    ArtifactCallback,
    ChunkCallback,
    ProgressCallback,
    TaskFailed,
    TaskSucceeded,
    dict_from_struct,
)

__all__ = [
    "A2A_AUTH_REQUIRED",
    "A2A_TASK_FAILED",
    "A2A_TASK_REJECTED",
    "INPUT_REQUIRED",
    "A2AOutcome",
    "AttemptState",
    "StreamCall",
    "StreamCut",
    "TaskInputRequired",
    "output_from_artifacts",
]

A2A_TASK_FAILED = "A2A_TASK_FAILED"
"""The A2A task ended in ``TASK_STATE_FAILED`` without a code of its own (retryable)."""
A2A_TASK_REJECTED = "A2A_TASK_REJECTED"
"""The A2A agent rejected the task (``TASK_STATE_REJECTED``; not retryable)."""
A2A_AUTH_REQUIRED = "A2A_AUTH_REQUIRED"
"""The A2A agent asks for authentication (``TASK_STATE_AUTH_REQUIRED``; not retryable)."""
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

# Final state -> (code, retryable, message) unless the status message's metadata says
# otherwise.
_FAILURES: dict[int, tuple[str, bool, str]] = {
    _TaskState.TASK_STATE_FAILED: (A2A_TASK_FAILED, True, "the A2A task failed"),
    _TaskState.TASK_STATE_REJECTED: (A2A_TASK_REJECTED, False, "the A2A agent rejected the task"),
    _TaskState.TASK_STATE_AUTH_REQUIRED: (
        A2A_AUTH_REQUIRED,
        False,
        "the A2A agent requires authentication",
    ),
    _TaskState.TASK_STATE_CANCELED: (CANCELLED, True, "the A2A agent cancelled the task"),
}


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


def _fraction(metadata: struct_pb2.Struct) -> float | None:
    """The number under ``fraction`` in ``metadata``, or None."""
    value = metadata.fields.get("fraction")
    if value is not None and value.WhichOneof("kind") == "number_value":
        return value.number_value
    return None


# --------------------------------------------------------------------------- attempt


class StreamCall(Protocol):
    """The part of a grpc.aio stream call the adapter uses."""

    async def read(self) -> Any: ...

    def cancel(self) -> bool: ...


class StreamCut(Exception):
    """The stream ended without a terminal or interrupted state."""


@dataclass
class AttemptState:
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
        """Whether the task ended, stopped for input or auth, or the agent replied
        with a message instead of a task."""
        return self.reply is not None or self.state in _TERMINAL or self.state in _INTERRUPTED

    async def _call(self, callback: Any, value: Any) -> None:
        if callback is not None:
            pending = callback(value)
            if pending is not None:
                await pending

    async def _status(
        self, status: a2a_pb2.TaskStatus, metadata: struct_pb2.Struct | None = None
    ) -> None:
        """Take ``status`` as the task's state; its message's text is progress, with the
        ``fraction`` of the message's metadata, else of the status update's own
        ``metadata`` (``TaskUpdater.update_status(metadata=...)``)."""
        self.state = status.state
        # The message of the latest status only (a final status without one must not
        # report an older progress line as its message).
        self.status_message = status.message if status.HasField("message") else None
        if status.HasField("message"):
            text = _text(status.message.parts)
            if text and text != self.last_progress and status.state not in _TERMINAL:
                self.last_progress = text
                fraction = _fraction(status.message.metadata)
                if fraction is None and metadata is not None:
                    fraction = _fraction(metadata)
                if fraction is None:
                    fraction = -1.0
                await self._call(
                    self.on_progress,
                    agent_pb2.Progress(message=text, fraction=fraction),
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

    async def consume(self, call: StreamCall) -> None:
        """Apply the events of ``call`` until the task is done or the stream ends.

        Raises:
            StreamCut: the stream ended first.
        """
        first = True
        while not self.done:
            message = await call.read()
            if not isinstance(message, a2a_pb2.StreamResponse):
                raise StreamCut
            kind = message.WhichOneof("payload")
            if kind == "task":
                # The first Task of a stream is a snapshot (SubscribeToTask) or the
                # initial task; either way, artifacts not yet emitted are emitted.
                await self.snapshot(message.task)
            elif kind == "status_update":
                update = message.status_update
                self.task_id = update.task_id or self.task_id
                self.context_id = update.context_id or self.context_id
                await self._status(update.status, update.metadata)
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
        """The outcome of the attempt once the task is :attr:`done` (see the module
        docstring of :mod:`podium.server.agents.a2a` for the codes)."""
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
        code, retryable, default_message = _FAILURES.get(
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
