"""Organizations: a key acts only inside its organization.

The matrix calls EVERY RPC of OrchestrationService and of lf.a2a.v1.A2AService (Podium
as an A2A agent; enumerated from the service descriptors: a new RPC without a case
fails) with organization B's admin key on
organization A's objects (run, definition, approval, agent, schedule, webhook
delivery, event): each answers NOT_FOUND or an empty list (never PERMISSION_DENIED,
never A's data), and A's rows are the same afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.protobuf import json_format

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import agent_pb2, approval_pb2, policy_pb2, schedule_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.conftest import StartServer, bearer_channel, static_agents
from tests.integration.runs_helpers import definition, struct, wait_until

A = "default"
B = "org-b"
RPCS = [
    *(m.name for m in pb.DESCRIPTOR.services_by_name["OrchestrationService"].methods),
    *(m.name for m in a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].methods),
]

Stub = Any


@dataclass
class World:
    """Organization A's objects, and stubs acting for A and for B."""

    a: Stub
    b: Stub
    a2a_b: Stub
    """lf.a2a.v1.A2AService for B."""
    conn: asyncpg.Connection[asyncpg.Record]
    run_id: str
    waiting_run_id: str
    approval_id: str
    schedule_id: str


@pytest.fixture
async def world(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> AsyncIterator[World]:
    server = await start_server(auth="required", agents=static_agents(example_agents, "echo"))
    key_a = (await server.engine.api_keys.create(A, "admin", "a")).key
    key_b = (await server.engine.api_keys.create(B, "admin", "b")).key
    conn = await asyncpg.connect(database_url)
    async with (
        bearer_channel(server.address, key_a) as channel_a,
        bearer_channel(server.address, key_b) as channel_b,
    ):
        a = pb_grpc.OrchestrationServiceStub(channel_a)
        b = pb_grpc.OrchestrationServiceStub(channel_b)
        gate = {"id": "gate", "agent": "echo", "input": {"q": 1}}
        gate["checkpoint"] = {"when": "WHEN_BEFORE"}
        wait = {"id": "w", "wait_for_event": {"name": "go", "key": "k"}}
        await a.CreateDefinition(
            pb.CreateDefinitionRequest(definition=definition("flow-a", [gate]))
        )
        wait = {"id": "w", "wait_for_event": {"name": "go", "key": "k"}}
        await a.CreateDefinition(
            pb.CreateDefinitionRequest(definition=definition("wait-a", [wait]))
        )
        await a.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=agent_pb2.Agent(name="reg-a", endpoint="127.0.0.1:9"), lazy=True
            )
        )
        run = await a.StartRun(
            pb.StartRunRequest(definition=pb.DefinitionRef(name="flow-a"), start=True)
        )
        waiting = await a.StartRun(
            pb.StartRunRequest(definition=pb.DefinitionRef(name="wait-a"), start=True)
        )
        schedule = await a.CreateSchedule(
            pb.CreateScheduleRequest(
                schedule=schedule_pb2.Schedule(definition_name="wait-a", cron="0 0 1 1 *")
            )
        )
        await a.SendEvent(pb.SendEventRequest(event_id="evt-a", name="other", key="k"))
        # A denies agent "x": B's definitions may still use it (_create_definition).
        await a.UpdateRoutingPolicy(
            pb.UpdateRoutingPolicyRequest(policy=policy_pb2.RoutingPolicy(denied_agents=["x"]))
        )
        approvals: list[approval_pb2.Approval] = []

        async def pending() -> bool:
            listed = await a.ListApprovals(pb.ListApprovalsRequest(run_id=run.run.id))
            approvals[:] = listed.approvals
            return bool(approvals)

        await wait_until(pending, "A's approval", within=30)

        async def parked() -> bool:
            # A's waiting run waits for its event before the snapshot is taken: its own
            # progress would otherwise look like a change made by B's calls.
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM event_waits WHERE run_id = $1",
                    uuid.UUID(waiting.run.id),
                )
            )

        await wait_until(parked, "A's waiting run to wait for its event", within=30)
        await conn.execute(
            "INSERT INTO webhook_deliveries (organization_id, url, run_id, sequence, payload,"
            " state) VALUES ($1, 'https://example.com/hook', $2, 1, '{}', 'delivered')",
            A,
            uuid.UUID(run.run.id),
        )
        try:
            yield World(
                a,
                b,
                a2a_pb2_grpc.A2AServiceStub(channel_b),  # type: ignore[no-untyped-call]
                conn,
                run.run.id,
                waiting.run.id,
                approvals[0].id,
                schedule.schedule.id,
            )
        finally:
            await conn.close()


Case = Callable[[World], Awaitable[Any]]


def _not_found(call: Callable[[World], Awaitable[Any]]) -> Case:
    async def case(w: World) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(w)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND, caught.value.details()

    return case


