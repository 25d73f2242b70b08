"""One step attempt on an A2A agent: its calls, once the agent's protocol is known.

:class:`AttemptCalls` sends the step as ``SendStreamingMessage`` and follows the task
until it is done (the events are read by
:class:`~podium.server.agents.a2a_events.AttemptState`):

- a stream cut before the task is done (it ends without a terminal or interrupted
  state, or breaks with UNAVAILABLE, INTERNAL or UNKNOWN without an A2A error once the
  task exists) is followed by ``SubscribeToTask`` (at most :data:`MAX_RESUBSCRIBES`
  times); a subscription refused with an A2A error (the task already ended) is
  answered by ``GetTask``, the final snapshot;
- a missed deadline, a reply that cannot be read, cancellation of the awaiting task or
  a failing callback end the stream and send ``CancelTask`` (bounded, best effort). An
  attempt abandoned before its first event finds its task by the context (1.0:
  ``ListTasks``) or, as 0.3 has no ``ListTasks``, by the stream's next event.

The calls go to ``api``: the ``lf.a2a.v1`` stub, or a
:class:`~podium.server.agents.a2a_v03.V03Api` with the same calls and types.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any, cast

import grpc
from a2a.types import a2a_pb2
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from podium.agent.v1 import agent_pb2
from podium.server.agents.a2a_events import A2AOutcome, AttemptState, StreamCut
from podium.server.agents.a2a_v03 import A2AConversionError, is_v03_a2a_error
from podium.server.agents.client import (
    DEADLINE_EXCEEDED,
    TaskFailed,
    channel_closed,
    channel_closed_failure,
    protocol_failure,
    transport_failure,
)

__all__ = ["MAX_RESUBSCRIBES", "AttemptCalls", "has_a2a_error", "send_request"]

log = logging.getLogger("podium.agents.a2a")

MAX_RESUBSCRIBES = 5
"""How many times one attempt re-subscribes to its task after a cut stream."""
# A stream failing with one of these (without an A2A error) after the task was created
# is treated as cut: the task may well go on; SubscribeToTask tells.
_CUT_STATUSES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)
_A2A_ERROR_DOMAIN = "a2a-protocol.org"
_ACTIVE = (a2a_pb2.TaskState.TASK_STATE_SUBMITTED, a2a_pb2.TaskState.TASK_STATE_WORKING)


def has_a2a_error(exc: grpc.aio.AioRpcError) -> bool:
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


class _DeadlineError(Exception):
    """The attempt's deadline passed between two calls."""


