"""Dynamic fan-out (``for_each``) end to end: a real server, the real example agents.

The items run as the steps ``item-N`` of a child run; the step's output is
``{"items": [...]}`` in item order. Covered: 0, 1, 3 and 1,000 items, ``${item}`` and
``${item_index}``, data that looks like a reference, ``max_parallel``, each failure
policy per item, the cache, the refusals at validation and at run time, and the CLI.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from podium.client.definitions import load_definition
from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import approval_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from tests.integration.client_helpers import podium as podium_cli
from tests.integration.conftest import StartServer, static_agents
from tests.integration.rpc import rpc_error, violations
from tests.integration.runs_helpers import (
    Run,
    StepRun,
    create_definition,
    get_run,
    plain,
    plan,
    start_run,
    step_of,
    struct,
    wait_for_run,
    wait_until,
)

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

Approval = approval_pb2.Approval
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fan-out.yaml"
Connect = Callable[..., Awaitable[tuple[PodiumServer, "OrchestrationServiceAsyncStub"]]]


@pytest.fixture
async def podium(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[Connect]:
    """Factory: ``await podium(**settings)`` starts a server with every example agent
    and returns it with a stub on a new channel."""
    channels: list[grpc.aio.Channel] = []

    async def connect(**settings: Any) -> tuple[PodiumServer, OrchestrationServiceAsyncStub]:
        settings.setdefault("agents", static_agents(example_agents))
        server = await start_server(**settings)
        channel = grpc.aio.insecure_channel(server.address)
        channels.append(channel)
        return server, pb_grpc.OrchestrationServiceStub(channel)

    try:
        yield connect
    finally:
        for channel in channels:
            await channel.close(None)


def fan(**fields: Any) -> dict[str, Any]:
    """A for_each step over ``run.input.items`` (echo, unless ``fields`` say otherwise)."""
    return {
        "id": "fan",
        "agent": "echo",
        "for_each": "${run.input.items}",
        "input": {"value": "${item}", "index": "${item_index}"},
        **fields,
    }


async def run_fan(
    stub: OrchestrationServiceAsyncStub, items: Any, *steps: dict[str, Any], **run: Any
) -> Run:
    started = await start_run(
        stub, inline=plan(list(steps) or [fan()], **run), input={"items": items}
    )
    return await wait_for_run(stub, started.run.id)


def items_of(step: StepRun) -> list[Any]:
    return list(plain(step.output)["items"])


# ------------------------------------------------------------------------ the items


async def test_items_run_in_a_child_run_and_the_output_keeps_their_order(
    podium: Connect,
) -> None:
    """An upstream output's list fans out; each item sees ${item}, ${item_index} and the
    usual references; a dependent reads the ordered outputs; an item that looks like a
    reference stays data."""
    _, stub = await podium()
    steps = [
        {"id": "list", "agent": "echo", "input": {"qs": ["a", {"q": "b"}, "$${run.input.topic}"]}},
        {
            "id": "fan",
            "agent": "echo",
            "depends_on": ["list"],
            "for_each": "${steps.list.output.echo.qs}",
            "input": {"q": "${item}", "i": "${item_index}", "t": "${run.input.topic}: ${item}"},
        },
        {
            "id": "after",
            "agent": "echo",
            "depends_on": ["fan"],
            "input": {"all": "${steps.fan.output.items}"},
        },
    ]
    started = await start_run(stub, inline=plan(steps), input={"topic": "cats"})
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    expected = [
        {"echo": {"q": "a", "i": 0, "t": "cats: a"}},
        {"echo": {"q": {"q": "b"}, "i": 1, "t": 'cats: {"q":"b"}'}},
        {"echo": {"q": "${run.input.topic}", "i": 2, "t": "cats: ${run.input.topic}"}},
    ]
    step = step_of(run, "fan")
    assert items_of(step) == expected
    assert plain(step_of(run, "after").output) == {"echo": {"all": expected}}
    assert step.child_run_id
    child = await get_run(stub, step.child_run_id)
    assert (child.parent_run_id, child.parent_step_id) == (run.id, "fan")
    assert [s.step_id for s in child.steps] == ["item-0", "item-1", "item-2"]
    assert all(s.state == StepRun.STATE_SUCCEEDED and s.attempt == 1 for s in child.steps)
    assert plain(child.input) == {"items": ["a", {"q": "b"}, "${run.input.topic}"]}


async def test_zero_items_succeed_at_once_and_one_item_is_a_list_of_one(
    podium: Connect,
) -> None:
    _, stub = await podium()
    run = await run_fan(stub, [])
    assert run.state == Run.STATE_SUCCEEDED, run
    assert items_of(step_of(run, "fan")) == []
    assert not step_of(run, "fan").child_run_id  # no child run for nothing
    run = await run_fan(stub, ["only"])
    assert run.state == Run.STATE_SUCCEEDED, run
    assert items_of(step_of(run, "fan")) == [{"echo": {"value": "only", "index": 0}}]


@pytest.mark.timeout(90)
async def test_a_thousand_items(podium: Connect) -> None:
    _, stub = await podium()
    run = await run_fan(
        stub,
        list(range(1000)),
        fan(agent="noop", input={"n": "${item}"}),
        execution={"concurrency": {"max_parallel": 64}},
    )
    assert run.state == Run.STATE_SUCCEEDED, run
    assert items_of(step_of(run, "fan")) == [{}] * 1000
    child = await get_run(stub, step_of(run, "fan").child_run_id)
    assert len(child.steps) == 1000
    assert child.steps[999].step_id == "item-999"
    assert plain(child.steps[999].input) == {"n": 999}


async def test_max_parallel_bounds_the_items_running_at_once(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    _, stub = await podium()
    run = await run_fan(
        stub,
        [0.2] * 6,
        fan(input={"delay": "${item}"}, max_parallel=2),
        execution={"concurrency": {"max_parallel": 8}},
    )
    assert run.state == Run.STATE_SUCCEEDED, run
    assert example_agents["echo"].stats.max_in_flight <= 2
    # The run's max_parallel caps the step's.
    example_agents["echo"].reset()
    run = await run_fan(
        stub,
        [0.2] * 6,
        fan(input={"delay": "${item}"}, max_parallel=5),
        execution={"concurrency": {"max_parallel": 1}},
    )
    assert run.state == Run.STATE_SUCCEEDED, run
    assert example_agents["echo"].stats.max_in_flight == 1


async def test_cancelling_the_run_cancels_the_items(podium: Connect) -> None:
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan([fan(agent="sleeper", input={"seconds": "${item}"})]),
        input={"items": [30, 30]},
    )
    found: list[str] = []

    async def items_running() -> bool:
        run = await get_run(stub, started.run.id)
        found[:] = [step_of(run, "fan").child_run_id]
        if not found[0]:
            return False
        child = await get_run(stub, found[0])
        return any(s.state == StepRun.STATE_RUNNING for s in child.steps)

    await wait_until(items_running, "an item running")
    await stub.CancelRun(pb.CancelRunRequest(run_id=started.run.id, reason="enough"))
    child = await wait_for_run(stub, found[0])
    assert child.state == Run.STATE_CANCELLED
    assert {s.state for s in child.steps} == {StepRun.STATE_CANCELLED}


async def test_a_fork_with_a_new_input_fans_out_again(podium: Connect) -> None:
    _, stub = await podium()
    run = await run_fan(stub, ["a"])
    assert run.state == Run.STATE_SUCCEEDED, run
    forked = await stub.ForkRun(
        pb.ForkRunRequest(run_id=run.id, input=struct({"items": ["b", "c"]}))
    )
    again = await wait_for_run(stub, forked.run.id)
    assert again.state == Run.STATE_SUCCEEDED, again
    assert [i["echo"]["value"] for i in items_of(step_of(again, "fan"))] == ["b", "c"]


# ---------------------------------------------------------------- failure policies


def flaky_fan(**policy: Any) -> dict[str, Any]:
    """Items are each item's failing attempts (fatal: no retry)."""
    return fan(
        agent="flaky",
        input={"failures": "${item}", "fatal": True},
        on_failure={"max_attempts": 1, **policy},
    )


