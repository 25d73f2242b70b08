"""Routing policies (GetRoutingPolicy / UpdateRoutingPolicy): refused agents and skills
are field violations at CreateDefinition and StartRun (against the current policy),
the claim routes a skill only to an allowed agent (and a step whose every agent is
refused fails POLICY_DENIED at once), the executor checks again before dispatch
(POLICY_DENIED), approval_agents park steps until DecideApproval, a definition's
execution.routing only narrows, a viewer cannot update. The cross-organization case is
in test_auth_tenancy.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import agent_pb2, approval_pb2, policy_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.engine.policies import Rules
from tests.integration.client_helpers import podium, podium_json
from tests.integration.conftest import StartServer, bearer_channel, static_agents
from tests.integration.rpc import error_details, rpc_error, violations
from tests.integration.runs_helpers import (
    definition,
    get_run,
    plan,
    step_of,
    wait_for,
    wait_for_run,
    wait_for_step,
)

Stub = Any
State = run_pb2.Run.State
StepState = run_pb2.StepRun.State


async def _set(stub: Stub, *paths: str, **lists: list[str]) -> policy_pb2.RoutingPolicy:
    request = pb.UpdateRoutingPolicyRequest()
    request.update_mask.paths.extend(paths)
    for name, values in lists.items():
        getattr(request.policy, name).extend(values)
    response = await stub.UpdateRoutingPolicy(request)
    policy: policy_pb2.RoutingPolicy = response.policy
    return policy


@dataclass
class Stubs:
    """An admin's and a viewer's stub of one server (default organization)."""

    admin: Stub
    viewer: Stub


@pytest.fixture
async def stubs(start_server: StartServer, example_agents: ExampleAgents) -> AsyncIterator[Stubs]:
    agents = static_agents(example_agents, "echo", "noop")
    server = await start_server(auth="required", agents=agents)
    key = (await server.engine.api_keys.create("default", "admin", "a")).key
    viewer = (await server.engine.api_keys.create("default", "viewer", "v")).key
    async with (
        bearer_channel(server.address, key) as channel,
        bearer_channel(server.address, viewer) as viewer_channel,
    ):
        yield Stubs(
            pb_grpc.OrchestrationServiceStub(channel),
            pb_grpc.OrchestrationServiceStub(viewer_channel),
        )


@pytest.fixture
def admin(stubs: Stubs) -> Stub:
    return stubs.admin


@pytest.fixture
async def twins(start_server: StartServer, example_agents: ExampleAgents) -> AsyncIterator[Stub]:
    """A server (no auth) where agents ``echo`` and ``echo-b`` (echo's endpoint, at most
    one task at once) both offer skill ``echo``. Unrefused, a skill goes to the least
    busy of them, ``echo`` first on a tie."""
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        twin = agent_pb2.Agent(
            name="echo-b", endpoint=example_agents.addresses["echo"], max_concurrency=1
        )
        await stub.RegisterAgent(pb.RegisterAgentRequest(agent=twin))
        yield stub


def _skill_plan(count: int, **execution: Any) -> Any:
    steps = [{"id": f"s{i}", "skill": "echo", "input": {"i": i}} for i in range(count)]
    return plan(steps, execution={"concurrency": {"max_parallel": count}, **execution})


async def test_claim_routes_a_skill_to_an_allowed_agent_only(twins: Stub) -> None:
    # Unrefused, parallel steps spread over both agents (least busy first).
    started = await twins.StartRun(pb.StartRunRequest(plan=_skill_plan(6), start=True))
    run = await wait_for_run(twins, started.run.id)
    assert {s.agent for s in run.steps} == {"echo", "echo-b"}
    # The organization denies echo: every step waits for echo-b (one at a time) rather
    # than going to the idle echo, in every run.
    await _set(twins, denied_agents=["echo"])
    ids = [
        (await twins.StartRun(pb.StartRunRequest(plan=_skill_plan(6), start=True))).run.id
        for _ in range(3)
    ]
    for run_id in ids:
        run = await wait_for_run(twins, run_id)
        assert run.state == State.STATE_SUCCEEDED
        assert {s.agent for s in run.steps} == {"echo-b"}
    # A definition's allowed_agents narrows the same way, with no organization policy.
    await _set(twins, denied_agents=[])
    routing = {"routing": {"allowed_agents": ["echo-b"]}}
    started = await twins.StartRun(pb.StartRunRequest(plan=_skill_plan(4, **routing), start=True))
    run = await wait_for_run(twins, started.run.id)
    assert run.state == State.STATE_SUCCEEDED
    assert {s.agent for s in run.steps} == {"echo-b"}


async def test_skill_whose_agents_are_all_refused_fails_at_once(twins: Stub) -> None:
    # The organization denies echo, the definition echo-b: no agent may take the step.
    await _set(twins, denied_agents=["echo"])
    routing = {"routing": {"denied_agents": ["echo-b"]}}
    started = await twins.StartRun(pb.StartRunRequest(plan=_skill_plan(1, **routing), start=True))
    run = await wait_for_run(twins, started.run.id)
    failed = step_of(run, "s0")
    assert run.state == State.STATE_FAILED and failed.attempt == 1
    assert failed.error.code == "POLICY_DENIED" and not failed.error.retryable
    assert failed.agent == ""  # no agent was called
    message = failed.error.message
    assert message.startswith("no agent offering skill 'echo' is allowed")
    assert "agent 'echo' is denied by the organization's routing policy" in message
    assert "agent 'echo-b' is denied by the definition's execution.routing" in message


async def test_get_and_update_with_a_mask(stubs: Stubs) -> None:
    admin = stubs.admin
    empty = (await admin.GetRoutingPolicy(pb.GetRoutingPolicyRequest())).policy
    assert empty.revision == 0 and not empty.denied_agents and not empty.HasField("update_time")
    first = await _set(admin, denied_agents=["noop", "noop"], allowed_skills=["echo"])
    assert list(first.denied_agents) == ["noop"] and list(first.allowed_skills) == ["echo"]
    assert first.revision == 1 and first.HasField("update_time")
    # A mask replaces only the lists it names.
    second = await _set(admin, "approval_agents", approval_agents=["echo"], denied_agents=["x"])
    assert list(second.denied_agents) == ["noop"] and list(second.approval_agents) == ["echo"]
    assert second.revision == 2
    read = (await admin.GetRoutingPolicy(pb.GetRoutingPolicyRequest())).policy
    assert read == second
    # Bad masks and names are field violations; nothing changes.
    error = await rpc_error(_set(admin, "revision", "denied_agents", denied_agents=["Bad Name"]))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"update_mask.paths[0]", "policy.denied_agents[0]"}
    assert (await admin.GetRoutingPolicy(pb.GetRoutingPolicyRequest())).policy.revision == 2
    # A viewer reads but cannot update.
    assert (await stubs.viewer.GetRoutingPolicy(pb.GetRoutingPolicyRequest())).policy == second
    error = await rpc_error(_set(stubs.viewer, denied_agents=[]))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_refused_agents_and_skills_are_field_violations(admin: Stub) -> None:
    await _set(admin, denied_agents=["noop"], denied_skills=["summarize"])
    steps: list[dict[str, Any]] = [
        {"id": "a", "agent": "echo"},
        {"id": "b", "agent": "noop"},
        {"id": "c", "skill": "summarize"},
        {"id": "d", "agent": "not-registered-yet"},  # unknown agents stay allowed
    ]
    error = await rpc_error(
        admin.CreateDefinition(pb.CreateDefinitionRequest(definition=definition("flow", steps)))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    assert set(found) == {"steps[1].agent", "steps[2].skill"}
    assert "denied by the organization's routing policy" in found["steps[1].agent"]
    # An inline plan too, under `plan.`; no run is written.
    error = await rpc_error(admin.StartRun(pb.StartRunRequest(plan=plan(steps), start=True)))
    assert set(violations(error)) == {"plan.steps[1].agent", "plan.steps[2].skill"}
    assert error_details(error)[0].reason == "POLICY_DENIED"
    assert not (await admin.ListRuns(pb.ListRunsRequest())).runs
    # An allow list refuses what it does not name.
    await _set(admin, allowed_agents=["echo"])
    error = await rpc_error(
        admin.ValidateDefinition(
            pb.ValidateDefinitionRequest(definition=definition("flow", steps[:1] + steps[3:]))
        )
    )
    assert "not on the allowed_agents list" in violations(error)["steps[1].agent"]


async def test_policy_changed_after_the_definition_was_saved(admin: Stub) -> None:
    flow = definition("flow", [{"id": "a", "agent": "echo"}, {"id": "b", "agent": "noop"}])
    await admin.CreateDefinition(pb.CreateDefinitionRequest(definition=flow))
    await _set(admin, denied_agents=["noop"])
    error = await rpc_error(
        admin.StartRun(pb.StartRunRequest(definition=pb.DefinitionRef(name="flow"), start=True))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"steps[1].agent"}
    await _set(admin, denied_agents=[])
    started = await admin.StartRun(
        pb.StartRunRequest(definition=pb.DefinitionRef(name="flow"), start=True)
    )
    assert (await wait_for_run(admin, started.run.id)).state == State.STATE_SUCCEEDED


async def test_dispatch_rechecks_the_current_policy(admin: Stub) -> None:
    steps = [
        {"id": "w", "wait_for_event": {"name": "go", "key": "k"}},
        {"id": "b", "agent": "noop", "depends_on": ["w"], "input": {"text": "x"}},
    ]
    started = await admin.StartRun(pb.StartRunRequest(plan=plan(steps), start=True))
    await wait_for_step(admin, started.run.id, "w", {StepState.STATE_WAITING_RETRY})
    await _set(admin, denied_agents=["noop"])  # while the run waits
    await admin.SendEvent(pb.SendEventRequest(event_id="e1", name="go", key="k"))
    run = await wait_for_run(admin, started.run.id)
    assert run.state == State.STATE_FAILED
    failed = step_of(run, "b")
    assert failed.error.code == "POLICY_DENIED" and not failed.error.retryable
    assert "noop" in failed.error.message


async def test_a_skill_held_by_its_allowed_agents_rate_limit_says_so(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    # echo-b, the only allowed agent with skill echo, takes one request per 4 s; the
    # idle echo is denied, so the second step waits for echo-b's window, and GetRun
    # says so.
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        rate = agent_pb2.AgentRateLimit(requests_per_period=1, period_seconds=4)
        twin = agent_pb2.Agent(
            name="echo-b", endpoint=example_agents.addresses["echo"], rate_limit=rate
        )
        await stub.RegisterAgent(pb.RegisterAgentRequest(agent=twin))
        await _set(stub, denied_agents=["echo"])
        started = await stub.StartRun(pb.StartRunRequest(plan=_skill_plan(2), start=True))

        async def held() -> run_pb2.StepRun | None:
            run = await get_run(stub, started.run.id)
            found = [s for s in run.steps if s.HasField("waiting")]
            return found[0] if found else None

        waiting = (await wait_for(held, "a step held by echo-b's window")).waiting
        assert waiting.reason == run_pb2.StepWaiting.REASON_RATE_LIMITED
        assert waiting.agent == "echo-b"
        run = await wait_for_run(stub, started.run.id, within=30)
        assert run.state == State.STATE_SUCCEEDED
        assert {s.agent for s in run.steps} == {"echo-b"}


async def test_claim_and_dispatch_read_agent_lists_alike(database_url: str) -> None:
    # podium_routing_allows (the claim, SQL) and Rules.refusal (dispatch, Python) agree.
    cases: list[dict[str, Any] | None] = [
        None,
        {},
        {"allowed_agents": [], "denied_agents": []},
        {"denied_agents": ["a"]},
        {"allowed_agents": ["a", "b"]},
        {"allowed_agents": ["a", "b"], "denied_agents": ["b"]},
        {"allowed_skills": ["x"], "denied_skills": ["a"]},  # skills: not about agents
    ]
    conn = await asyncpg.connect(database_url)
    try:
        for case in cases:
            rules = Rules.from_json("r", case or {})
            for agent in ("a", "b", "c"):
                found = await conn.fetchval(
                    "SELECT podium_routing_allows($1, $2::jsonb)",
                    agent,
                    None if case is None else json.dumps(case),
                )
                assert found is (rules.refusal("agent", agent) is None), (case, agent)
        # The claim's entry of an organization without a policy row is JSON null.
        assert await conn.fetchval("SELECT podium_routing_allows('a', 'null'::jsonb)") is True
    finally:
        await conn.close()


async def test_skill_of_a_refused_agent_fails_at_dispatch(admin: Stub) -> None:
    # The definition narrows the organization's policy: echo offers skill "echo", and
    # the definition denies agent echo, so the step is refused.
    flow = definition(
        "narrow",
        [{"id": "s", "skill": "echo"}],
        execution={"routing": {"denied_agents": ["echo"], "allowed_skills": ["echo"]}},
    )
    await admin.CreateDefinition(pb.CreateDefinitionRequest(definition=flow))
    started = await admin.StartRun(
        pb.StartRunRequest(definition=pb.DefinitionRef(name="narrow"), start=True)
    )
    run = await wait_for_run(admin, started.run.id)
    error = step_of(run, "s").error
    assert run.state == State.STATE_FAILED and error.code == "POLICY_DENIED"
    assert "execution.routing" in error.message
    # The definition's allow list refuses a skill it does not name.
    other = definition(
        "narrow2", [{"id": "s", "skill": "noop"}], execution={"routing": {"allowed_skills": ["x"]}}
    )
    error2 = await rpc_error(admin.CreateDefinition(pb.CreateDefinitionRequest(definition=other)))
    assert "definition's execution.routing" in violations(error2)["steps[0].skill"]


async def test_approval_agents_wait_for_a_decision(admin: Stub) -> None:
    await _set(admin, approval_agents=["echo"])
    steps: list[dict[str, Any]] = [
        {"id": "a", "agent": "echo", "input": {"q": 1}},
        {"id": "b", "agent": "noop"},
    ]
    started = await admin.StartRun(pb.StartRunRequest(plan=plan(steps), start=True))
    run_id = started.run.id
    run = await wait_for_step(admin, run_id, "a", {StepState.STATE_AWAITING_APPROVAL})

    async def pending() -> list[approval_pb2.Approval]:
        listed = await admin.ListApprovals(pb.ListApprovalsRequest(run_id=run_id))
        return list(listed.approvals)

    approvals = await wait_for(pending, "the approval of step a")
    assert [a.step_id for a in approvals] == ["a"]
    assert step_of(run, "a").attempt == 0  # the agent was not called
    await admin.DecideApproval(
        pb.DecideApprovalRequest(
            approval_id=approvals[0].id, decision=approval_pb2.DECISION_APPROVE, actor="ops"
        )
    )
    run = await wait_for_run(admin, run_id)
    assert run.state == State.STATE_SUCCEEDED
    assert step_of(run, "a").attempt == 1


async def test_cli_sets_the_policy_and_approves_a_gated_step(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address]
    usage = await podium("policy", "set", *address)
    assert usage.returncode == 2 and "at least one list" in usage.stderr
    made = await podium(
        "policy", "set", "--deny-agent", "noop", "--deny-skill", "shell",
        "--require-approval", "echo", *address,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "denied_agents:    noop" in made.stdout
    cleared = await podium_json("policy", "set", "--clear", "denied_skills", *address)
    assert cleared["denied_agents"] == ["noop"] and "denied_skills" not in cleared
    assert (await podium_json("policy", "get", *address))["revision"] == 2
    # The gated step waits for `podium approvals approve`.
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        started = await stub.StartRun(
            pb.StartRunRequest(plan=plan([{"id": "a", "agent": "echo"}]), start=True)
        )
        await _approve_with_the_cli(address, started.run.id)
        assert (await wait_for_run(stub, started.run.id)).state == State.STATE_SUCCEEDED


async def _approve_with_the_cli(address: list[str], run_id: str) -> None:

    async def pending() -> list[Any]:
        found: list[Any] = await podium_json("approvals", "list", "--run", run_id, *address)
        return found

    approvals = await wait_for(pending, "the approval of step a")
    approved = await podium("approvals", "approve", approvals[0]["id"], "--actor", "ed", *address)
    assert approved.returncode == 0, approved.stderr
