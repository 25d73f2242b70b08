"""Run budgets (execution.budget) on real servers and the real example agents: a run that
reaches its budget pauses on a budget approval (no new step starts) or fails with
BUDGET_EXCEEDED; raising the budget with DecideApproval lets it finish; child runs draw
on their parent's budget; parallel steps racing the limit over-spend by at most the
steps in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import approval_pb2, definition_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.client_helpers import podium_json, podium_plain
from tests.integration.conftest import StartServer, static_agents
from tests.integration.rpc import rpc_error, violations
from tests.integration.runs_helpers import (
    TERMINAL_RUN_STATES as TERMINAL,
)
from tests.integration.runs_helpers import (
    all_events,
    create_definition,
    event_type,
    get_run,
    plain,
    start_run,
    step_of,
    wait_for_run,
)

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

Run = run_pb2.Run
StepRun = run_pb2.StepRun
Approval = approval_pb2.Approval
Connect = Callable[..., Awaitable[tuple[str, "OrchestrationServiceAsyncStub"]]]

TEN = {"input_tokens": 6, "output_tokens": 4, "cost_usd": 0.01, "model": "m-test"}
"""What each echo step reports: 10 tokens, one cent."""


def echo(step_id: str, *after: str, delay: float = 0.0) -> dict[str, Any]:
    step: dict[str, Any] = {"id": step_id, "agent": "echo", "input": {"usage": TEN}}
    if delay:
        step["input"]["delay"] = delay
    if after:
        step["depends_on"] = list(after)
    return step


def budget(**fields: Any) -> dict[str, Any]:
    return {"budget": fields}


@pytest.fixture
async def podium(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[Connect]:
    """Factory: ``await podium(**settings)``: (address, stub) of a new server with every
    example agent."""
    channels: list[grpc.aio.Channel] = []

    async def connect(**settings: Any) -> tuple[str, OrchestrationServiceAsyncStub]:
        server = await start_server(agents=static_agents(example_agents), **settings)
        channel = grpc.aio.insecure_channel(server.address)
        channels.append(channel)
        return server.address, pb_grpc.OrchestrationServiceStub(channel)

    try:
        yield connect
    finally:
        for channel in channels:
            await channel.close(None)


def tokens(usage: run_pb2.RunUsage) -> int:
    return usage.input_tokens + usage.output_tokens


async def test_budget_pauses_the_run_and_a_raised_budget_lets_it_finish(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """a -> b -> c, 10 tokens each, budget 15 tokens (pause): after b the run is paused
    on a budget approval (run.budget_exceeded, c never starts); approving without a
    higher limit is FAILED_PRECONDITION; approving with 100 tokens (the CLI's
    --budget-tokens) lets c run and the run succeed with 30 tokens used."""
    address, stub = await podium()
    await create_definition(
        stub,
        "capped",
        [echo("a"), echo("b", "a"), echo("c", "b")],
        execution=budget(max_tokens=15, on_exceed="ON_EXCEED_PAUSE"),
    )
    run_id = (await start_run(stub, "capped")).run.id
    run = await wait_for_run(stub, run_id, [Run.STATE_PAUSED])
    # c is runnable (queued) but nothing claims a step of a paused run.
    assert step_of(run, "c").state == StepRun.STATE_QUEUED and not step_of(run, "c").attempts
    assert [step_of(run, s).state for s in "ab"] == [StepRun.STATE_SUCCEEDED] * 2
    assert tokens(run.usage) == 20 and tokens(run.total_usage) == 20
    assert run.budget.budget_run_id == run_id
    assert (run.budget.max_tokens, run.budget.used_tokens, run.budget.exceeded) == (15, 20, True)
    assert run.budget.on_exceed == definition_pb2.BudgetPolicy.ON_EXCEED_PAUSE
    assert run.budget.used_cost_usd == pytest.approx(0.02)
    approval_id = run.budget.approval_id
    approval = (await stub.GetApproval(pb.GetApprovalRequest(approval_id=approval_id))).approval
    assert approval.kind == Approval.KIND_BUDGET and approval.state == Approval.STATE_PENDING
    assert approval.step_id == "b"
    types = [event_type(e) for e in await all_events(stub, run_id)]
    assert types.index("run.budget_exceeded") < types.index("run.paused")
    assert example_agents["echo"].stats.calls == 2

    # The CLI shows the budget state.
    shown = await podium_plain("runs", "get", run_id, "--address", address)
    assert "budget: 20 tokens" in shown.stdout and "EXCEEDED" in shown.stdout, shown.stdout

    # Approving without room left is refused, and changes nothing.
    error = await rpc_error(
        stub.DecideApproval(
            pb.DecideApprovalRequest(
                approval_id=approval_id, decision=approval_pb2.DECISION_APPROVE
            )
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert (await get_run(stub, run_id)).state == Run.STATE_PAUSED

    decided = await podium_json(
        "approvals", "approve", approval_id, "--budget-tokens", "100", "--address", address
    )
    assert decided["state"] == "STATE_DECIDED"
    run = await wait_for_run(stub, run_id)
    assert run.state == Run.STATE_SUCCEEDED, run.error
    assert tokens(run.total_usage) == 30
    assert (run.budget.max_tokens, run.budget.used_tokens, run.budget.exceeded) == (100, 30, False)
    assert not run.budget.approval_id
    assert example_agents["echo"].stats.calls == 3
    types = [event_type(e) for e in await all_events(stub, run_id)]
    assert "run.budget_raised" in types


async def test_budget_fail_fails_the_run_with_budget_exceeded(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """on_exceed FAIL with max_cost_usd 0.015: the second step's cent reaches it, the run
    fails with BUDGET_EXCEEDED and the third step never calls its agent."""
    _, stub = await podium()
    await create_definition(
        stub,
        "cost-capped",
        [echo("a"), echo("b", "a"), echo("c", "b")],
        execution=budget(max_cost_usd=0.015, on_exceed="ON_EXCEED_FAIL"),
    )
    run = await wait_for_run(stub, (await start_run(stub, "cost-capped")).run.id)
    assert run.state == Run.STATE_FAILED
    assert run.error.code == "BUDGET_EXCEEDED", run.error
    assert step_of(run, "c").state == StepRun.STATE_CANCELLED
    assert example_agents["echo"].stats.calls == 2
    assert run.usage.cost_usd == pytest.approx(0.02)


async def test_parallel_steps_racing_the_limit_overspend_by_at_most_the_steps_in_flight(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """8 independent steps, 3 at a time, 10 tokens each, budget 25 tokens: the run pauses;
    the agent was called at most 3 (to reach 25) + 3 (in flight) - 1 times, every call's
    usage is counted, and no step started after the pause. Raising the budget then
    runs the rest exactly once each."""
    _, stub = await podium()
    steps = [echo(f"s{i}", delay=0.2) for i in range(8)]
    await create_definition(
        stub,
        "racing",
        steps,
        execution={"concurrency": {"max_parallel": 3}, **budget(max_tokens=25)},
    )
    run_id = (await start_run(stub, "racing")).run.id
    run = await wait_for_run(stub, run_id, [Run.STATE_PAUSED])
    # Paused; let the steps in flight finish.
    for _ in range(50):
        run = await get_run(stub, run_id)
        if not any(s.state == StepRun.STATE_RUNNING for s in run.steps):
            break
        await asyncio.sleep(0.1)
    calls = example_agents["echo"].stats.calls
    succeeded = [s for s in run.steps if s.state == StepRun.STATE_SUCCEEDED]
    assert 3 <= calls <= 5, calls
    assert len(succeeded) == calls
    assert tokens(run.usage) == 10 * calls == run.budget.used_tokens
    assert run.state == Run.STATE_PAUSED

    await stub.DecideApproval(
        pb.DecideApprovalRequest(
            approval_id=run.budget.approval_id,
            decision=approval_pb2.DECISION_APPROVE,
            budget_max_tokens=1000,
        )
    )
    run = await wait_for_run(stub, run_id)
    assert run.state == Run.STATE_SUCCEEDED
    assert example_agents["echo"].stats.calls == 8
    assert all(len(s.attempts) == 1 for s in run.steps)
    assert tokens(run.usage) == 80


async def test_child_runs_draw_on_the_parent_budget_and_count_in_its_total(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """A parent (budget 25 tokens, pause) with one echo step, then a sub-orchestration
    of a child definition with three echo steps: the child's second step reaches the
    parent's budget, so the child run pauses on a budget approval naming the parent's
    budget. The parent's GetRun counts the child's usage in total_usage, not in usage.
    Rejecting fails the child, and with it the parent."""
    _, stub = await podium()
    await create_definition(stub, "kid", [echo("x"), echo("y", "x"), echo("z", "y")])
    await create_definition(
        stub,
        "parent",
        [echo("own"), {"id": "sub", "orchestration": {"name": "kid"}, "depends_on": ["own"]}],
        execution=budget(max_tokens=25),
    )
    parent_id = (await start_run(stub, "parent")).run.id

    async def child_id() -> str:
        run = await get_run(stub, parent_id)
        return step_of(run, "sub").child_run_id

    for _ in range(100):
        if await child_id():
            break
        await asyncio.sleep(0.1)
    child = await wait_for_run(stub, await child_id(), [Run.STATE_PAUSED])
    assert child.budget.budget_run_id == parent_id
    assert child.budget.used_tokens == 30 and child.budget.exceeded
    assert tokens(child.usage) == 20
    parent = await get_run(stub, parent_id)
    assert tokens(parent.usage) == 10 and tokens(parent.total_usage) == 30
    assert parent.budget.used_tokens == 30

    await stub.DecideApproval(
        pb.DecideApprovalRequest(
            approval_id=child.budget.approval_id, decision=approval_pb2.DECISION_REJECT
        )
    )
    child = await wait_for_run(stub, child.id)
    assert child.state == Run.STATE_FAILED and child.error.code == "BUDGET_EXCEEDED"
    parent = await wait_for_run(stub, parent_id)
    assert parent.state == Run.STATE_FAILED
    assert example_agents["echo"].stats.calls == 3


async def test_budget_validation_and_decision_fields(podium: Connect) -> None:
    """Negative or non-finite limits are INVALID_ARGUMENT naming the field; budget limits
    on a decision of another kind of approval are INVALID_ARGUMENT."""
    _, stub = await podium()
    bad = definition_pb2.Definition(name="bad")
    bad.steps.add(id="a", agent="echo")
    bad.execution.budget.max_tokens = -1
    bad.execution.budget.max_cost_usd = float("nan")
    error = await rpc_error(stub.CreateDefinition(pb.CreateDefinitionRequest(definition=bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {
        "execution.budget.max_tokens",
        "execution.budget.max_cost_usd",
    }
    await create_definition(
        stub,
        "checked",
        [{"id": "a", "agent": "echo", "checkpoint": {"when": "WHEN_BEFORE"}}],
    )
    run_id = (await start_run(stub, "checked")).run.id
    run = await wait_for_run(stub, run_id, [Run.STATE_PAUSED])
    approval_id = step_of(run, "a").approval_id
    error = await rpc_error(
        stub.DecideApproval(
            pb.DecideApprovalRequest(
                approval_id=approval_id,
                decision=approval_pb2.DECISION_APPROVE,
                budget_max_tokens=5,
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"budget_max_tokens"}
    error = await rpc_error(
        stub.DecideApproval(
            pb.DecideApprovalRequest(
                approval_id=approval_id,
                decision=approval_pb2.DECISION_APPROVE,
                budget_max_cost_usd=-1.0,
            )
        )
    )
    assert set(violations(error)) == {"budget_max_cost_usd"}


async def test_a_sibling_completion_pauses_the_parent_once_a_child_used_the_budget(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """A parent (budget 15 tokens) runs a child (x -> y -> z, 10 tokens each) beside a slow
    step `wait` (3 s, no usage) that `late` depends on. The child reaches the shared
    budget after y and pauses; when `wait` completes, the parent sees the shared budget
    reached and pauses on its own budget approval before `late` starts. Raising the
    budget there and approving the child's approval (no new limit needed: the budget is
    shared) lets both finish."""
    _, stub = await podium()
    await create_definition(stub, "gate-kid", [echo("x"), echo("y", "x"), echo("z", "y")])
    await create_definition(
        stub,
        "gate-parent",
        [
            {"id": "sub", "orchestration": {"name": "gate-kid"}},
            {"id": "wait", "agent": "echo", "input": {"delay": 3}},
            echo("late", "wait"),
        ],
        execution={"concurrency": {"max_parallel": 2}, **budget(max_tokens=15)},
    )
    parent_id = (await start_run(stub, "gate-parent")).run.id
    parent = await wait_for_run(stub, parent_id, [Run.STATE_PAUSED])
    late = step_of(parent, "late")
    assert late.state == StepRun.STATE_QUEUED and not late.attempts
    assert parent.budget.exceeded and parent.budget.used_tokens == 20
    assert tokens(parent.usage) == 0 and tokens(parent.total_usage) == 20
    seen = [t.step_id for t in example_agents["echo"].stats.tasks]
    assert sorted(seen) == ["wait", "x", "y"]
    child = await get_run(stub, step_of(parent, "sub").child_run_id)
    assert child.state == Run.STATE_PAUSED and child.budget.approval_id

    await stub.DecideApproval(
        pb.DecideApprovalRequest(
            approval_id=parent.budget.approval_id,
            decision=approval_pb2.DECISION_APPROVE,
            budget_max_tokens=1000,
        )
    )
    await stub.DecideApproval(
        pb.DecideApprovalRequest(
            approval_id=child.budget.approval_id, decision=approval_pb2.DECISION_APPROVE
        )
    )
    parent = await wait_for_run(stub, parent_id)
    assert parent.state == Run.STATE_SUCCEEDED, parent.error
    assert tokens(parent.total_usage) == 40 and parent.budget.max_tokens == 1000
    assert len(step_of(parent, "late").attempts) == 1


async def test_a_claimed_step_of_a_run_over_budget_is_given_back_before_dispatch(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """A run failed by its budget (on_exceed FAIL) and resumed: its remaining step is
    claimed (no completion of the run happened since), and the dispatch check gives
    it back without calling the agent (step.queued, reason budget) and fails the run
    again with BUDGET_EXCEEDED."""
    _, stub = await podium()
    await create_definition(
        stub,
        "resumed",
        [echo("a"), echo("b", "a"), echo("c", "b")],
        execution=budget(max_tokens=15, on_exceed="ON_EXCEED_FAIL"),
    )
    run_id = (await start_run(stub, "resumed")).run.id
    run = await wait_for_run(stub, run_id)
    assert run.state == Run.STATE_FAILED and run.error.code == "BUDGET_EXCEEDED"
    await stub.ResumeRun(pb.ResumeRunRequest(run_id=run_id))
    run = await wait_for_run(stub, run_id)
    assert run.state == Run.STATE_FAILED and run.error.code == "BUDGET_EXCEEDED", run.error
    assert run.run_attempt == 2
    assert not step_of(run, "c").attempts
    assert sorted(t.step_id for t in example_agents["echo"].stats.tasks) == ["a", "b"]
    events = await all_events(stub, run_id)
    assert any(
        event_type(e) == "step.queued"
        and e.step_id == "c"
        and plain(e.data).get("reason") == "budget"
        for e in events
    )


async def test_steps_in_flight_finish_and_may_end_a_paused_run(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """Two independent steps, budget 5 tokens: the fast one reaches the budget and the run
    pauses while the slow one is in flight; that one finishes (its usage counts: the
    over-spend is the steps in flight) and, being the last step, ends the run, whose
    budget approval is then cancelled."""
    _, stub = await podium()
    await create_definition(
        stub,
        "in-flight",
        [echo("fast"), echo("slow", delay=1.5)],
        execution={"concurrency": {"max_parallel": 2}, **budget(max_tokens=5)},
    )
    run_id = (await start_run(stub, "in-flight")).run.id
    paused = await wait_for_run(stub, run_id, [Run.STATE_PAUSED, *TERMINAL])
    assert paused.state == Run.STATE_PAUSED
    assert step_of(paused, "slow").state == StepRun.STATE_RUNNING
    approval_id = paused.budget.approval_id
    run = await wait_for_run(stub, run_id)
    assert run.state == Run.STATE_SUCCEEDED
    assert tokens(run.usage) == 20 and run.budget.exceeded and not run.budget.approval_id
    approval = (await stub.GetApproval(pb.GetApprovalRequest(approval_id=approval_id))).approval
    assert approval.state == Approval.STATE_CANCELLED
    assert example_agents["echo"].stats.calls == 2