async def test_a_failed_item_fails_the_step_by_default(podium: Connect) -> None:
    _, stub = await podium()
    run = await run_fan(stub, [0, 99, 0], flaky_fan())
    assert run.state == Run.STATE_FAILED, run
    step = step_of(run, "fan")
    assert step.state == StepRun.STATE_FAILED
    assert step.error.code == "CHILD_RUN_FAILED"
    child = await get_run(stub, step.child_run_id)
    assert child.state == Run.STATE_FAILED
    assert step_of(child, "item-1").error.code == "FLAKY"


async def test_allow_skip_leaves_null_in_the_list(podium: Connect) -> None:
    _, stub = await podium()
    run = await run_fan(stub, [0, 99, 0], flaky_fan(allow_skip=True))
    assert run.state == Run.STATE_SUCCEEDED, run
    assert items_of(step_of(run, "fan")) == [{"attempt": 1}, None, {"attempt": 1}]
    child = await get_run(stub, step_of(run, "fan").child_run_id)
    assert step_of(child, "item-1").state == StepRun.STATE_SKIPPED


async def test_notify_human_reviews_the_failed_item(podium: Connect) -> None:
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan([fan(agent="flaky", input={"failures": "${item}"},
                         on_failure={"max_attempts": 1, "notify_human": True})]),
        input={"items": [0, 1]},
    )  # fmt: skip
    found: list[Approval] = []

    async def reviewed() -> bool:
        run = await get_run(stub, started.run.id)
        child_id = step_of(run, "fan").child_run_id
        if not child_id:
            return False
        response = await stub.ListApprovals(pb.ListApprovalsRequest(run_id=child_id))
        found[:] = list(response.approvals)
        return len(found) == 1

    await wait_until(reviewed, "a failure review of item-1")
    assert found[0].kind == Approval.KIND_FAILURE_REVIEW
    assert found[0].step_id == "item-1"
    request = pb.DecideApprovalRequest(approval_id=found[0].id)
    request.decision = approval_pb2.Decision.DECISION_RETRY
    await stub.DecideApproval(request)
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert items_of(step_of(run, "fan")) == [{"attempt": 1}, {"attempt": 2}]


