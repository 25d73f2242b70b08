"""Step conditions (``when:``) end to end: a real Podium server on a fresh database, the
generated stub, the real example agents, and the CLI.

A false condition skips the step (CONDITION_FALSE, no attempt, no agent call) and its
dependents still run; an evaluation error fails it (CONDITION_ERROR); validation reports
bad expressions as field violations on ``steps[i].when``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from podium.client.definitions import load_definition
from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from tests.integration.client_helpers import podium as podium_cli
from tests.integration.conftest import StartServer, static_agents
from tests.integration.rpc import rpc_error, violations
from tests.integration.runs_helpers import (
    Run,
    StepRun,
    all_events,
    create_definition,
    definition,
    describe,
    event_type,
    plain,
    plan,
    start_run,
    step_of,
    step_states,
    struct,
    wait_for_run,
    wait_until,
)
from tests.integration.test_observability import delta, scrape

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-router.yaml"

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

Connect = Callable[..., Awaitable[tuple[PodiumServer, "OrchestrationServiceAsyncStub"]]]


@pytest.fixture
async def podium(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[Connect]:
    """Factory: ``await podium()`` starts a server with every example agent and returns
    it with a stub on a new channel."""
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


def routed(
    label_condition: str = 'steps.classify.output.echo.label == "billing"',
) -> list[dict[str, Any]]:
    """classify -> billing (when label is billing) / general (otherwise) -> reply (join)."""
    return [
        {"id": "classify", "agent": "echo", "input": {"label": "${run.input.label}"}},
        {
            "id": "billing",
            "agent": "echo",
            "depends_on": ["classify"],
            "when": label_condition,
            "input": {"team": "billing"},
        },
        {
            "id": "general",
            "agent": "echo",
            "depends_on": ["classify"],
            "when": f"!({label_condition})",
            "input": {"team": "general"},
        },
        {
            "id": "reply",
            "agent": "echo",
            "depends_on": ["billing", "general"],
            "input": {"billing": "${steps.billing.output}", "general": "${steps.general.output}"},
        },
    ]


async def test_true_and_false_conditions(podium: Connect, example_agents: ExampleAgents) -> None:
    """A true condition runs the step; a false one skips it with CONDITION_FALSE, an
    event, no attempt and no agent call; the run succeeds."""
    _, stub = await podium()
    example_agents.reset()
    steps = [
        {"id": "yes", "agent": "echo", "when": 'run.input.language != "en"'},
        {"id": "no", "agent": "noop", "when": 'run.input.language == "en"'},
    ]
    started = await start_run(stub, inline=plan(steps), input={"language": "fr"})
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    yes, no = step_of(run, "yes"), step_of(run, "no")
    assert yes.state == StepRun.STATE_SUCCEEDED
    assert no.state == StepRun.STATE_SKIPPED
    assert no.error.code == "CONDITION_FALSE"
    assert "is false" in no.error.message
    assert no.attempt == 0 and not no.attempts  # no attempt used
    assert example_agents["noop"].stats.calls == 0
    skipped = [e for e in await all_events(stub, run.id) if event_type(e) == "step.skipped"]
    assert [(e.step_id, e.error.code) for e in skipped] == [("no", "CONDITION_FALSE")]


async def test_if_else_routing_and_the_join_after_a_skipped_branch(podium: Connect) -> None:
    """Two branches with complementary conditions on a classifier's output: exactly one
    runs, the join runs after both (the skipped one's output is null)."""
    _, stub = await podium()
    await create_definition(stub, "router", routed())
    for label, ran, skipped in (("billing", "billing", "general"), ("other", "general", "billing")):
        started = await start_run(stub, "router", input={"label": label})
        run = await wait_for_run(stub, started.run.id)
        assert run.state == Run.STATE_SUCCEEDED, run
        assert step_of(run, ran).state == StepRun.STATE_SUCCEEDED
        assert step_of(run, skipped).state == StepRun.STATE_SKIPPED
        assert step_of(run, skipped).error.code == "CONDITION_FALSE"
        reply = plain(step_of(run, "reply").output)["echo"]
        assert reply[skipped] is None
        assert reply[ran] == {"echo": {"team": ran}}


async def test_a_condition_skip_never_skips_dependents(podium: Connect) -> None:
    """skip_dependents applies to failures only: a step skipped by its condition leaves
    its dependents to run; a step whose only dependency was skipped runs too."""
    _, stub = await podium()
    steps = [
        {
            "id": "a",
            "agent": "echo",
            "when": "false",
            "on_failure": {"allow_skip": True, "skip_dependents": True},
        },
        {"id": "b", "agent": "echo", "depends_on": ["a"], "input": {"a": "${steps.a.output}"}},
    ]
    run = await wait_for_run(stub, (await start_run(stub, inline=plan(steps))).run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert step_states(run) == {"a": "STATE_SKIPPED", "b": "STATE_SUCCEEDED"}
    assert plain(step_of(run, "b").output) == {"echo": {"a": None}}


async def test_conditions_on_run_metadata(podium: Connect) -> None:
    """run.labels, run.definition.name/version and run.id are visible to conditions."""
    _, stub = await podium()
    await create_definition(
        stub,
        "meta",
        [
            {
                "id": "labelled",
                "agent": "echo",
                "when": 'run.labels.tier == "gold" && run.definition.name == "meta"'
                " && run.definition.version == 1 && size(run.id) == 36",
            },
            {"id": "unlabelled", "agent": "echo", "when": '"tier" in run.labels'},
        ],
    )
    started = await start_run(stub, "meta", labels={"tier": "gold"})
    run = await wait_for_run(stub, started.run.id)
    assert step_states(run) == {"labelled": "STATE_SUCCEEDED", "unlabelled": "STATE_SUCCEEDED"}
    started = await start_run(stub, "meta", labels={"tier": "silver"})
    run = await wait_for_run(stub, started.run.id)
    assert step_states(run) == {"labelled": "STATE_SKIPPED", "unlabelled": "STATE_SUCCEEDED"}


async def test_conditions_on_run_metadata_given_at_start(podium: Connect) -> None:
    """run.metadata (StartRun's free-form metadata) is visible to conditions."""
    _, stub = await podium()
    steps = [
        {"id": "vip", "agent": "echo", "when": 'run.metadata.customer.plan == "enterprise"'},
        {"id": "all", "agent": "echo", "when": "!has(run.metadata.customer)"},
    ]
    for customer, expected in (
        ({"plan": "enterprise"}, {"vip": "STATE_SUCCEEDED", "all": "STATE_SKIPPED"}),
        ({"plan": "free"}, {"vip": "STATE_SKIPPED", "all": "STATE_SKIPPED"}),
    ):
        request = pb.StartRunRequest(
            plan=plan(steps), metadata=struct({"customer": customer}), start=True
        )
        run = await wait_for_run(stub, (await stub.StartRun(request)).run.id)
        assert run.state == Run.STATE_SUCCEEDED, describe(run)
        assert step_states(run) == expected
    run = await wait_for_run(stub, (await start_run(stub, inline=plan(steps[1:]))).run.id)
    assert step_states(run) == {"all": "STATE_SUCCEEDED"}


async def test_an_evaluation_error_fails_the_step_without_retries(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """A missing field or a result that is not a bool fails the step with the
    non-retryable CONDITION_ERROR (the failure policy applies: allow_skip skips)."""
    _, stub = await podium()
    example_agents.reset()
    steps = [
        {
            "id": "missing",
            "agent": "noop",
            "when": "run.input.absent == 1",
            "on_failure": {"max_attempts": 3},
        },
    ]
    run = await wait_for_run(stub, (await start_run(stub, inline=plan(steps))).run.id)
    assert run.state == Run.STATE_FAILED, run
    missing = step_of(run, "missing")
    assert missing.state == StepRun.STATE_FAILED
    assert missing.error.code == "CONDITION_ERROR"
    assert "absent" in missing.error.message
    assert missing.attempt == 1  # not retried
    assert example_agents["noop"].stats.calls == 0

    steps = [
        {
            "id": "number",
            "agent": "noop",
            "when": "run.input.n",
            "on_failure": {"allow_skip": True},
        },
        {"id": "after", "agent": "echo", "depends_on": ["number"]},
    ]
    started = await start_run(stub, inline=plan(steps), input={"n": 1})
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    number = step_of(run, "number")
    assert (number.state, number.error.code) == (StepRun.STATE_SKIPPED, "CONDITION_ERROR")
    assert "not a bool" in number.error.message


async def test_expression_errors_are_field_violations(podium: Connect) -> None:
    """Syntax errors, unknown variables, unknown and non-upstream steps: violations on
    steps[i].when with the position in the expression, at CreateDefinition,
    ValidateDefinition and StartRun (inline)."""
    _, stub = await podium()
    steps: list[dict[str, Any]] = [
        {"id": "a", "agent": "echo"},
        {"id": "b", "agent": "echo", "when": "run.input.x =="},
        {"id": "c", "agent": "echo", "when": "steps.nope.output == 1"},
        {"id": "d", "agent": "echo", "when": "steps.a.output.x == 1"},
        {"id": "e", "agent": "echo", "depends_on": ["a"], "when": "\nsteps.b.output != null"},
        {"id": "f", "agent": "echo", "when": "unknown == 1"},
        {"id": "g", "agent": "echo", "depends_on": ["a"], "when": "steps.a.output.ok"},
        {"id": "h", "agent": "echo", "when": "run.inptu.x"},
    ]
    error = await rpc_error(
        stub.CreateDefinition(pb.CreateDefinitionRequest(definition=definition("bad", steps)))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    assert set(found) == {f"steps[{i}].when" for i in (1, 2, 3, 4, 5, 7)}, found
    assert "syntax error" in found["steps[1].when"]
    assert "line 1, column 15" in found["steps[1].when"]
    assert "unknown step 'nope'" in found["steps[2].when"]
    assert "column 7" in found["steps[2].when"]
    assert "not upstream of step d" in found["steps[3].when"]
    assert "not upstream of step e" in found["steps[4].when"]
    assert "line 2, column 7" in found["steps[4].when"]
    assert "unknown variable 'unknown'" in found["steps[5].when"]
    assert "unknown field run.inptu" in found["steps[7].when"]

    error = await rpc_error(
        stub.ValidateDefinition(pb.ValidateDefinitionRequest(definition=definition("bad", steps)))
    )
    assert set(violations(error)) == set(found)

    error = await rpc_error(start_run(stub, inline=plan(steps[:2])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"plan.steps[1].when"}


async def test_the_cli_shows_the_skip_reason(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    """A definition authored in YAML with `when:`; `podium runs get` shows the skipped
    step with CONDITION_FALSE."""
    server = await start_server(agents=static_agents(example_agents))
    address = ["--address", server.address]
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "name: cli-when\n"
        "steps:\n"
        "  - {id: greet, agent: echo}\n"
        "  - id: translate\n"
        "    agent: echo\n"
        "    when: run.input.language != 'en'\n"
    )
    applied = await podium_cli("definitions", "apply", str(flow), *address)
    assert applied.returncode == 0, applied.stderr
    started = await podium_cli(
        "runs", "start", "cli-when", "--input", '{"language": "en"}', "--wait", *address
    )
    assert started.returncode == 0, started.stderr + started.stdout
    assert "CONDITION_FALSE" in started.stdout
    run_id = started.stdout.split()[1]
    shown = await podium_cli("runs", "get", run_id, *address)
    line = next(line for line in shown.stdout.splitlines() if "translate" in line)
    assert "SKIPPED" in line and "CONDITION_FALSE" in line


async def test_the_example_definition_routes_and_translates(podium: Connect) -> None:
    """examples/support-router.yaml: billing or general by category, the join, and the
    translation only for a language other than English."""
    _, stub = await podium()
    await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=load_definition(EXAMPLE)))
    cases = [
        ({"category": "billing", "text": "charged twice", "language": "de"}, "billing", True),
        ({"category": "login", "text": "locked out", "language": "en"}, "general", False),
        ({"category": "login", "text": "locked out"}, "general", False),
    ]
    for run_input, branch, translated in cases:
        started = await start_run(stub, "support-router", input=run_input)
        run = await wait_for_run(stub, started.run.id)
        assert run.state == Run.STATE_SUCCEEDED, describe(run)
        other = "general" if branch == "billing" else "billing"
        assert step_of(run, branch).state == StepRun.STATE_SUCCEEDED
        assert step_of(run, other).error.code == "CONDITION_FALSE"
        reply = plain(step_of(run, "reply").output)["echo"]
        assert reply[other] is None and run_input["text"] in reply[branch]
        translate = step_of(run, "translate")
        if translated:
            assert translate.state == StepRun.STATE_SUCCEEDED
            assert plain(translate.output)["target"] == "de"
        else:
            assert translate.error.code == "CONDITION_FALSE"


async def test_a_condition_skip_is_not_counted_as_an_attempt(podium: Connect) -> None:
    """/metrics: a step skipped by its condition adds no attempt (no agent was called)."""
    server, stub = await podium(metrics_address="127.0.0.1:0")
    before = await scrape(server)
    steps: list[dict[str, Any]] = [
        {"id": "no", "agent": "noop", "when": "false"},
        {"id": "yes", "agent": "echo", "depends_on": ["no"]},
    ]
    run = await wait_for_run(stub, (await start_run(stub, inline=plan(steps))).run.id)
    assert run.state == Run.STATE_SUCCEEDED

    async def counted() -> bool:
        now = await scrape(server)
        return delta(before, now, "orchestration_steps_total", agent="echo", state="succeeded") == 1

    await wait_until(counted, "the echo step in /metrics")
    after = await scrape(server)
    for outcome in ("succeeded", "failed", "retry"):
        assert delta(before, after, "orchestration_step_attempts_total", agent="noop",
                     outcome=outcome) == 0  # fmt: skip