class AttemptCalls:
    """The calls of one attempt (see the module docstring).

    Args:
        api: the ``lf.a2a.v1`` calls of the endpoint's protocol version.
        legacy: whether the agent speaks 0.3 (no ``ListTasks``).
        state: the attempt's view of its task, with its callbacks.
        deadline: ``loop.time()`` by which the whole attempt must end.
        metadata: call metadata, the A2A version header included.
        cancel_timeout: how long each call made to cancel the task may take.
        endpoint: for logs.
    """

    def __init__(
        self,
        api: Any,
        *,
        legacy: bool,
        state: AttemptState,
        deadline: float,
        metadata: Sequence[tuple[str, str]],
        cancel_timeout: float,
        endpoint: str,
    ) -> None:
        self.api = api
        self.legacy = legacy
        self.state = state
        self.deadline = deadline
        self.metadata = tuple(metadata)
        self.cancel_timeout = cancel_timeout
        self.endpoint = endpoint
        self.call: Any = None
        # Set once the outcome is decided: from then on, leaving is not abandoning.
        self.finished = False

    def _remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    async def run(self, request: a2a_pb2.SendMessageRequest) -> A2AOutcome:
        """Send ``request`` and return the attempt's outcome.

        Raises:
            asyncio.CancelledError: the awaiting task was cancelled (the task is
                cancelled too).
            Exception: whatever a callback raised (the task is cancelled too).
        """
        self.call = self.api.SendStreamingMessage(
            request, timeout=max(self._remaining(), 0.001), metadata=self.metadata
        )
        try:
            failure = await self._follow()
            self.finished = True
            if failure is not None:
                return failure
        except _DeadlineError:
            self.finished = True
            self.call.cancel()
            await self.cancel_task(self.state.task_id)
            return TaskFailed(
                code=DEADLINE_EXCEEDED,
                message="the A2A task outlived the step's deadline",
                retryable=True,
                origin="transport",
                grpc_status="DEADLINE_EXCEEDED",
                artifacts=tuple(self.state.files),
            )
        except A2AConversionError as exc:
            self.finished = True
            self.call.cancel()
            await self.cancel_task(self.state.task_id)
            return protocol_failure(str(exc), self.state.files)
        except grpc.aio.AioRpcError as exc:
            self.finished = True
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                await self.cancel_task(self.state.task_id)
            return transport_failure(exc, self.state.files)
        except asyncio.CancelledError:
            if channel_closed(self.call):
                self.finished = True
                return channel_closed_failure(self.state.files)
            raise
        finally:
            if not self.finished:
                await self._abandon()
        return self.state.outcome()

    # -- following the task

    async def _follow(self) -> TaskFailed | None:
        """Read the stream until the task is done, re-subscribing after each cut.

        Returns:
            None when the task is done (its outcome is ``state.outcome()``), else the
            failure that ended the attempt.

        Raises:
            grpc.aio.AioRpcError: a call failed for good.
            _DeadlineError: the deadline passed before a re-subscription.
        """
        state = self.state
        resubscribes = 0
        last_error: grpc.aio.AioRpcError | None = None
        while True:
            try:
                await state.consume(self.call)
                return None
            except StreamCut:
                pass
            except grpc.aio.AioRpcError as exc:
                if not state.task_id:
                    raise
                if has_a2a_error(exc):
                    if not resubscribes:
                        raise
                    # Subscribing is refused once the task ended: read its state.
                    if await self._read_task():
                        return None
                elif exc.code() in _CUT_STATUSES:
                    # The connection broke mid-stream (e.g. a proxy reset it).
                    last_error = exc
                else:
                    raise
            if not state.task_id:
                return protocol_failure(
                    "the A2A stream ended before the agent created a task", state.files
                )
            resubscribes += 1
            if resubscribes > MAX_RESUBSCRIBES:
                if last_error is not None:
                    raise last_error
                self.finished = True
                await self.cancel_task(state.task_id)
                return protocol_failure(
                    f"the A2A stream of task {state.task_id} was cut {resubscribes} times",
                    state.files,
                )
            self._resubscribe()

    async def _read_task(self) -> bool:
        """Take the task's state from ``GetTask``; whether the task is done."""
        task = await self.api.GetTask(
            a2a_pb2.GetTaskRequest(id=self.state.task_id),
            timeout=max(self._remaining(), 0.001),
            metadata=self.metadata,
        )
        await self.state.snapshot(task)
        return self.state.done

    def _resubscribe(self) -> None:
        """Follow the task on a new ``SubscribeToTask`` stream."""
        log.info(
            "A2A stream cut; re-subscribing",
            extra={"endpoint": self.endpoint, "a2a_task_id": self.state.task_id},
        )
        remaining = self._remaining()
        if remaining <= 0:
            raise _DeadlineError
        self.call = self.api.SubscribeToTask(
            a2a_pb2.SubscribeToTaskRequest(id=self.state.task_id),
            timeout=remaining,
            metadata=self.metadata,
        )

    # -- cancelling the task

    async def _abandon(self) -> None:
        """Cancelled (or a callback raised): end the stream and stop the A2A task too.
        Cancelled before the first event, its task is found by the context id (1.0:
        ListTasks) or, as 0.3 has no ListTasks, by the stream's next event."""
        task_ids = [self.state.task_id] if self.state.task_id else []
        if not task_ids and self.legacy:
            task_ids = await self._next_task_id()
        self.call.cancel()
        if not task_ids:
            task_ids = await self._active_tasks()
        for task_id in task_ids:
            await self.cancel_task(task_id)

    async def _next_task_id(self) -> list[str]:
        """The task id of the next events of the stream that carry one (bounded by the
        cancel timeout, best effort: [] when none comes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cancel_timeout
        try:
            while (remaining := deadline - loop.time()) > 0:
                async with asyncio.timeout(remaining):
                    message = await self.call.read()
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

    async def _active_tasks(self) -> list[str]:
        """The ids of the context's tasks still submitted or working (``ListTasks``;
        bounded, best effort: [] on any failure)."""
        context_id = self.state.context_id
        if not context_id:
            return []
        try:
            response = await self.api.ListTasks(
                a2a_pb2.ListTasksRequest(context_id=context_id, history_length=0),
                timeout=self.cancel_timeout,
                metadata=self.metadata,
            )
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            log.warning("A2A ListTasks of context %s failed: %r", context_id, exc)
            return []
        listed = cast(a2a_pb2.ListTasksResponse, response)
        return [task.id for task in listed.tasks if task.status.state in _ACTIVE]

    async def cancel_task(self, task_id: str) -> None:
        """Send CancelTask for ``task_id`` (best effort, bounded; never raises)."""
        if not task_id:
            return
        try:
            await asyncio.shield(
                self.api.CancelTask(
                    a2a_pb2.CancelTaskRequest(id=task_id),
                    timeout=self.cancel_timeout,
                    metadata=self.metadata,
                )
            )
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            log.warning("A2A CancelTask of %s failed: %r", task_id, exc)
        except Exception:
            log.exception("A2A CancelTask of %s failed", task_id)


def send_request(
    request: agent_pb2.ExecuteTaskRequest, resume_task_id: str
) -> a2a_pb2.SendMessageRequest:
    """The SendMessageRequest of an ExecuteTaskRequest: one user message with the input
    as a ``data`` part, ``context_id`` = the conversation id, Podium's ids under the
    metadata key ``podium``, and ``task_id`` = ``resume_task_id`` for a continuation."""
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
