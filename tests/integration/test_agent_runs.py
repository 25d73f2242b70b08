"""Agent-driven runs end to end: a real server with authentication on, real agents.

Step credentials: an agent starts a child run of its step with the credential of its
task (linked both ways, on the parent's budget, visible to the credential and to
nobody else, cancelled with the parent run and when the attempt ends); the credential
is refused once the attempt ended. Plan steps: a planner's definition runs as the
step's child run and its output becomes the step's; an invalid plan fails the step
with its violations; the depth limit holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest

from podium.client.agent import Agent, AgentServer, Task
from podium.client.examples.agents import echo_agent, sleeper_agent
from podium.client.examples.orchestrator import orchestrator_agent, planner_agent
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from tests.integration.conftest import StartServer, bearer_channel
from tests.integration.rpc import error_details, rpc_error, violations
from tests.integration.runs_helpers import (
    Run,
    StepRun,
    describe,
    get_run,
    plain,
    plan,
    start_run,
    step_of,
    wait_for,
    wait_for_run,
    wait_for_step,
)


class Holder:
    """An agent that keeps each task's credential and holds the task until released."""

    def __init__(self) -> None:
        self.credentials: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, task: Task) -> dict[str, Any]:
        self.credentials.append(task.credential)
        assert task.podium_address  # the server says where to call back
        self.started.set()
        await self.release.wait()
        return {"ok": True}


@dataclass
class Setup:
    server: PodiumServer
    stub: pb_grpc.OrchestrationServiceAsyncStub
    holder: Holder


@pytest.fixture
async def setup(start_server: StartServer) -> AsyncIterator[Setup]:
    """A server with auth on, the example agents used here, and an admin stub."""
    holder = Holder()
    agents = {
        "echo": echo_agent(),
        "sleeper": sleeper_agent(),
        "orchestrator": orchestrator_agent(),
        "planner": planner_agent(),
        "holder": Agent("holder", handler=holder.handle),
    }
    servers: dict[str, AgentServer] = {
        name: await agent.serve("127.0.0.1:0") for name, agent in agents.items()
    }
    setting = ",".join(f"{name}={server.address}" for name, server in servers.items())
    server = await start_server(
        auth="required", agents=setting, max_orchestration_depth=2, max_runs_per_step=2
    )
    key = await server.engine.api_keys.create(server.settings.organization_id, "admin", "t")
    channel = bearer_channel(server.address, key.key)
    try:
        yield Setup(server, pb_grpc.OrchestrationServiceStub(channel), holder)
    finally:
        holder.release.set()
        await channel.close(None)
        await asyncio.gather(*(s.stop(0) for s in servers.values()))


async def children(
    stub: pb_grpc.OrchestrationServiceAsyncStub, run_id: str, step: str
) -> list[Run]:
    response = await stub.ListRuns(pb.ListRunsRequest(parent_run_id=run_id, parent_step_id=step))
    return list(response.runs)


def child_plan(agent: str, step_input: dict[str, Any]) -> dict[str, Any]:
    return {"steps": [{"id": "work", "agent": agent, "input": step_input}]}


