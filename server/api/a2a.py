"""Podium as an A2A agent: ``lf.a2a.v1.A2AService`` on the gRPC port.

:class:`PodiumRequestHandler` implements a2a-sdk's ``RequestHandler`` on the engine
(a task is a run: :mod:`.a2a_tasks`); :class:`A2AServicer` is the SDK's ``GrpcHandler``
over it, each method decorated like the orchestration servicer's (request strings
checked, engine errors as rich statuses, nothing unexpected leaks but INTERNAL). The
caller's organization comes from :class:`~podium.server.api.auth.AuthInterceptor`, which
checks these methods as it checks OrchestrationService's. The JSON-RPC binding
(``server/gateway/a2a.py``) is a client of this service. What each call does:
docs/a2a.md, section "Podium as an A2A agent".
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers.grpc_handler import GrpcHandler
from a2a.server.request_handlers.request_handler import (
    RequestHandler,
    validate_request_params,
)
from a2a.types import a2a_pb2
from a2a.utils import errors as a2a_errors

from podium.orchestration.v1 import approval_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.api.a2a_tasks import (
    CONTEXT_LABEL,
    RUN_STATES,
    a2a_error,
    event_updates,
    invalid_params,
    is_final,
    message_input,
    podium_options,
    run_to_task,
    task_id_of,
    task_state,
)
from podium.server.api.auth import PERMISSIONS, current_principal, organization_of
from podium.server.api.errors import streaming, unary
from podium.server.api.streams import StreamLimiter
from podium.server.engine.approvals import DECISIONS
from podium.server.engine.engine import Engine
from podium.server.engine.errors import (
    EngineError,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
)

__all__ = ["A2A_SERVICE_NAME", "A2AServicer", "PodiumRequestHandler"]

A2A_SERVICE_NAME = a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].full_name

MAX_SKILLS = 1000
"""The agent card lists at most this many definitions (by name) as skills."""

_MODES = ("start", "create", "continue", "resume")
_START_FIELDS = {
    "input": "message.parts",
    "request_id": "message.message_id",
    "labels": "message.context_id",
    "definition": "message.metadata.podium.definition",
}
_DECIDE_FIELDS = {
    "input": "message.parts",
    "request_id": "message.message_id",
    "decision": "message.metadata.podium.decision",
    "approval_id": "message.metadata.podium.approval_id",
}
_OUTPUT_MODES = frozenset({"application/json", "text/plain"})

Interfaces = Callable[[], Sequence[a2a_pb2.AgentInterface]]


def _string(options: dict[str, Any], key: str) -> str:
    value = options.get(key, "")
    if not isinstance(value, str):
        raise invalid_params(f"message.metadata.podium.{key}", "must be a string")
    text: str = value
    return text


class PodiumRequestHandler(RequestHandler):
    """A2A requests on the engine, for the caller's organization (module docstring)."""

    def __init__(
        self, engine: Callable[[], Engine], organization_id: str, interfaces: Interfaces
    ) -> None:
        self._engine = engine
        self._organization_id = organization_id
        self._interfaces = interfaces

    def _org(self) -> str:
        return organization_of(self._organization_id)

    # -- reading ---------------------------------------------------------------------

    async def _task(self, run_id: str) -> a2a_pb2.Task:
        engine = self._engine()
        try:
            run = await engine.runs.get(self._org(), run_id, run_pb2.RUN_VIEW_FULL)
        except EngineError as exc:
            raise a2a_error(exc) from None
        return run_to_task(run, await self._pending(run))

    async def _pending(self, run: run_pb2.Run) -> list[approval_pb2.Approval]:
        """The pending approvals of a paused run (its question); none otherwise."""
        if run.state != run_pb2.Run.STATE_PAUSED:
            return []
        approvals, _ = await self._engine().approvals.list(
            self._org(),
            pb.ListApprovalsRequest(run_id=run.id, states=[approval_pb2.Approval.STATE_PENDING]),
        )
        return approvals

    @validate_request_params
    async def on_get_task(
        self, params: a2a_pb2.GetTaskRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | None:
        _no_tenant(params.tenant)
        if params.HasField("history_length") and params.history_length < 0:
            raise invalid_params("history_length", "must not be negative")
        return await self._task(task_id_of(params.id))

    @validate_request_params
    async def on_list_tasks(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        _no_tenant(params.tenant)
        if params.HasField("status_timestamp_after"):
            raise invalid_params(
                "status_timestamp_after", "not supported by Podium; filter by status or context"
            )
        request = pb.ListRunsRequest(
            page_size=params.page_size,
            page_token=params.page_token,
            view=run_pb2.RUN_VIEW_FULL if params.include_artifacts else run_pb2.RUN_VIEW_BASIC,
        )
        if params.status:
            if params.status not in RUN_STATES:
                return a2a_pb2.ListTasksResponse()  # no run is REJECTED or AUTH_REQUIRED
            request.states.append(RUN_STATES[params.status])  # type: ignore[arg-type]
        if params.context_id:
            request.labels[CONTEXT_LABEL] = params.context_id
        try:
            runs, token = await self._engine().runs.list_runs(self._org(), request)
        except EngineError as exc:
            raise a2a_error(exc, {"page_token": "page_token", "page_size": "page_size"}) from None
        tasks = [
            run_to_task(run, await self._pending(run), include_artifacts=params.include_artifacts)
            for run in runs
        ]
        return a2a_pb2.ListTasksResponse(
            tasks=tasks, next_page_token=token, page_size=len(tasks), total_size=len(tasks)
        )

    async def on_get_extended_agent_card(
        self, params: a2a_pb2.GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> a2a_pb2.AgentCard:
        _no_tenant(params.tenant)
        card = base_card(self._interfaces())
        token = ""
        while len(card.skills) < MAX_SKILLS:
            definitions, token = await self._engine().definitions.list(
                self._org(), page_size_requested=200, page_token=token
            )
            for definition in definitions:
                card.skills.append(
                    a2a_pb2.AgentSkill(
                        id=definition.name,
                        name=definition.name,
                        description=definition.description
                        or f"runs the definition {definition.name}",
                        tags=[f"version:{definition.version}"],
                    )
                )
            if not token:
                break
        del card.skills[MAX_SKILLS:]
        return card

    # -- runs ------------------------------------------------------------------------

    async def _send(self, params: a2a_pb2.SendMessageRequest) -> tuple[str, int | None]:
        """Start, create, continue, decide or resume by the message (docs/a2a.md); the
        run id and the event sequence from which its updates are new (None for a run
        only created: nothing happens until it is continued)."""
        _no_tenant(params.tenant)
        message = params.message
        config = params.configuration
        if config.HasField("task_push_notification_config"):
            raise a2a_errors.PushNotificationNotSupportedError()
        if config.accepted_output_modes and not _OUTPUT_MODES & set(config.accepted_output_modes):
            raise a2a_errors.ContentTypeNotSupportedError(
                "Podium answers application/json and text/plain only"
            )
        options = podium_options(message.metadata)
        mode = _string(options, "mode") or ("continue" if message.task_id else "start")
        if mode not in _MODES:
            raise invalid_params("message.metadata.podium.mode", f"one of {', '.join(_MODES)}")
        run_input = message_input(message)
        if mode in ("start", "create"):
            if message.task_id:
                raise invalid_params("message.task_id", f"mode {mode} starts a new task")
            run_id = await self._start(message, options, run_input, start=mode == "start")
            return run_id, 0 if mode == "start" else None
        if not message.task_id:
            raise invalid_params("message.task_id", f"mode {mode} needs the task to {mode}")
        run_id = task_id_of(message.task_id)
        engine = self._engine()
        org = self._org()
        try:
            run = await engine.runs.get(org, run_id, run_pb2.RUN_VIEW_BASIC)
            after = run.last_event_sequence
            if mode == "resume":
                _require("ResumeRun")
                await engine.runs.resume(org, run_id)
            elif run.state == run_pb2.Run.STATE_PAUSED:
                _require("DecideApproval")
                await self._decide(run, message, options, run_input)
            else:
                _require("ContinueRun")
                await engine.runs.continue_(org, run_id, run_input)
        except EngineError as exc:
            raise a2a_error(exc, _DECIDE_FIELDS) from None
        return run_id, after

    async def _start(
        self,
        message: a2a_pb2.Message,
        options: dict[str, Any],
        run_input: Any,
        *,
        start: bool,
    ) -> str:
        name = _string(options, "definition") or _string(options, "skill")
        if not name:
            raise invalid_params(
                "message.metadata.podium.definition",
                "name the definition to run (or the skill id of the agent card)",
            )
        version = options.get("version", 0)
        if not isinstance(version, int | float) or version != int(version) or version < 0:
            raise invalid_params("message.metadata.podium.version", "a version number")
        request = pb.StartRunRequest(
            definition=pb.DefinitionRef(name=name, version=int(version)),
            input=run_input,
            request_id=message.message_id,
            start=start,
            labels={CONTEXT_LABEL: message.context_id} if message.context_id else {},
        )
        request.metadata.update({"a2a": {"message_id": message.message_id}})
        try:
            run, _ = await self._engine().runs.start(self._org(), request)
        except (NotFound, FailedPrecondition) as exc:
            # No such definition, or an archived one: the caller named the wrong one.
            raise invalid_params("message.metadata.podium.definition", exc.message) from None
        except EngineError as exc:
            raise a2a_error(exc, _START_FIELDS) from None
        return run.id

    async def _decide(
        self,
        run: run_pb2.Run,
        message: a2a_pb2.Message,
        options: dict[str, Any],
        run_input: Any,
    ) -> None:
        """The answer to a paused run's question: decide its pending approval (the one
        named by ``podium.approval_id``, else the first)."""
        decision = _string(options, "decision") or "approve"
        if decision not in DECISIONS:
            raise invalid_params(
                "message.metadata.podium.decision", f"one of {', '.join(DECISIONS)}"
            )
        approval_id = _string(options, "approval_id")
        if not approval_id:
            pending = await self._pending(run)
            if not pending:
                raise a2a_errors.UnsupportedOperationError(
                    f"task {run.id} waits on no approval any more"
                )
            approval_id = pending[0].id
        await self._engine().approvals.decide(
            self._org(),
            pb.DecideApprovalRequest(
                approval_id=approval_id,
                decision=DECISIONS[decision],
                comment=_string(options, "comment"),
                actor="a2a",
                request_id=message.message_id,
                input=run_input,
            ),
        )

    async def _follow(self, run_id: str, after: int) -> AsyncIterator[Event]:
        """The task's updates from the run's event log after ``after``, ending after a
        terminal or INPUT_REQUIRED one."""
        engine = self._engine()
        org = self._org()
        context_id = ""
        try:
            async for event in engine.watch.watch_run(org, run_id, after):
                state = task_state(event.run_state)
                run = None
                if not context_id or is_final(state):
                    run = await engine.runs.get(
                        org,
                        run_id,
                        run_pb2.RUN_VIEW_FULL if is_final(state) else run_pb2.RUN_VIEW_BASIC,
                    )
                    context_id = run.labels.get(CONTEXT_LABEL) or run_id
                approvals = await self._pending(run) if run is not None else []
                for update in event_updates(
                    event, context_id, run=run if is_final(state) else None, approvals=approvals
                ):
                    yield update
                if is_final(state):
                    return
        except EngineError as exc:
            raise a2a_error(exc) from None

    @validate_request_params
    async def on_message_send(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | a2a_pb2.Message:
        run_id, after = await self._send(params)
        if after is not None and not params.configuration.return_immediately:
            async for _ in self._follow(run_id, after):
                pass  # until the task ends or asks a question
        return await self._task(run_id)

    @validate_request_params
    async def on_message_send_stream(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        run_id, after = await self._send(params)
        task = await self._task(run_id)
        yield task
        if after is None or is_final(task.status.state):
            return
        async for update in self._follow(run_id, after):
            yield update

    @validate_request_params
    async def on_subscribe_to_task(
        self, params: a2a_pb2.SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        _no_tenant(params.tenant)
        task = await self._task(task_id_of(params.id))
        state = task.status.state
        if is_final(state) and state != a2a_pb2.TASK_STATE_INPUT_REQUIRED:
            raise a2a_errors.UnsupportedOperationError(
                f"task {task.id} is {a2a_pb2.TaskState.Name(state)}: nothing to subscribe to"
            )
        yield task
        if state == a2a_pb2.TASK_STATE_INPUT_REQUIRED:
            return
        podium = task.metadata.fields["podium"].struct_value
        sequence = int(podium.fields["last_event_sequence"].number_value)
        async for update in self._follow(task.id, sequence):
            yield update

    @validate_request_params
    async def on_cancel_task(
        self, params: a2a_pb2.CancelTaskRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | None:
        _no_tenant(params.tenant)
        run_id = task_id_of(params.id)
        reason = params.metadata["reason"] if "reason" in params.metadata else "cancelled over A2A"
        try:
            await self._engine().runs.cancel(self._org(), run_id, str(reason))
        except EngineError as exc:
            raise a2a_error(exc, cancel=True) from None
        return await self._task(run_id)

    # -- push notifications: not offered (the card says so) ----------------------------

    async def on_create_task_push_notification_config(
        self, params: a2a_pb2.TaskPushNotificationConfig, context: ServerCallContext
    ) -> a2a_pb2.TaskPushNotificationConfig:
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_get_task_push_notification_config(
        self,
        params: a2a_pb2.GetTaskPushNotificationConfigRequest,
        context: ServerCallContext,
    ) -> a2a_pb2.TaskPushNotificationConfig:
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_list_task_push_notification_configs(
        self,
        params: a2a_pb2.ListTaskPushNotificationConfigsRequest,
        context: ServerCallContext,
    ) -> a2a_pb2.ListTaskPushNotificationConfigsResponse:
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_delete_task_push_notification_config(
        self,
        params: a2a_pb2.DeleteTaskPushNotificationConfigRequest,
        context: ServerCallContext,
    ) -> None:
        raise a2a_errors.PushNotificationNotSupportedError()


def _version() -> str:
    try:
        return importlib.metadata.version("podium")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree
        return "0"


def _require(rpc: str) -> None:
    """A message that does what ``rpc`` does needs a role that may call it (an agent
    key may start tasks, as it may start runs, but not decide or resume them)."""
    principal = current_principal.get()
    if principal is not None and principal.role not in PERMISSIONS[rpc]:
        raise PermissionDenied(
            f"the role {principal.role!r} may not {rpc.removesuffix('Run').lower()} a task "
            f"(what {rpc} does)",
            reason="ROLE_NOT_ALLOWED",
        )


def _no_tenant(tenant: str) -> None:
    if tenant:
        raise invalid_params("tenant", "not used by Podium: the API key names the organization")


def base_card(interfaces: Sequence[a2a_pb2.AgentInterface]) -> a2a_pb2.AgentCard:
    """Podium's agent card without skills (GetExtendedAgentCard adds the caller's
    organization's definitions)."""
    return a2a_pb2.AgentCard(
        name="Podium",
        description="Runs the organization's orchestration definitions: one task is one run.",
        version=_version(),
        supported_interfaces=interfaces,
        capabilities=a2a_pb2.AgentCapabilities(
            streaming=True, push_notifications=False, extended_agent_card=True
        ),
        default_input_modes=["application/json", "text/plain"],
        default_output_modes=["application/json", "text/plain"],
    )


class A2AServicer(GrpcHandler):
    """``lf.a2a.v1.A2AService``: the SDK's servicer over :class:`PodiumRequestHandler`
    (A2A errors as the SDK sends them; engine errors and the unexpected as Podium's
    rich statuses). Its streams count against ``streams``, the per-connection limit of
    WatchRun and WatchRuns."""

    def __init__(self, handler: PodiumRequestHandler, streams: StreamLimiter) -> None:
        super().__init__(handler)
        self._streams = streams

    async def SendStreamingMessage(
        self, request: a2a_pb2.SendMessageRequest, context: Any
    ) -> AsyncIterator[a2a_pb2.StreamResponse]:
        with self._streams.hold(context.peer()):
            async for response in super().SendStreamingMessage(request, context):
                yield response

    async def SubscribeToTask(
        self, request: a2a_pb2.SubscribeToTaskRequest, context: Any
    ) -> AsyncIterator[a2a_pb2.StreamResponse]:
        with self._streams.hold(context.peer()):
            async for response in super().SubscribeToTask(request, context):
                yield response


for _method in a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].methods:
    _own = A2AServicer.__dict__.get(_method.name) or getattr(GrpcHandler, _method.name)
    setattr(
        A2AServicer,
        _method.name,
        streaming(_own) if _method.server_streaming else unary(_own),
    )
