"""The task a Podium agent's handler receives (:class:`Task`), the error it may raise
(:class:`TaskFailed`), and the dict-to-Struct conversion (the other way is in
:mod:`podium.client.values`). Part of the agent SDK: import these from
:mod:`podium.client.agent`, which re-exports them."""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf import struct_pb2

from podium.agent.v1 import agent_pb2
from podium.client.values import struct_to_dict

if TYPE_CHECKING:
    from podium.client.agent import Agent
    from podium.client.client import PodiumClient

__all__ = ["Task", "TaskFailed", "dict_to_struct"]

_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")

Context: TypeAlias = grpc.aio.ServicerContext[
    agent_pb2.ExecuteTaskRequest, agent_pb2.ExecuteTaskResponse
]
"""The gRPC context of an ExecuteTask call."""


# -- Struct conversion -----------------------------------------------------------------


def dict_to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    """Convert a dict of JSON values (str, int, float, bool, None, lists, dicts) to a Struct.

    Raises ``ValueError`` or ``TypeError`` for anything else.
    """
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


# -- Public types ----------------------------------------------------------------------


class TaskFailed(Exception):
    """Raise from a handler to end the task with ``result.error``.

    ``code`` is a stable UPPER_SNAKE identifier (``"UPSTREAM_TIMEOUT"``); ``retryable``
    tells Podium whether another attempt may succeed (``False`` skips the remaining
    attempts).
    """

    def __init__(self, code: str, message: str, retryable: bool = True) -> None:
        if not _ERROR_CODE.fullmatch(code):
            raise ValueError(f"TaskFailed code must be UPPER_SNAKE case, got {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


class Task:
    """One step attempt as seen by a handler: the request, and helpers to stream results.

    Request fields are read lazily from the gRPC request, so unused fields cost nothing.
    Streaming helpers must be awaited; they raise ``RuntimeError`` once the task has
    ended and ``asyncio.CancelledError`` once the call has been cancelled.
    """

    __slots__ = (
        "_agent",
        "_call_task",
        "_cancelled",
        "_context",
        "_finished",
        "_input",
        "_labels",
        "_lock",
        "_request",
        "_usage",
    )

    def __init__(
        self,
        request: agent_pb2.ExecuteTaskRequest,
        context: Context,
        agent: Agent,
    ) -> None:
        self._request = request
        self._context = context
        self._agent = agent
        self._call_task = asyncio.current_task()
        self._input: dict[str, Any] | None = None
        self._labels: dict[str, str] | None = None
        self._lock: asyncio.Lock | None = None
        self._usage: agent_pb2.Usage | None = None
        self._finished = False
        self._cancelled = False

    # -- request fields

    @property
    def request(self) -> agent_pb2.ExecuteTaskRequest:
        """The raw ``ExecuteTaskRequest``."""
        return self._request

    @property
    def task_id(self) -> str:
        """Unique id of this step attempt (a retry gets a new one)."""
        return self._request.task_id

    @property
    def run_id(self) -> str:
        """Id of the run the step belongs to."""
        return self._request.run_id

    @property
    def step_id(self) -> str:
        """Id of the step inside its definition."""
        return self._request.step_id

    @property
    def attempt(self) -> int:
        """Attempt number, starting at 1."""
        return self._request.attempt

    @property
    def conversation_id(self) -> str:
        """Conversation id of the step, stable across attempts and ContinueRun."""
        return self._request.conversation_id

    @property
    def organization_id(self) -> str:
        """Organization that owns the run."""
        return self._request.organization_id

    @property
    def input(self) -> dict[str, Any]:
        """The step input as a plain dict (integral numbers as ``int``); computed once."""
        if self._input is None:
            self._input = struct_to_dict(self._request.input)
        return self._input

    @property
    def labels(self) -> dict[str, str]:
        """Labels of the run."""
        if self._labels is None:
            self._labels = dict(self._request.labels)
        return self._labels

    @property
    def definition_name(self) -> str:
        """Name of the definition being executed; empty for an inline plan."""
        return self._request.definition_name

    @property
    def definition_version(self) -> int:
        """Version of the definition being executed; 0 for an inline plan."""
        return self._request.definition_version

    @property
    def skill(self) -> str:
        """The skill the step was routed by; empty when routed by agent name."""
        return self._request.skill

    @property
    def credential(self) -> str:
        """The step credential: a bearer token for Podium's API, valid while this attempt
        runs, that starts child runs of the step (empty from a server without step
        credentials). A secret: never log it."""
        return self._request.credential

    @property
    def podium_address(self) -> str:
        """Where Podium's API is reached with :attr:`credential` (empty when the server
        does not say)."""
        return self._request.podium_address

    def podium(self, address: str | None = None, **options: Any) -> PodiumClient:
        """A :class:`~podium.client.client.PodiumClient` acting with this attempt's
        credential: runs it starts are child runs of the step (cancelled when the
        attempt ends), and it reads only those. ``address`` defaults to
        :attr:`podium_address`, then ``PODIUM_ADDRESS``; ``options`` go to the client
        (e.g. ``credentials`` for TLS). Use as ``async with task.podium() as podium:``.

        Raises:
            RuntimeError: The task has no credential, or no address is known.
        """
        from podium.client.client import PodiumClient  # the agent SDK needs it only here

        if not self.credential:
            raise RuntimeError("this task has no step credential (an older Podium server?)")
        target = address or self.podium_address or os.environ.get("PODIUM_ADDRESS", "")
        if not target:
            raise RuntimeError(
                "no Podium address: pass one, or set PODIUM_AGENT_CALLBACK_ADDRESS on the "
                "server or PODIUM_ADDRESS here"
            )
        return PodiumClient(target, api_key=self.credential, **options)

    @property
    def metadata(self) -> dict[str, str | bytes]:
        """The call's metadata (e.g. ``traceparent``); the last value wins for repeated keys."""
        return dict(self._context.invocation_metadata() or ())

    @property
    def deadline(self) -> float | None:
        """Seconds left before the call's deadline (never negative), or ``None`` without one."""
        remaining = self._context.time_remaining()
        return None if remaining is None else max(0.0, remaining)

    @property
    def cancelled(self) -> bool:
        """Whether the call has been cancelled (by the caller, its deadline, or shutdown)."""
        if self._cancelled:
            return True
        call_task = self._call_task
        return call_task is not None and call_task.cancelling() > 0

    # -- streaming helpers

    async def progress(self, message: str, fraction: float | None = None) -> None:
        """Report progress: a status line and the completed fraction in [0, 1].

        ``None`` (or a negative number) means the fraction is unknown; values above 1
        are clamped to 1.
        """
        if fraction is None or math.isnan(fraction) or fraction < 0:
            fraction = -1.0
        elif fraction > 1:
            fraction = 1.0
        await self._emit(
            agent_pb2.ExecuteTaskResponse(
                progress=agent_pb2.Progress(message=message, fraction=fraction)
            )
        )

    async def output_chunk(self, text: str) -> None:
        """Stream a piece of incremental output, such as generated text."""
        await self._emit(
            agent_pb2.ExecuteTaskResponse(output_chunk=agent_pb2.OutputChunk(text=text))
        )

    async def artifact(
        self,
        name: str,
        data: bytes | str | None = None,
        *,
        media_type: str = "",
        uri: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Send an artifact: inline ``data`` (``str`` is sent as UTF-8) or a ``uri``.

        ``media_type`` defaults to ``text/plain; charset=utf-8`` for ``str`` data and
        ``application/octet-stream`` otherwise. An artifact larger than the message limit
        raises ``ValueError``: store it elsewhere and pass its ``uri``.
        """
        if not name:
            raise ValueError("an artifact needs a name")
        if data is None and not uri:
            raise ValueError("an artifact needs data or a uri")
        if isinstance(data, str):
            data = data.encode()
            media_type = media_type or "text/plain; charset=utf-8"
        response = agent_pb2.ExecuteTaskResponse()
        artifact = response.artifact
        artifact.name = name
        artifact.media_type = media_type or "application/octet-stream"
        artifact.data = data or b""
        artifact.uri = uri
        if metadata:
            artifact.metadata.update(metadata)
        size = response.ByteSize()
        if size > self._agent.max_message_bytes:
            raise ValueError(
                f"artifact {name!r} is {size} bytes, over the {self._agent.max_message_bytes}"
                " byte message limit: store it elsewhere and pass its uri"
            )
        await self._emit(response)

    def usage(
        self,
        *,
        model: str = "",
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        """Record model usage, sent with the result; repeated calls add up.

        Tokens and cost accumulate across calls (one per model request, say); ``model``
        keeps the last non-empty value.
        """
        if input_tokens < 0 or output_tokens < 0 or cost_usd < 0:
            raise ValueError("usage cannot be negative")
        usage = self._usage
        if usage is None:
            usage = self._usage = agent_pb2.Usage()
        if model:
            usage.model = model
        usage.input_tokens += input_tokens
        usage.output_tokens += output_tokens
        usage.cost_usd += cost_usd

    async def _emit(self, response: agent_pb2.ExecuteTaskResponse) -> None:
        if self._finished:
            raise RuntimeError("the task has ended: nothing more can be streamed")
        if self.cancelled:
            raise asyncio.CancelledError()
        lock = self._lock
        if lock is None:
            lock = self._lock = asyncio.Lock()
        # gRPC accepts one write at a time on a call: concurrent writes would hang.
        async with lock:
            await self._context.write(response)

    async def _finish(self, response: agent_pb2.ExecuteTaskResponse) -> None:
        self._finished = True
        lock = self._lock
        if lock is None:
            await self._context.write(response)
        else:
            async with lock:
                await self._context.write(response)

    def __repr__(self) -> str:
        return (
            f"Task(task_id={self.task_id!r}, run_id={self.run_id!r}, "
            f"step_id={self.step_id!r}, attempt={self.attempt})"
        )
