"""gRPC servicer of ``podium.orchestration.v1.OrchestrationService``.

Servicers translate protos to engine calls and engine errors to statuses; they hold no
business logic. RPCs whose engine part has not landed yet answer UNIMPLEMENTED with a
message naming the RPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.rpc import code_pb2

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.api.auth import organization_of, step_scope
from podium.server.api.errors import abort_code, streaming, unary
from podium.server.api.streams import StreamLimiter
from podium.server.engine.engine import Engine
from podium.server.engine.errors import Unavailable

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrchestrationService"].full_name


_TRACE_KEYS = ("traceparent", "tracestate")


def _trace_carrier(context: Context) -> dict[str, str] | None:
    """The caller's W3C trace context (``traceparent``, ``tracestate``) from the call
    metadata, None without one."""
    carrier = {
        key: value
        for key, value in context.invocation_metadata() or ()
        if key in _TRACE_KEYS and isinstance(value, str)
    }
    return carrier or None


class OrchestrationServicer(pb_grpc.OrchestrationServiceServicer):
    """Implements OrchestrationService on top of an :class:`Engine`.

    ``engine`` returns the engine once the database is reachable and migrated, and
    raises :class:`Unavailable` before that (the RPC then answers UNAVAILABLE).
    """

    def __init__(
        self,
        engine: Callable[[], Engine],
        organization_id: str,
        max_streams_per_connection: int = 2000,
    ) -> None:
        self._engine = engine
        self._organization_id = organization_id
        self.streams = StreamLimiter(max_streams_per_connection)
        """Open WatchRun / WatchRuns streams per client connection."""

    def _org(self, context: Context) -> str:
        # The caller's organization (api/auth.py); the configured one when auth is off.
        return organization_of(self._organization_id)

    # -- definitions -------------------------------------------------------------

    @unary
    async def CreateDefinition(
        self, request: pb.CreateDefinitionRequest, context: Context
    ) -> pb.CreateDefinitionResponse:
        definition, created = await self._engine().definitions.create(
            self._org(context),
            request.definition,
            force_new_version=request.force_new_version,
        )
        return pb.CreateDefinitionResponse(definition=definition, existing=not created)

    @unary
    async def GetDefinition(
        self, request: pb.GetDefinitionRequest, context: Context
    ) -> pb.GetDefinitionResponse:
        definition = await self._engine().definitions.get(
            self._org(context), request.name, request.version
        )
        return pb.GetDefinitionResponse(definition=definition)

    @unary
    async def ListDefinitions(
        self, request: pb.ListDefinitionsRequest, context: Context
    ) -> pb.ListDefinitionsResponse:
        definitions, token = await self._engine().definitions.list(
            self._org(context),
            page_size_requested=request.page_size,
            page_token=request.page_token,
            name_prefix=request.name_prefix,
            include_archived=request.include_archived,
        )
        return pb.ListDefinitionsResponse(definitions=definitions, next_page_token=token)

    @unary
    async def ValidateDefinition(
        self, request: pb.ValidateDefinitionRequest, context: Context
    ) -> pb.ValidateDefinitionResponse:
        definition = await self._engine().definitions.validate(
            self._org(context), request.definition
        )
        return pb.ValidateDefinitionResponse(definition=definition)

    @unary
    async def ArchiveDefinition(
        self, request: pb.ArchiveDefinitionRequest, context: Context
    ) -> pb.ArchiveDefinitionResponse:
        definition = await self._engine().definitions.archive(self._org(context), request.name)
        return pb.ArchiveDefinitionResponse(definition=definition)

    # -- runs --------------------------------------------------------------------------

    @unary
    async def StartRun(self, request: pb.StartRunRequest, context: Context) -> pb.StartRunResponse:
        engine = self._engine()
        # INVALID_ARGUMENT on webhook_url for a refused target (SSRF guard), or
        # FAILED_PRECONDITION when webhooks are off (no PODIUM_WEBHOOK_SECRET).
        await engine.webhooks.check_url(request.webhook_url)
        # With a step credential the run becomes a child run of the credential's step.
        run, existing = await engine.runs.start(
            self._org(context), request, _trace_carrier(context), parent=step_scope()
        )
        return pb.StartRunResponse(run=run, existing=existing)

    @unary
    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        runs = self._engine().runs
        await runs.check_scope(self._org(context), request.run_id, step_scope())
        run = await runs.get(self._org(context), request.run_id, request.view)
        return pb.GetRunResponse(run=run)

    @unary
    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        runs, token = await self._engine().runs.list_runs(self._org(context), request, step_scope())
        return pb.ListRunsResponse(runs=runs, next_page_token=token)

    @unary
    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Context
    ) -> pb.CancelRunResponse:
        run = await self._engine().runs.cancel(self._org(context), request.run_id, request.reason)
        return pb.CancelRunResponse(run=run)

    @unary
    async def ContinueRun(
        self, request: pb.ContinueRunRequest, context: Context
    ) -> pb.ContinueRunResponse:
        run = await self._engine().runs.continue_(self._org(context), request.run_id, request.input)
        return pb.ContinueRunResponse(run=run)

    @unary
    async def ResumeRun(
        self, request: pb.ResumeRunRequest, context: Context
    ) -> pb.ResumeRunResponse:
        run = await self._engine().runs.resume(self._org(context), request.run_id)
        return pb.ResumeRunResponse(run=run)

    @unary
    async def ForkRun(self, request: pb.ForkRunRequest, context: Context) -> pb.ForkRunResponse:
        run, _ = await self._engine().runs.fork(
            self._org(context), request, _trace_carrier(context)
        )
        return pb.ForkRunResponse(run=run)

    @unary
    async def ListApprovals(
        self, request: pb.ListApprovalsRequest, context: Context
    ) -> pb.ListApprovalsResponse:
        approvals, token = await self._engine().approvals.list(self._org(context), request)
        return pb.ListApprovalsResponse(approvals=approvals, next_page_token=token)

    @unary
    async def GetApproval(
        self, request: pb.GetApprovalRequest, context: Context
    ) -> pb.GetApprovalResponse:
        approval = await self._engine().approvals.get(self._org(context), request.approval_id)
        return pb.GetApprovalResponse(approval=approval)

    @unary
    async def DecideApproval(
        self, request: pb.DecideApprovalRequest, context: Context
    ) -> pb.DecideApprovalResponse:
        approval = await self._engine().approvals.decide(self._org(context), request)
        return pb.DecideApprovalResponse(approval=approval)

    @unary
    async def ListRunEvents(
        self, request: pb.ListRunEventsRequest, context: Context
    ) -> pb.ListRunEventsResponse:
        await self._engine().runs.check_scope(self._org(context), request.run_id, step_scope())
        events, after = await self._engine().runs.list_events(
            self._org(context), request.run_id, request.after_sequence, request.page_size
        )
        return pb.ListRunEventsResponse(events=events, next_after_sequence=after)

    @unary
    async def GetRunPayload(
        self, request: pb.GetRunPayloadRequest, context: Context
    ) -> pb.GetRunPayloadResponse:
        await self._engine().runs.check_scope(self._org(context), request.run_id, step_scope())
        return await self._engine().payloads.read(self._org(context), request)

    @streaming
    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Context
    ) -> AsyncIterator[pb.WatchRunResponse]:
        await self._engine().runs.check_scope(self._org(context), request.run_id, step_scope())
        with self.streams.hold(context.peer()):
            events = self._engine().watch.watch_run(
                self._org(context), request.run_id, request.after_sequence
            )
            async for event in events:
                yield pb.WatchRunResponse(event=event)

    @streaming
    async def WatchRuns(
        self, request: pb.WatchRunsRequest, context: Context
    ) -> AsyncIterator[pb.WatchRunsResponse]:
        with self.streams.hold(context.peer()):
            async for event in self._engine().watch.watch_runs(self._org(context), request):
                yield pb.WatchRunsResponse(event=event)

    @unary
    async def ListDeliverables(
        self, request: pb.ListDeliverablesRequest, context: Context
    ) -> pb.ListDeliverablesResponse:
        deliverables, token = await self._engine().runs.list_deliverables(
            self._org(context), request
        )
        return pb.ListDeliverablesResponse(deliverables=deliverables, next_page_token=token)

    @unary
    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Context
    ) -> pb.ListWebhookDeliveriesResponse:
        deliveries, token = await self._engine().webhooks.list_deliveries(
            self._org(context), request
        )
        return pb.ListWebhookDeliveriesResponse(deliveries=deliveries, next_page_token=token)

    @unary
    async def InvalidateCache(
        self, request: pb.InvalidateCacheRequest, context: Context
    ) -> pb.InvalidateCacheResponse:
        deleted = await self._engine().cache.invalidate(
            self._org(context), request.definition_name, request.definition_version
        )
        return pb.InvalidateCacheResponse(deleted=deleted)

    # -- agents ------------------------------------------------------------------------

    @unary
    async def RegisterAgent(
        self, request: pb.RegisterAgentRequest, context: Context
    ) -> pb.RegisterAgentResponse:
        agent = await self._engine().agents.register(
            self._org(context), request.agent, lazy=request.lazy
        )
        return pb.RegisterAgentResponse(agent=agent)

    @unary
    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        agents, token = await self._engine().agents.list(
            self._org(context),
            page_size=request.page_size,
            page_token=request.page_token,
            skill=request.skill,
        )
        return pb.ListAgentsResponse(agents=agents, next_page_token=token)

    @unary
    async def GetAgent(self, request: pb.GetAgentRequest, context: Context) -> pb.GetAgentResponse:
        agent = await self._engine().agents.get(self._org(context), request.name)
        return pb.GetAgentResponse(agent=agent)

    @unary
    async def DeregisterAgent(
        self, request: pb.DeregisterAgentRequest, context: Context
    ) -> pb.DeregisterAgentResponse:
        await self._engine().agents.deregister(self._org(context), request.name)
        return pb.DeregisterAgentResponse()

    # -- external events ---------------------------------------------------------------

    @unary
    async def SendEvent(
        self, request: pb.SendEventRequest, context: Context
    ) -> pb.SendEventResponse:
        return await self._engine().external_events.send(self._org(context), request)

    # -- schedules ---------------------------------------------------------------------

    @unary
    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Context
    ) -> pb.CreateScheduleResponse:
        schedule = await self._engine().schedules.create(self._org(context), request.schedule)
        return pb.CreateScheduleResponse(schedule=schedule)

    @unary
    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        schedule = await self._engine().schedules.get(self._org(context), request.schedule_id)
        return pb.GetScheduleResponse(schedule=schedule)

    @unary
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        schedules, token = await self._engine().schedules.list_page(self._org(context), request)
        return pb.ListSchedulesResponse(schedules=schedules, next_page_token=token)

    @unary
    async def PauseSchedule(
        self, request: pb.PauseScheduleRequest, context: Context
    ) -> pb.PauseScheduleResponse:
        schedule = await self._engine().schedules.pause(self._org(context), request.schedule_id)
        return pb.PauseScheduleResponse(schedule=schedule)

    @unary
    async def ResumeSchedule(
        self, request: pb.ResumeScheduleRequest, context: Context
    ) -> pb.ResumeScheduleResponse:
        schedule = await self._engine().schedules.resume(self._org(context), request.schedule_id)
        return pb.ResumeScheduleResponse(schedule=schedule)

    @unary
    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Context
    ) -> pb.DeleteScheduleResponse:
        await self._engine().schedules.delete(self._org(context), request.schedule_id)
        return pb.DeleteScheduleResponse()

    # -- routing policy ----------------------------------------------------------------

    @unary
    async def GetRoutingPolicy(
        self, request: pb.GetRoutingPolicyRequest, context: Context
    ) -> pb.GetRoutingPolicyResponse:
        policy = await self._engine().policies.get(self._org(context))
        return pb.GetRoutingPolicyResponse(policy=policy)

    @unary
    async def UpdateRoutingPolicy(
        self, request: pb.UpdateRoutingPolicyRequest, context: Context
    ) -> pb.UpdateRoutingPolicyResponse:
        policy = await self._engine().policies.update(self._org(context), request)
        return pb.UpdateRoutingPolicyResponse(policy=policy)

    @unary
    async def GetUsage(self, request: pb.GetUsageRequest, context: Context) -> pb.GetUsageResponse:
        return await self._engine().usage.get_usage(self._org(context), request)


def _unimplemented(method: str) -> Callable[..., Any]:
    async def handler(self: OrchestrationServicer, request: Any, context: Context) -> None:
        await abort_code(
            context,
            code_pb2.UNIMPLEMENTED,
            f"{SERVICE_NAME}/{method} is part of the contract but not implemented by this "
            "Podium version yet",
            "NOT_IMPLEMENTED",
        )

    handler.__name__ = method
    return handler


# Every RPC of the contract that has no implementation above answers UNIMPLEMENTED with
# a clear message instead of the generated stub's bare "Method not implemented!".
for _method in pb.DESCRIPTOR.services_by_name["OrchestrationService"].methods:
    if _method.name not in OrchestrationServicer.__dict__:
        setattr(OrchestrationServicer, _method.name, _unimplemented(_method.name))


def engine_unavailable() -> Engine:
    """Engine provider used before the database is ready."""
    raise Unavailable("Podium is starting: the database is not ready yet", reason="NOT_READY")