async def _stream_not_found(call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND, caught.value.details()


async def _watch_runs_sees_nothing(w: World) -> None:
    call = w.b.WatchRuns(pb.WatchRunsRequest())
    try:
        # A's events (a run started now) must not reach B's stream.
        await w.a.StartRun(
            pb.StartRunRequest(definition=pb.DefinitionRef(name="wait-a"), start=True)
        )
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call.read(), timeout=1.5)
    finally:
        call.cancel()


async def _create_definition(w: World) -> None:
    # B's own "flow-a": version 1 of B's, not a new version of A's.
    made = await w.b.CreateDefinition(
        pb.CreateDefinitionRequest(definition=definition("flow-a", [{"id": "s", "agent": "x"}]))
    )
    assert made.definition.version == 1 and made.definition.organization_id == B


async def _validate_definition(w: World) -> None:
    # A's definitions are not sub-orchestration targets for B.
    sub = definition("parent", [{"id": "c", "orchestration": {"name": "wait-a"}}])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await w.b.ValidateDefinition(pb.ValidateDefinitionRequest(definition=sub))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def _register_agent(w: World) -> None:
    # B's "reg-a" is B's own; A's stays as it was (checked by the snapshot).
    agent = agent_pb2.Agent(name="reg-a", endpoint="127.0.0.1:10")
    assert (
        await w.b.RegisterAgent(pb.RegisterAgentRequest(agent=agent, lazy=True))
    ).agent.name == "reg-a"


async def _send_event(w: World) -> None:
    # A's event id is not a duplicate for B, and A's waiting step does not receive B's.
    sent = await w.b.SendEvent(pb.SendEventRequest(event_id="evt-a", name="go", key="k"))
    assert not sent.duplicate and sent.delivered_steps == 0


async def _start_run(w: World) -> None:
    await w.b.StartRun(pb.StartRunRequest(definition=pb.DefinitionRef(name="wait-a"), start=True))


async def _create_schedule(w: World) -> None:
    # As for a definition that exists nowhere: INVALID_ARGUMENT on definition_name.
    schedule = schedule_pb2.Schedule(definition_name="wait-a", cron="0 0 1 1 *")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await w.b.CreateSchedule(pb.CreateScheduleRequest(schedule=schedule))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not found" in (caught.value.details() or "")


async def _get_routing_policy(w: World) -> None:
    # B's own policy: never set, not A's.
    policy = (await w.b.GetRoutingPolicy(pb.GetRoutingPolicyRequest())).policy
    assert policy.revision == 0 and not policy.denied_agents, policy


async def _update_routing_policy(w: World) -> None:
    # B's own policy (a first revision); A's row stays as it was (the snapshot).
    update = pb.UpdateRoutingPolicyRequest(policy=policy_pb2.RoutingPolicy(denied_agents=["y"]))
    policy = (await w.b.UpdateRoutingPolicy(update)).policy
    assert policy.revision == 1 and list(policy.denied_agents) == ["y"], policy


async def _empty(call: Awaitable[Any], field: str) -> None:
    response = await call
    assert list(getattr(response, field)) == [], response


def _a2a_message(**fields: Any) -> a2a_pb2.SendMessageRequest:
    message = a2a_pb2.Message(
        message_id=str(uuid.uuid4()),
        role=a2a_pb2.ROLE_USER,
        parts=[a2a_pb2.Part(text="go")],
        **fields,
    )
    return a2a_pb2.SendMessageRequest(message=message)


async def _a2a_start(w: World) -> None:
    # A's definition is not B's to run: a field violation naming it, as for StartRun's
    # INVALID_ARGUMENT cases (nothing says it exists elsewhere).
    request = _a2a_message()
    request.message.metadata.update({"podium": {"definition": "wait-a"}})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in w.a2a_b.SendStreamingMessage(request):
            pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not found" in (caught.value.details() or "")


async def _a2a_card(w: World) -> None:
    # B's card lists B's definitions: none of A's.
    card = await w.a2a_b.GetExtendedAgentCard(a2a_pb2.GetExtendedAgentCardRequest())
    assert list(card.skills) == [], card.skills


def _a2a_unsupported(call: Callable[[World], Awaitable[Any]]) -> Case:
    # Push notifications are not offered: the same answer whoever's task it names.
    async def case(w: World) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(w)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    return case