async def test_an_agent_starts_a_linked_child_run_on_the_parents_budget(
    setup: Setup, database_url: str
) -> None:
    stub = setup.stub
    orchestrate = {
        "plan": child_plan("echo", {"x": 7}),
        "wait": True,
    }
    started = await start_run(
        stub,
        inline=plan(
            [{"id": "orchestrate", "agent": "orchestrator", "input": orchestrate}],
            execution={"budget": {"max_tokens": 100000}},
        ),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, describe(run)
    output = plain(step_of(run, "orchestrate").output)
    assert output["state"] == "STATE_SUCCEEDED"
    assert output["output"] == {"work": {"echo": {"x": 7}}}
    child = await get_run(stub, output["run_id"])
    assert (child.parent_run_id, child.parent_step_id) == (run.id, "orchestrate")
    assert [r.id for r in await children(stub, run.id, "orchestrate")] == [child.id]
    assert await children(stub, run.id, "other") == []
    error = await rpc_error(stub.ListRuns(pb.ListRunsRequest(parent_step_id="orchestrate")))
    assert violations(error) == {"parent_step_id": "set parent_run_id with it"}
    connection = await asyncpg.connect(database_url)
    try:
        budget = await connection.fetchval(
            "SELECT budget_run_id::text FROM orchestration_runs WHERE id = $1::uuid", child.id
        )
        stored = await connection.fetchval(
            "SELECT count(*) FROM step_attempts WHERE credential_hash IS NOT NULL"
        )
    finally:
        await connection.close()
    assert budget == run.id  # the child draws on its parent's budget
    assert stored >= 2  # hashes only: the orchestrator's and the echo's attempts


async def test_child_runs_end_with_the_parent_run_and_with_the_attempt(setup: Setup) -> None:
    stub = setup.stub
    hold = {"plan": child_plan("sleeper", {"seconds": 60}), "hold": 60}
    first = await start_run(
        stub, inline=plan([{"id": "o", "agent": "orchestrator", "input": hold}])
    )
    kids = await wait_for(lambda: children(stub, first.run.id, "o"), "the child run")
    await wait_for_step(stub, kids[0].id, "work", {StepRun.STATE_RUNNING})
    await stub.CancelRun(pb.CancelRunRequest(run_id=first.run.id))
    cancelled = await wait_for_run(stub, kids[0].id)
    assert cancelled.state == Run.STATE_CANCELLED
    assert "parent" in cancelled.error.message

    # A run the agent leaves running ends with the attempt that started it.
    brief = {"plan": child_plan("sleeper", {"seconds": 60}), "hold": 0.3}
    second = await start_run(
        stub, inline=plan([{"id": "o", "agent": "orchestrator", "input": brief}])
    )
    parent = await wait_for_run(stub, second.run.id)
    assert parent.state == Run.STATE_SUCCEEDED
    child_id = plain(step_of(parent, "o").output)["run_id"]
    ended = await wait_for_run(stub, child_id)
    assert ended.state == Run.STATE_CANCELLED
    assert "attempt" in ended.error.message


async def test_the_credential_is_scoped_to_its_step_and_ends_with_the_attempt(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stub, holder = setup.stub, setup.holder
    started = await start_run(
        stub, inline=plan([{"id": "h", "agent": "holder"}]), request_id="admin-run"
    )
    await asyncio.wait_for(holder.started.wait(), 30)
    credential = holder.credentials[0]
    assert credential.startswith("pds_")
    async with bearer_channel(setup.server.address, credential) as channel:
        as_step = pb_grpc.OrchestrationServiceStub(channel)
        echo = plan([{"id": "e", "agent": "echo"}])
        child = await start_run(as_step, inline=echo, request_id="mine")
        assert child.run.parent_run_id == started.run.id
        assert child.run.parent_step_id == "h"
        done = await wait_for_run(as_step, child.run.id)  # it reads its own child runs
        assert done.state == Run.STATE_SUCCEEDED
        listed = await as_step.ListRuns(pb.ListRunsRequest())
        assert [r.id for r in listed.runs] == [child.run.id]
        # ... and nothing else: not its own run, not a run of someone else.
        error = await rpc_error(as_step.GetRun(pb.GetRunRequest(run_id=started.run.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = await rpc_error(as_step.CancelRun(pb.CancelRunRequest(run_id=child.run.id)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        error = await rpc_error(
            start_run(as_step, inline=plan([{"id": "e", "agent": "echo"}]), start=False)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A request_id names its own run again, never another run of the organization.
        again = await start_run(as_step, inline=echo, request_id="mine")
        assert again.existing and again.run.id == child.run.id
        error = await rpc_error(start_run(as_step, inline=echo, request_id="admin-run"))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert started.run.id not in (error.details() or "")
        # ORCHESTRATION_MAX_RUNS_PER_STEP=2: a second run, not a third.
        await start_run(as_step, inline=plan([{"id": "e", "agent": "echo"}]))
        error = await rpc_error(start_run(as_step, inline=plan([{"id": "e", "agent": "echo"}])))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_details(error)[0].reason == "STEP_RUN_LIMIT"

        # Another organization sees neither the child run nor the credential's runs.
        other = await setup.server.engine.api_keys.create("other-org", "admin", "t")
        async with bearer_channel(setup.server.address, other.key) as other_channel:
            other_stub = pb_grpc.OrchestrationServiceStub(other_channel)
            error = await rpc_error(get_run(other_stub, child.run.id))
            assert error.code() == grpc.StatusCode.NOT_FOUND
            theirs = await start_run(other_stub, inline=plan([{"id": "e", "agent": "echo"}]))
        error = await rpc_error(as_step.GetRun(pb.GetRunRequest(run_id=theirs.run.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND

        holder.release.set()
        assert (await wait_for_run(stub, started.run.id)).state == Run.STATE_SUCCEEDED
        error = await rpc_error(start_run(as_step, inline=plan([{"id": "e", "agent": "echo"}])))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        info, _ = error_details(error)
        assert info.reason == "STEP_CREDENTIAL_INVALID"
        assert credential not in (error.details() or "")
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "call refused" in logged and credential[4:] not in logged


async def test_a_plan_step_runs_its_planners_definition(setup: Setup, database_url: str) -> None:
    stub = setup.stub
    planned = {
        "agents": ["echo", "echo"],
        "input": "${run.input.topic}",
        "usage": {"input_tokens": 30, "output_tokens": 4, "cost_usd": 0.5},
    }
    started = await start_run(
        stub,
        inline=plan([{"id": "p", "plan": {"agent": "planner"}, "input": planned}]),
        input={"topic": "agents"},
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, describe(run)
    step = step_of(run, "p")
    child = await get_run(stub, step.child_run_id)
    assert (child.parent_run_id, child.parent_step_id) == (run.id, "p")
    assert [s.step_id for s in child.steps] == ["step-1", "step-2"]
    assert child.state == Run.STATE_SUCCEEDED
    # The child's output (its sink step-2's) becomes the step's output.
    assert plain(step.output) == plain(child.output)
    assert plain(step.output) == {"step-2": {"echo": {"value": {"echo": {"value": "agents"}}}}}
    # The planner's usage stays on the step's attempt, its step and its run.
    assert (step.usage.input_tokens, step.usage.output_tokens) == (30, 4)
    assert (run.usage.input_tokens, run.usage.cost_usd) == (30, 0.5)
    connection = await asyncpg.connect(database_url)
    try:
        attempt = await connection.fetchrow(
            "SELECT input_tokens, model, ended_at IS NOT NULL AS ended FROM step_attempts"
            " WHERE run_id = $1::uuid AND step_id = 'p'",
            run.id,
        )
    finally:
        await connection.close()
    assert attempt is not None and tuple(attempt) == (30, "echo-model", True)


async def test_an_invalid_plan_fails_the_step_with_its_violations(setup: Setup) -> None:
    stub = setup.stub
    bad = {"steps": [{"id": "a", "agent": "echo", "depends_on": ["missing"]}, {"id": "b"}]}
    started = await start_run(
        stub, inline=plan([{"id": "p", "plan": {"agent": "planner"}, "input": {"plan": bad}}])
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED
    step = step_of(run, "p")
    assert step.error.code == "INVALID_PLAN"
    assert "plan.steps[0].depends_on[0]" in step.error.message
    assert "plan.steps[1]" in step.error.message
    assert step.attempt == 1  # not retried
    assert not step.child_run_id


async def test_plans_nest_no_deeper_than_the_limit(setup: Setup) -> None:
    stub = setup.stub

    def nested(levels: int) -> dict[str, Any]:
        if levels == 0:
            return {"agents": ["echo"], "input": "leaf"}
        inner = {"id": "inner", "plan": {"agent": "planner"}, "input": nested(levels - 1)}
        return {"plan": {"steps": [inner]}}

    # Depth 2 (ORCHESTRATION_MAX_DEPTH=2): run -> plan child -> plan grandchild.
    ok = await start_run(
        stub, inline=plan([{"id": "p", "plan": {"agent": "planner"}, "input": nested(1)}])
    )
    assert (await wait_for_run(stub, ok.run.id)).state == Run.STATE_SUCCEEDED
    deep = await start_run(
        stub, inline=plan([{"id": "p", "plan": {"agent": "planner"}, "input": nested(2)}])
    )
    run = await wait_for_run(stub, deep.run.id)
    assert run.state == Run.STATE_FAILED
    child = await get_run(stub, step_of(run, "p").child_run_id)
    grandchild = await get_run(stub, step_of(child, "inner").child_run_id)
    error = step_of(grandchild, "inner").error
    assert error.code == "MAX_DEPTH_EXCEEDED", grandchild
    assert "ORCHESTRATION_MAX_DEPTH=2" in error.message


async def test_agent_started_runs_nest_no_deeper_than_the_limit(setup: Setup) -> None:
    stub = setup.stub

    def orchestrate(levels: int) -> dict[str, Any]:
        """Orchestrators starting orchestrators, ``levels`` deep, each waiting."""
        if levels == 0:
            return {"plan": child_plan("echo", {}), "wait": True}
        inner = child_plan("orchestrator", orchestrate(levels - 1))
        return {"plan": inner, "wait": True}

    # ORCHESTRATION_MAX_DEPTH=2: runs at depth 1 and 2 start, the one at depth 3 does not.
    started = await start_run(
        stub, inline=plan([{"id": "o", "agent": "orchestrator", "input": orchestrate(2)}])
    )
    top = await wait_for_run(stub, started.run.id)
    assert top.state == Run.STATE_SUCCEEDED, describe(top)
    first = plain(step_of(top, "o").output)
    assert first["state"] == "STATE_SUCCEEDED"
    depth_1 = await get_run(stub, first["run_id"])
    second = plain(step_of(depth_1, "work").output)
    assert second["state"] == "STATE_FAILED"
    depth_2 = await get_run(stub, second["run_id"])
    assert depth_2.parent_run_id == depth_1.id
    error = step_of(depth_2, "work").error
    assert "MAX_DEPTH_EXCEEDED" in error.message, describe(depth_2)


async def test_agent_started_runs_are_linked_with_authentication_off(
    start_server: StartServer,
) -> None:
    orchestrator = await orchestrator_agent().serve("127.0.0.1:0")
    echo = await echo_agent().serve("127.0.0.1:0")
    try:
        agents = f"orchestrator={orchestrator.address},echo={echo.address}"
        server = await start_server(agents=agents)  # PODIUM_AUTH=disabled
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            step_input = {"plan": child_plan("echo", {"n": 1}), "wait": True}
            started = await start_run(
                stub, inline=plan([{"id": "o", "agent": "orchestrator", "input": step_input}])
            )
            run = await wait_for_run(stub, started.run.id)
            assert run.state == Run.STATE_SUCCEEDED, describe(run)
            child = await get_run(stub, plain(step_of(run, "o").output)["run_id"])
            assert (child.parent_run_id, child.parent_step_id) == (run.id, "o")
            # A made-up credential is refused even so; no credential acts as before.
            fake = [("authorization", "Bearer pds_" + "0" * 64)]
            error = await rpc_error(stub.GetRun(pb.GetRunRequest(run_id=run.id), metadata=fake))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await asyncio.gather(orchestrator.stop(0), echo.stop(0))