# ---------------------------------------------------------------------------- cache


async def test_identical_items_share_one_cached_output(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    _, stub = await podium()
    step = fan(input={"value": "${item}"}, caching={"enabled": True})
    run = await run_fan(stub, ["x", "y", "x"], step)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert items_of(step_of(run, "fan")) == [{"echo": {"value": v}} for v in "xyx"]
    assert example_agents["echo"].stats.calls == 2
    child = await get_run(stub, step_of(run, "fan").child_run_id)
    assert sorted(s.cached for s in child.steps) == [False, False, True]
    # The same items in another run of the same plan: every item hits.
    again = await run_fan(stub, ["y", "x"], step)
    assert items_of(step_of(again, "fan")) == [{"echo": {"value": v}} for v in "yx"]
    assert example_agents["echo"].stats.calls == 2


async def test_item_entries_belong_to_the_definition_and_are_invalidated_with_it(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    _, stub = await podium()
    await create_definition(
        stub, "fanned", [fan(input={"value": "${item}"})], execution={"caching": {"enabled": True}}
    )
    for _ in range(2):
        run = await wait_for_run(
            stub, (await start_run(stub, "fanned", input={"items": ["a", "b"]})).run.id
        )
        assert run.state == Run.STATE_SUCCEEDED, run
    assert example_agents["echo"].stats.calls == 2  # the second run hit both
    request = pb.InvalidateCacheRequest(definition_name="fanned")
    assert (await stub.InvalidateCache(request)).deleted == 2
    run = await wait_for_run(stub, (await start_run(stub, "fanned", input={"items": ["a"]})).run.id)
    assert example_agents["echo"].stats.calls == 3  # computed again


# ------------------------------------------------------------------------ refusals


async def test_validation_names_the_fields(podium: Connect) -> None:
    _, stub = await podium()
    cases: list[tuple[dict[str, Any], str]] = [
        (fan(for_each="items"), "steps[1].for_each"),
        (fan(for_each="${run.input.a}${run.input.b}"), "steps[1].for_each"),
        (fan(for_each="${steps.first.output.x}", depends_on=[]), "steps[1].for_each"),
        (fan(for_each="${item}"), "steps[1].for_each"),
        (fan(for_each="${run.input.items"), "steps[1].for_each"),
        (fan(checkpoint={"when": "WHEN_BEFORE"}), "steps[1].checkpoint"),
        ({"id": "fan", "agent": "echo", "input": {"v": "${item}"}}, "steps[1].input.v"),
        ({"id": "fan", "agent": "echo", "max_parallel": 2}, "steps[1].max_parallel"),
    ]
    for step, field in cases:
        steps = [{"id": "first", "agent": "echo"}, step]
        error = await rpc_error(create_definition(stub, "bad", steps))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, step
        assert field in violations(error), (step, violations(error))
    step = fan()
    del step["agent"]
    step["orchestration"] = {"name": "bad"}
    error = await rpc_error(create_definition(stub, "bad", [step]))
    assert "steps[0].orchestration" in violations(error)


async def test_not_a_list_and_too_many_items_fail_the_step(podium: Connect) -> None:
    _, stub = await podium(for_each_max_items=3)
    run = await run_fan(stub, {"a": 1}, fan(on_failure={"max_attempts": 3}))
    assert run.state == Run.STATE_FAILED, run
    step = step_of(run, "fan")
    assert (step.error.code, step.attempt) == ("FOR_EACH_NOT_A_LIST", 1)
    assert "dict" in step.error.message or "object" in step.error.message
    run = await run_fan(stub, [1, 2, 3, 4])
    step = step_of(run, "fan")
    assert step.error.code == "FOR_EACH_TOO_MANY_ITEMS", step
    assert "ORCHESTRATION_FOR_EACH_MAX_ITEMS" in step.error.message
    assert not step.error.retryable


# ----------------------------------------------------------------------------- CLI


async def test_cli_shows_the_step_with_its_child_run(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address]
    flow = tmp_path / "fan.yaml"
    flow.write_text(
        "name: fan\nsteps:\n"
        "  - id: each\n    agent: echo\n    for_each: ${run.input.items}\n"
        "    input: {v: '${item}'}\n"
    )
    assert (await podium_cli("definitions", "apply", str(flow), *address)).returncode == 0
    done = await podium_cli(
        "runs", "start", "fan", "--input", '{"items": [1, 2]}', "--wait", *address
    )
    assert done.returncode == 0, done.stdout + done.stderr
    child_id = re.search(r"each\s+SUCCEEDED\s+attempt 1/1\s+child run (\S+)", done.stdout)
    assert child_id, done.stdout
    got = await podium_cli("runs", "get", child_id.group(1), *address)
    assert "(step each)" in got.stdout
    assert re.search(r"item-1\s+SUCCEEDED", got.stdout), got.stdout


async def test_the_example_definition_runs(podium: Connect, example_agents: ExampleAgents) -> None:
    _, stub = await podium()
    definition = load_definition(EXAMPLE)
    await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=definition))
    started = await start_run(stub, "fan-out", input={"topic": "green tea"})
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    summaries = items_of(step_of(run, "summarize"))
    assert len(summaries) == 5 and summaries[0]["summary"]
    translations = items_of(step_of(run, "translate"))
    assert len(translations) == 5
    assert example_agents["summarizer"].stats.max_in_flight <= 2