CASES: dict[str, Case] = {
    "CreateDefinition": _create_definition,
    "GetDefinition": _not_found(
        lambda w: w.b.GetDefinition(pb.GetDefinitionRequest(name="wait-a"))
    ),
    "ListDefinitions": lambda w: _empty(
        w.b.ListDefinitions(pb.ListDefinitionsRequest(include_archived=True)), "definitions"
    ),
    "ValidateDefinition": _validate_definition,
    "ArchiveDefinition": _not_found(
        lambda w: w.b.ArchiveDefinition(pb.ArchiveDefinitionRequest(name="wait-a"))
    ),
    "StartRun": _not_found(_start_run),
    "GetRun": _not_found(lambda w: w.b.GetRun(pb.GetRunRequest(run_id=w.run_id))),
    "ListRuns": lambda w: _empty(w.b.ListRuns(pb.ListRunsRequest()), "runs"),
    "GetUsage": lambda w: _empty(w.b.GetUsage(pb.GetUsageRequest()), "rows"),
    "GetRunPayload": _not_found(
        lambda w: w.b.GetRunPayload(
            pb.GetRunPayloadRequest(run_id=w.run_id, payload=pb.GetRunPayloadRequest.PAYLOAD_INPUT)
        )
    ),
    "CancelRun": _not_found(lambda w: w.b.CancelRun(pb.CancelRunRequest(run_id=w.run_id))),
    "ContinueRun": _not_found(
        lambda w: w.b.ContinueRun(pb.ContinueRunRequest(run_id=w.run_id, input=struct({"x": 1})))
    ),
    "ResumeRun": _not_found(lambda w: w.b.ResumeRun(pb.ResumeRunRequest(run_id=w.run_id))),
    "ForkRun": _not_found(
        lambda w: w.b.ForkRun(pb.ForkRunRequest(run_id=w.run_id, step_ids=["gate"]))
    ),
    "WatchRun": lambda w: _stream_not_found(w.b.WatchRun(pb.WatchRunRequest(run_id=w.run_id))),
    "WatchRuns": _watch_runs_sees_nothing,
    "ListRunEvents": _not_found(
        lambda w: w.b.ListRunEvents(pb.ListRunEventsRequest(run_id=w.run_id))
    ),
    "ListDeliverables": _not_found(
        lambda w: w.b.ListDeliverables(pb.ListDeliverablesRequest(run_id=w.run_id))
    ),
    "ListApprovals": lambda w: _empty(w.b.ListApprovals(pb.ListApprovalsRequest()), "approvals"),
    "GetApproval": _not_found(
        lambda w: w.b.GetApproval(pb.GetApprovalRequest(approval_id=w.approval_id))
    ),
    "DecideApproval": _not_found(
        lambda w: w.b.DecideApproval(
            pb.DecideApprovalRequest(
                approval_id=w.approval_id, decision=approval_pb2.DECISION_APPROVE, actor="b"
            )
        )
    ),
    "RegisterAgent": _register_agent,
    "ListAgents": lambda w: _empty(w.b.ListAgents(pb.ListAgentsRequest()), "agents"),
    "GetAgent": _not_found(lambda w: w.b.GetAgent(pb.GetAgentRequest(name="reg-a"))),
    "DeregisterAgent": _not_found(
        lambda w: w.b.DeregisterAgent(pb.DeregisterAgentRequest(name="echo"))
    ),
    "InvalidateCache": _not_found(
        lambda w: w.b.InvalidateCache(pb.InvalidateCacheRequest(definition_name="wait-a"))
    ),
    "ListWebhookDeliveries": lambda w: _empty(
        w.b.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(run_id=w.run_id)),
        "deliveries",
    ),
    "SendEvent": _send_event,
    "CreateSchedule": _create_schedule,
    "GetSchedule": _not_found(
        lambda w: w.b.GetSchedule(pb.GetScheduleRequest(schedule_id=w.schedule_id))
    ),
    "ListSchedules": lambda w: _empty(w.b.ListSchedules(pb.ListSchedulesRequest()), "schedules"),
    "PauseSchedule": _not_found(
        lambda w: w.b.PauseSchedule(pb.PauseScheduleRequest(schedule_id=w.schedule_id))
    ),
    "ResumeSchedule": _not_found(
        lambda w: w.b.ResumeSchedule(pb.ResumeScheduleRequest(schedule_id=w.schedule_id))
    ),
    "DeleteSchedule": _not_found(
        lambda w: w.b.DeleteSchedule(pb.DeleteScheduleRequest(schedule_id=w.schedule_id))
    ),
    "GetRoutingPolicy": _get_routing_policy,
    "UpdateRoutingPolicy": _update_routing_policy,
    # lf.a2a.v1.A2AService: a task is a run.
    "GetExtendedAgentCard": _a2a_card,
    "GetTask": _not_found(lambda w: w.a2a_b.GetTask(a2a_pb2.GetTaskRequest(id=w.run_id))),
    "ListTasks": lambda w: _empty(w.a2a_b.ListTasks(a2a_pb2.ListTasksRequest()), "tasks"),
    "CancelTask": _not_found(lambda w: w.a2a_b.CancelTask(a2a_pb2.CancelTaskRequest(id=w.run_id))),
    "SubscribeToTask": lambda w: _stream_not_found(
        w.a2a_b.SubscribeToTask(a2a_pb2.SubscribeToTaskRequest(id=w.waiting_run_id))
    ),
    # The answer to A's question (its paused run) from B.
    "SendMessage": _not_found(lambda w: w.a2a_b.SendMessage(_a2a_message(task_id=w.run_id))),
    "SendStreamingMessage": _a2a_start,
    "CreateTaskPushNotificationConfig": _a2a_unsupported(
        lambda w: w.a2a_b.CreateTaskPushNotificationConfig(
            a2a_pb2.TaskPushNotificationConfig(task_id=w.run_id)
        )
    ),
    "GetTaskPushNotificationConfig": _a2a_unsupported(
        lambda w: w.a2a_b.GetTaskPushNotificationConfig(
            a2a_pb2.GetTaskPushNotificationConfigRequest(task_id=w.run_id, id="c")
        )
    ),
    "ListTaskPushNotificationConfigs": _a2a_unsupported(
        lambda w: w.a2a_b.ListTaskPushNotificationConfigs(
            a2a_pb2.ListTaskPushNotificationConfigsRequest(task_id=w.run_id)
        )
    ),
    "DeleteTaskPushNotificationConfig": _a2a_unsupported(
        lambda w: w.a2a_b.DeleteTaskPushNotificationConfig(
            a2a_pb2.DeleteTaskPushNotificationConfigRequest(task_id=w.run_id, id="c")
        )
    ),
}


B_WRITES = {"CreateDefinition", "RegisterAgent", "SendEvent", "UpdateRoutingPolicy"}
"""Cases that make B objects (in B) named like A's: they run after the reads."""


def test_every_rpc_has_a_cross_organization_case() -> None:
    assert sorted(CASES) == sorted(RPCS), "add a case for each new RPC"


# Columns that change with time whatever anyone calls.
_VOLATILE = {"last_used_at", "lease_expires_at", "heartbeat_at", "next_run_at"}


async def snapshot_of_a(conn: asyncpg.Connection[asyncpg.Record]) -> dict[str, list[str]]:
    """Every row of organization A (tables with organization_id; tables keyed by run
    through A's runs), as text, volatile columns left out; API keys left out."""
    columns: dict[str, set[str]] = {}
    for row in await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public'"
    ):
        columns.setdefault(row["table_name"], set()).add(row["column_name"])
    runs = [
        r["id"]
        for r in await conn.fetch("SELECT id FROM orchestration_runs WHERE organization_id = $1", A)
    ]
    out: dict[str, list[str]] = {}
    for table, names in sorted(columns.items()):
        if table == "api_keys" or table.startswith("schema_"):
            continue
        kept = sorted(names - _VOLATILE)
        select = ", ".join(f'"{c}"' for c in kept)
        if "organization_id" in names:
            rows = await conn.fetch(
                f'SELECT {select} FROM "{table}" WHERE organization_id = $1',
                A,
            )
        elif "run_id" in names:
            rows = await conn.fetch(
                f'SELECT {select} FROM "{table}" WHERE run_id = ANY($1::uuid[])',
                runs,
            )
        else:
            continue
        out[table] = sorted(str(dict(r)) for r in rows)
    return out


async def test_another_organizations_objects_are_not_found_and_untouched(world: World) -> None:
    before = await snapshot_of_a(world.conn)
    for table in (
        "orchestration_definitions",
        "orchestration_runs",
        "orchestration_steps",
        "human_approvals",
        "agents",
        "orchestration_schedules",
        "external_events",
        "webhook_deliveries",
        "routing_policies",
    ):
        assert before.get(table), f"A has no {table} rows: the snapshot would prove nothing"
    failures = []
    # Reads first: the writes below make B objects of its own (named like A's).
    for rpc in sorted(RPCS, key=lambda rpc: rpc in B_WRITES):
        if rpc == "WatchRuns":
            continue  # starts a run of A on purpose: run last, after the snapshot
        try:
            await CASES[rpc](world)
        except (AssertionError, pytest.fail.Exception, grpc.aio.AioRpcError) as exc:
            failures.append(f"{rpc}: {exc}")
    assert not failures, "\n".join(failures)
    after = await snapshot_of_a(world.conn)
    changed = {t for t in before if before[t] != after.get(t)}
    assert not changed, {t: (before[t], after.get(t)) for t in changed}
    # A still sees its own objects, unchanged.
    run = await world.a.GetRun(pb.GetRunRequest(run_id=world.run_id))
    assert json_format.MessageToDict(run.run)["state"] != "STATE_CANCELLED"
    await CASES["WatchRuns"](world)
