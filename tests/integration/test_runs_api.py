"""Run RPCs end to end: an in-process Podium server on a fresh database, the generated
async stub, and the real example agents (``podium.client.examples.agents``) as gRPC
servers. No mocks; what the agents saw (their stats) is checked against what GetRun,
ListRunEvents and ListDeliverables report.

No timing assertions: waits poll every 50 ms up to a generous deadline (runs_helpers).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from podium.client.agent import Agent, Task
from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import agent_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.conftest import StartServer
from tests.integration.rpc import error_details, rpc_error, violations
from tests.integration.runs_helpers import (
    Run,
    RunEvent,
    StepRun,
    all_events,
    create_definition,
    event_summary,
    event_type,
    get_run,
    plain,
    plan,
    scheduler_passes,
    start_run,
    step_of,
    steps_by_id,
    struct,
    wait_for_run,
    wait_for_step,
    wait_until,
)

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

Connect = Callable[..., Awaitable["OrchestrationServiceAsyncStub"]]

FAST_RETRIES = {
    "on_step_failure": {"max_attempts": 3, "backoff": {"initial_seconds": 0.05, "max_seconds": 0.1}}
}


# --------------------------------------------------------------------------- helpers


def agents_setting(examples: ExampleAgents, **options: str) -> str:
    """A ``PODIUM_AGENTS`` value for every example agent, with ``;``-options per agent
    name, e.g. ``agents_setting(examples, sleeper="max=1", summarizer="skills=summarize")``."""
    entries = []
    for name, address in examples.addresses.items():
        extra = options.get(name.replace("-", "_"), "")
        entries.append(f"{name}={address}" + (f";{extra}" if extra else ""))
    return ",".join(entries)


@pytest.fixture
async def podium(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[Connect]:
    """Factory: ``await podium(agents=None, **settings)`` starts a server (every example
    agent static unless ``agents`` is given) and returns a stub on a new channel."""
    channels: list[grpc.aio.Channel] = []

    async def connect(agents: str | None = None, **settings: Any) -> OrchestrationServiceAsyncStub:
        server = await start_server(
            agents=agents_setting(example_agents) if agents is None else agents, **settings
        )
        channel = grpc.aio.insecure_channel(server.address)
        channels.append(channel)
        return pb_grpc.OrchestrationServiceStub(channel)

    try:
        yield connect
    finally:
        for channel in channels:
            await channel.close(None)


def ns(ts: timestamp_pb2.Timestamp) -> int:
    """A Timestamp in nanoseconds since the epoch (0 when unset)."""
    return int(ts.ToNanoseconds())


def assert_attempts_ordered(step: StepRun) -> None:
    """Attempts numbered 1..n, each with an agent, a start, an end after it and the
    matching duration; attempt n ends before attempt n+1 starts."""
    assert [a.number for a in step.attempts] == list(range(1, len(step.attempts) + 1))
    for attempt in step.attempts:
        assert attempt.agent, step
        assert attempt.HasField("start_time") and attempt.HasField("end_time"), attempt
        assert ns(attempt.end_time) >= ns(attempt.start_time)
        assert attempt.duration.ToNanoseconds() == ns(attempt.end_time) - ns(attempt.start_time)
    for earlier, later in zip(step.attempts, step.attempts[1:], strict=False):
        assert ns(earlier.end_time) <= ns(later.start_time), (earlier, later)


# --------------------------------------------------------------------------- execution


async def test_linear_chain_passes_data_and_records_steps_attempts_and_events(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """a -> b -> c: `${run.input...}` and `${steps.X.output...}` are resolved (whole
    references keep their type, embedded ones are interpolated), GetRun shows resolved
    inputs, outputs, one attempt per step in order, run output = the sink's output by
    step id; the event log is exactly created/started/queued/started/completed.../
    completed with sequences 1..N, paged identically."""
    stub = await podium()
    await create_definition(
        stub,
        "chain",
        [
            {
                "id": "a",
                "agent": "echo",
                "input": {"x": "${run.input.x}", "note": "x=${run.input.x}"},
            },
            {
                "id": "b",
                "agent": "echo",
                "depends_on": ["a"],
                "input": {
                    "path": "${steps.a.output.echo.x}",
                    "note": "${steps.a.output.echo.note}",
                },
            },
            {
                "id": "c",
                "agent": "echo",
                "depends_on": ["b"],
                "input": {"from_b": "${steps.b.output.echo}", "x": "${run.input.x}"},
            },
        ],
    )
    started = await start_run(stub, "chain", input={"x": 7})
    assert not started.existing
    assert started.run.state in (Run.STATE_RUNNING, Run.STATE_SUCCEEDED)
    assert (started.run.definition_name, started.run.definition_version) == ("chain", 1)
    assert started.run.run_attempt == 1
    assert started.run.max_parallel == 1
    assert [s.step_id for s in started.run.steps] == ["a", "b", "c"]

    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert not run.error.code
    steps = steps_by_id(run)
    a, b, c = steps["a"], steps["b"], steps["c"]
    assert list(a.depends_on) == [] and list(b.depends_on) == ["a"] and list(c.depends_on) == ["b"]

    assert plain(a.input) == {"x": 7, "note": "x=7"}
    assert plain(a.output) == {"echo": {"x": 7, "note": "x=7"}}
    assert plain(b.input) == {"path": 7, "note": "x=7"}
    assert plain(b.output) == {"echo": {"path": 7, "note": "x=7"}}
    assert plain(c.input) == {"from_b": {"path": 7, "note": "x=7"}, "x": 7}
    # The run output holds the sinks only (c), by step id.
    assert plain(run.output) == {"c": plain(c.output)}
    assert plain(run.input) == {"x": 7}

    for step in (a, b, c):
        assert step.state == StepRun.STATE_SUCCEEDED
        assert (step.attempt, step.max_attempts, step.agent) == (1, 1, "echo")
        assert len(step.attempts) == 1
        assert step.attempts[0].agent == "echo" and not step.attempts[0].error.code
        assert_attempts_ordered(step)
        assert ns(step.queue_time) <= ns(step.start_time) <= ns(step.end_time)
        assert step.start_time == step.attempts[0].start_time
        assert not step.error.code and not step.HasField("next_attempt_time")
        uuid.UUID(step.conversation_id)
    # Each step became runnable when its dependency completed, and started after it.
    assert ns(b.queue_time) >= ns(a.end_time) and ns(b.start_time) >= ns(a.end_time)
    assert ns(c.queue_time) >= ns(b.end_time) and ns(c.start_time) >= ns(b.end_time)
    assert ns(run.create_time) <= ns(run.start_time) <= ns(a.start_time)
    assert ns(run.end_time) >= ns(c.end_time)

    seen = list(example_agents["echo"].stats.tasks)
    assert [(t.run_id, t.step_id, t.attempt) for t in seen] == [
        (run.id, "a", 1),
        (run.id, "b", 1),
        (run.id, "c", 1),
    ]

    events = await all_events(stub, run.id)
    assert event_summary(events) == [
        ("run.created", ""),
        ("run.started", ""),
        ("step.queued", "a"),
        ("step.started", "a"),
        ("step.completed", "a"),
        ("step.queued", "b"),
        ("step.started", "b"),
        ("step.completed", "b"),
        ("step.queued", "c"),
        ("step.started", "c"),
        ("step.completed", "c"),
        ("run.completed", ""),
    ]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert run.last_event_sequence == len(events)
    assert {e.run_id for e in events} == {run.id}
    assert {e.definition_name for e in events} == {"chain"}
    assert events[0].run_state == Run.STATE_CREATED
    assert events[1].run_state == Run.STATE_RUNNING
    assert events[-1].run_state == Run.STATE_SUCCEEDED
    for event in events:
        if event_type(event) == "step.started":
            assert event.attempt == 1 and event.step_state == StepRun.STATE_RUNNING
        if event_type(event) == "step.completed":
            assert event.step_state == StepRun.STATE_SUCCEEDED
            assert plain(event.data)["output"] == plain(steps[event.step_id].output)
    # Paging through the log gives the same events; nothing after the last one.
    assert await all_events(stub, run.id, page_size=5) == events
    tail = await stub.ListRunEvents(
        pb.ListRunEventsRequest(run_id=run.id, after_sequence=len(events))
    )
    assert list(tail.events) == [] and tail.next_after_sequence == 0
    for bad in (
        pb.ListRunEventsRequest(run_id=run.id, after_sequence=-1),
        pb.ListRunEventsRequest(run_id=run.id, page_size=-1),
    ):
        error = await rpc_error(stub.ListRunEvents(bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(error)) & {"after_sequence", "page_size"}


async def test_fan_out_fan_in_keeps_json_types(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """Three parallel roots feed two joins; a list of whole references keeps each value's
    JSON type (number, object, boolean), and the summarizer receives objects (it reads
    their `text`) and an integer `max_words` (it rejects anything else)."""
    stub = await podium()
    await create_definition(
        stub,
        "fan",
        [
            {"id": "a", "agent": "echo", "input": {"n": 2, "doc": {"text": "alpha beta gamma"}}},
            {"id": "b", "agent": "echo", "input": {"doc": {"text": "delta epsilon"}, "ok": True}},
            {"id": "c", "agent": "echo", "input": {"n": 3}},
            {
                "id": "join",
                "agent": "summarizer",
                "depends_on": ["a", "b", "c"],
                "input": {
                    "text": ["${steps.a.output.echo.doc}", "${steps.b.output.echo.doc}"],
                    "max_words": "${steps.c.output.echo.n}",
                },
            },
            {
                "id": "collect",
                "agent": "echo",
                "depends_on": ["a", "b"],
                "input": {
                    "items": [
                        "${steps.a.output.echo.n}",
                        "${steps.b.output.echo.doc}",
                        "${steps.b.output.echo.ok}",
                        "literal",
                    ],
                    "mixed": "n=${steps.a.output.echo.n} doc=${steps.b.output.echo.doc}",
                },
            },
        ],
        execution={"concurrency": {"max_parallel": 3}},
    )
    started = await start_run(stub, "fan")
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run

    join = step_of(run, "join")
    assert plain(join.output) == {"summary": "alpha beta gamma ...", "word_count": 5, "sources": 2}
    texts = join.input.fields["text"].list_value.values
    assert [v.WhichOneof("kind") for v in texts] == ["struct_value", "struct_value"]
    assert join.input.fields["max_words"].WhichOneof("kind") == "number_value"

    collect = step_of(run, "collect")
    items = collect.input.fields["items"].list_value.values
    assert [v.WhichOneof("kind") for v in items] == [
        "number_value",
        "struct_value",
        "bool_value",
        "string_value",
    ]
    assert plain(collect.input)["items"] == [2, {"text": "delta epsilon"}, True, "literal"]
    # Embedded references are interpolated as text (objects as compact JSON).
    assert plain(collect.input)["mixed"] == 'n=2 doc={"text":"delta epsilon"}'

    assert set(plain(run.output)) == {"join", "collect"}
    assert plain(run.output)["join"] == plain(join.output)
    # The joins started only after all of their dependencies completed.
    steps = steps_by_id(run)
    for sink in ("join", "collect"):
        for dep in steps[sink].depends_on:
            assert ns(steps[sink].start_time) >= ns(steps[dep].end_time)
    assert example_agents["echo"].stats.calls == 4
    assert example_agents["summarizer"].stats.calls == 1


async def test_missing_reference_fails_the_step_and_the_run(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """`${steps.a.output.nope}` fails b with MISSING_REFERENCE (not retryable), the run
    FAILED naming b, the running sibling is cancelled (its agent sees it), b's dependent
    never runs; cancelling the failed run is FAILED_PRECONDITION."""
    stub = await podium()
    await create_definition(
        stub,
        "broken",
        [
            {"id": "a", "agent": "echo", "input": {"v": 1}, "rollback": {"hint": "undo a"}},
            {"id": "slow", "agent": "sleeper", "input": {"seconds": 30}},
            {
                "id": "b",
                "agent": "echo",
                "depends_on": ["a"],
                "input": {"x": "${steps.a.output.nope}"},
            },
            {"id": "c", "agent": "echo", "depends_on": ["b"], "input": {"y": 1}},
        ],
        execution={"concurrency": {"max_parallel": 2}},
        error_handling={"rollback": {"hint": "delete the draft"}},
    )
    started = await start_run(stub, "broken")
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED, run
    assert run.error.code == "MISSING_REFERENCE"
    assert run.error.step_id == "b"
    assert "nope" in run.error.message

    steps = steps_by_id(run)
    assert steps["a"].state == StepRun.STATE_SUCCEEDED
    b = steps["b"]
    assert b.state == StepRun.STATE_FAILED
    assert (b.error.code, b.error.retryable) == ("MISSING_REFERENCE", False)
    assert b.attempt == 1 and len(b.attempts) == 1
    assert b.attempts[0].error.code == "MISSING_REFERENCE"
    assert steps["slow"].state == StepRun.STATE_CANCELLED
    assert steps["c"].state == StepRun.STATE_CANCELLED
    assert steps["c"].attempt == 0 and list(steps["c"].attempts) == []
    assert plain(run.output) == {}
    # Hints of the completed steps (newest first), then the definition's.
    assert list(run.rollback_hints) == ["undo a", "delete the draft"]

    sleeper = example_agents["sleeper"].stats
    await wait_until(lambda: sleeper.cancellations == 1, "the sleeper to see its cancellation")
    assert sleeper.in_flight == 0
    # Only a reached the echo agent: b failed before the call, c never started.
    assert [t.step_id for t in example_agents["echo"].stats.tasks] == ["a"]

    events = await all_events(stub, run.id)
    # The failure, then a step.cancelled for every unfinished step, then run.failed.
    tail = event_summary(events)[-4:]
    assert tail[0] == ("step.failed", "b") and tail[-1] == ("run.failed", "b")
    assert sorted(tail[1:3]) == [("step.cancelled", "c"), ("step.cancelled", "slow")]
    assert events[-1].error.code == "MISSING_REFERENCE"
    assert events[-1].run_state == Run.STATE_FAILED
    assert ("step.started", "c") not in event_summary(events)

    error = await rpc_error(stub.CancelRun(pb.CancelRunRequest(run_id=run.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(error)[0].reason == "RUN_FINISHED"


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize(
    ("definition_max", "settings", "steps", "run_max_parallel", "in_flight"),
    [
        pytest.param(2, {}, 6, 2, 2, id="definition"),
        pytest.param(None, {"default_max_parallel": 3}, 5, 3, 3, id="server-default"),
        pytest.param(None, {}, 3, 1, 1, id="sequential"),
        pytest.param(2, {"default_max_parallel": 4}, 4, 2, 2, id="definition-over-default"),
        pytest.param(None, {"max_concurrency": 2}, 4, 2, 2, id="max-concurrency-fallback"),
        pytest.param(4, {"max_concurrency": 2}, 4, None, 2, id="max-concurrency-caps-replica"),
    ],
)
async def test_max_parallel_bounds_steps_in_flight(
    podium: Connect,
    example_agents: ExampleAgents,
    definition_max: int | None,
    settings: dict[str, Any],
    steps: int,
    run_max_parallel: int | None,
    in_flight: int,
) -> None:
    """Independent sleeper steps run `max_parallel` at a time, no more and no fewer
    (the sleeper's probe): definition -> ORCHESTRATION_DEFAULT_MAX_PARALLEL ->
    ORCHESTRATION_MAX_CONCURRENCY -> 1; the replica's slots cap everything."""
    stub = await podium(**settings)
    extra = (
        {"execution": {"concurrency": {"max_parallel": definition_max}}} if definition_max else {}
    )
    await create_definition(
        stub,
        "wide",
        [{"id": f"s{i}", "agent": "sleeper", "input": {"seconds": 0.25}} for i in range(steps)],
        **extra,
    )
    started = await start_run(stub, "wide")
    if run_max_parallel is not None:
        assert started.run.max_parallel == run_max_parallel
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    stats = example_agents["sleeper"].stats
    assert stats.calls == steps
    assert stats.max_in_flight == in_flight


@pytest.mark.parametrize("replicas", [1, 2])
async def test_agent_max_concurrency_holds_across_runs(
    podium: Connect, example_agents: ExampleAgents, replicas: int
) -> None:
    """A static agent with `max=1` never gets two tasks at once, even from two runs
    that each allow two parallel steps, started on one replica or on two replicas
    sharing the database; every step still runs."""
    setting = agents_setting(example_agents, sleeper="max=1")
    stubs = [await podium(agents=setting) for _ in range(replicas)]
    stub = stubs[0]
    listed = await stub.ListAgents(pb.ListAgentsRequest())
    assert {a.name: a.max_concurrency for a in listed.agents}["sleeper"] == 1
    await create_definition(
        stub,
        "pair",
        [{"id": f"s{i}", "agent": "sleeper", "input": {"seconds": 0.2}} for i in range(2)],
        execution={"concurrency": {"max_parallel": 2}},
    )
    first, second = await asyncio.gather(start_run(stubs[0], "pair"), start_run(stubs[-1], "pair"))
    runs = [await wait_for_run(stub, r.run.id) for r in (first, second)]
    assert [r.state for r in runs] == [Run.STATE_SUCCEEDED] * 2
    stats = example_agents["sleeper"].stats
    assert stats.calls == 4
    assert stats.max_in_flight == 1
    assert {t.run_id for t in stats.tasks} == {first.run.id, second.run.id}


async def test_skill_is_routed_to_an_agent_offering_it(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """`skill: summarize` runs on the agent whose configuration offers it (the agent
    gets the skill in the request); a skill nobody offers fails NO_AGENT_FOR_SKILL."""
    stub = await podium(agents=agents_setting(example_agents, summarizer="skills=summarize"))
    started = await start_run(
        stub, inline=plan([{"id": "sum", "skill": "summarize", "input": {"text": "one two three"}}])
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    step = step_of(run, "sum")
    assert step.agent == "summarizer"
    assert [a.agent for a in step.attempts] == ["summarizer"]
    assert plain(step.output)["word_count"] == 3
    seen = list(example_agents["summarizer"].stats.tasks)
    assert [(t.step_id, t.skill) for t in seen] == [("sum", "summarize")]

    started = await start_run(stub, inline=plan([{"id": "odd", "skill": "juggle", "input": {}}]))
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED, run
    assert step_of(run, "odd").error.code == "NO_AGENT_FOR_SKILL"
    assert run.error.code == "NO_AGENT_FOR_SKILL" and run.error.step_id == "odd"


async def test_skill_routing_uses_an_agent_with_a_free_slot(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """Two agents offer `sleep`: `sleeper` (max 1) and `sleeper-wide` (unlimited, same
    server). Three parallel skill steps all run at once: when `sleeper` is full, the
    third goes to `sleeper-wide` instead of waiting."""
    address = example_agents.addresses["sleeper"]
    stub = await podium(
        agents=f"sleeper={address};skills=sleep;max=1,sleeper-wide={address};skills=sleep"
    )
    started = await start_run(
        stub,
        inline=plan(
            [{"id": f"s{i}", "skill": "sleep", "input": {"seconds": 0.5}} for i in range(3)],
            execution={"concurrency": {"max_parallel": 3}},
        ),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert {s.agent for s in run.steps} <= {"sleeper", "sleeper-wide"}
    assert example_agents["sleeper"].stats.max_in_flight == 3


# --------------------------------------------------------------------------- start


async def test_start_run_is_idempotent_by_request_id(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """The same request_id returns the same run with `existing`, sequentially and when
    racing; only one run exists and its steps ran once; an over-long id is rejected."""
    stub = await podium()
    await create_definition(stub, "once", [{"id": "a", "agent": "echo", "input": {"v": 1}}])
    first = await start_run(stub, "once", request_id="req-1")
    again = await start_run(stub, "once", request_id="req-1", input={"other": True})
    assert not first.existing and again.existing
    assert again.run.id == first.run.id
    assert again.run.request_id == "req-1"
    assert plain(again.run.input) == {}  # the original run, not the retried request

    racing = await asyncio.gather(*(start_run(stub, "once", request_id="req-2") for _ in range(5)))
    assert len({r.run.id for r in racing}) == 1
    assert sorted(r.existing for r in racing) == [False, True, True, True, True]

    listed = await stub.ListRuns(pb.ListRunsRequest())
    assert sorted(r.id for r in listed.runs) == sorted({first.run.id, racing[0].run.id})
    for run_id in (first.run.id, racing[0].run.id):
        assert (await wait_for_run(stub, run_id)).state == Run.STATE_SUCCEEDED
    assert example_agents["echo"].stats.calls == 2

    error = await rpc_error(start_run(stub, "once", request_id="x" * 129))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in violations(error)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="infinity"),
        pytest.param("a\x00b", id="nul-character"),
    ],
)
async def test_start_run_rejects_input_that_is_not_json(podium: Connect, value: object) -> None:
    """Run input must be storable JSON: NaN, infinities and NUL characters are
    INVALID_ARGUMENT naming `input` (a client error), and nothing is stored."""
    stub = await podium()
    error = await rpc_error(
        start_run(stub, inline=plan([{"id": "a", "agent": "echo"}]), input={"x": value})
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert any(field.startswith("input") for field in violations(error)), violations(error)
    assert list((await stub.ListRuns(pb.ListRunsRequest())).runs) == []


async def test_start_run_with_neither_definition_nor_plan_is_invalid(podium: Connect) -> None:
    """StartRun without a source names the `definition` field; an empty name names
    `definition.name`."""
    stub = await podium()
    error = await rpc_error(stub.StartRun(pb.StartRunRequest(start=True)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "definition" in violations(error)
    error = await rpc_error(
        stub.StartRun(pb.StartRunRequest(definition=pb.DefinitionRef(name=""), start=True))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "definition.name" in violations(error)


async def test_inline_plan_runs_and_an_invalid_one_is_rejected_with_plan_fields(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """StartRun with `plan` runs it as an unnamed run; an invalid plan is
    INVALID_ARGUMENT with every violation under `plan.` and nothing is stored."""
    stub = await podium()
    invalid = plan(
        [
            {"id": "a", "agent": "echo"},
            {"id": "b", "agent": "echo", "depends_on": ["ghost"]},
            {"id": "a", "agent": "echo"},
        ]
    )
    error = await rpc_error(start_run(stub, inline=invalid))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, _ = error_details(error)
    assert info.reason == "INVALID_DEFINITION"
    found = violations(error)
    assert "plan.steps[1].depends_on[0]" in found
    assert "plan.steps[2].id" in found
    assert all(field.startswith("plan.") for field in found), found
    assert list((await stub.ListRuns(pb.ListRunsRequest())).runs) == []

    good = plan(
        [{"id": "hello", "agent": "echo", "input": {"who": "${run.input.who}"}}],
        labels={"kind": "adhoc"},
    )
    started = await start_run(stub, inline=good, input={"who": "world"})
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert (run.definition_name, run.definition_version) == ("", 0)
    assert [s.id for s in run.plan.steps] == ["hello"]
    assert dict(run.labels) == {"kind": "adhoc"}
    assert plain(run.output) == {"hello": {"echo": {"who": "world"}}}
    assert [r.id for r in (await stub.ListRuns(pb.ListRunsRequest())).runs] == [run.id]
    assert list((await stub.ListDefinitions(pb.ListDefinitionsRequest())).definitions) == []
    assert example_agents["echo"].stats.calls == 1


async def test_definition_reference_version_archive_and_not_found(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """A run uses the latest version or the pinned one; an unknown definition or
    version is NOT_FOUND; an archived definition refuses new runs (latest or pinned)."""
    stub = await podium()
    await create_definition(stub, "pinned", [{"id": "a", "agent": "echo", "input": {"v": 1}}])
    await create_definition(stub, "pinned", [{"id": "a", "agent": "echo", "input": {"v": 2}}])
    latest = await wait_for_run(stub, (await start_run(stub, "pinned")).run.id)
    first = await wait_for_run(stub, (await start_run(stub, "pinned", version=1)).run.id)
    assert (latest.definition_version, plain(latest.output)) == (2, {"a": {"echo": {"v": 2}}})
    assert (first.definition_version, plain(first.output)) == (1, {"a": {"echo": {"v": 1}}})

    for name, version in (("never", 0), ("pinned", 9)):
        error = await rpc_error(start_run(stub, name, version=version))
        assert error.code() == grpc.StatusCode.NOT_FOUND, (name, version)
        assert error_details(error)[0].reason == "DEFINITION_NOT_FOUND"

    await stub.ArchiveDefinition(pb.ArchiveDefinitionRequest(name="pinned"))
    for version in (0, 1, 2):
        error = await rpc_error(start_run(stub, "pinned", version=version))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, version
        assert error_details(error)[0].reason == "DEFINITION_ARCHIVED"
    assert len((await stub.ListRuns(pb.ListRunsRequest())).runs) == 2


async def test_archived_definition_refused_on_another_replica(podium: Connect) -> None:
    """Two replicas on one database: after ArchiveDefinition on replica A, replica B
    refuses StartRun of a pinned version it has cached (the flag is re-read)."""
    a = await podium()
    b = await podium()
    await create_definition(a, "shared", [{"id": "a", "agent": "echo", "input": {}}])
    await start_run(b, "shared", version=1)  # B caches version 1
    await a.ArchiveDefinition(pb.ArchiveDefinitionRequest(name="shared"))
    error = await rpc_error(start_run(b, "shared", version=1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_created_run_waits_for_continue_which_merges_input(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """start=false creates a CREATED run that executes nothing; ContinueRun merges its
    input over the run's and starts it; ContinueRun of a running or finished run is
    FAILED_PRECONDITION; a created run can be cancelled and then not continued."""
    stub = await podium()
    await create_definition(
        stub,
        "later",
        [
            {
                "id": "greet",
                "agent": "echo",
                "input": {
                    "topic": "${run.input.topic}",
                    "extra": "${run.input.extra}",
                    "keep": "${run.input.keep}",
                },
            },
            {"id": "nap", "agent": "sleeper", "depends_on": ["greet"], "input": {"seconds": 0.5}},
        ],
    )
    created = (await start_run(stub, "later", input={"topic": "t1", "keep": 1}, start=False)).run
    assert created.state == Run.STATE_CREATED
    assert not created.HasField("start_time")
    await scheduler_passes(stub)  # other runs execute meanwhile (noop agent)
    run = await get_run(stub, created.id)
    assert run.state == Run.STATE_CREATED
    assert all(s.attempt == 0 and not s.attempts for s in run.steps), run
    assert example_agents["echo"].stats.calls == 0
    assert event_summary(await all_events(stub, created.id)) == [("run.created", "")]

    continued = (
        await stub.ContinueRun(
            pb.ContinueRunRequest(run_id=created.id, input=struct({"extra": "e", "topic": "t2"}))
        )
    ).run
    assert continued.state == Run.STATE_RUNNING
    assert plain(continued.input) == {"topic": "t2", "keep": 1, "extra": "e"}
    assert continued.HasField("start_time")

    error = await rpc_error(stub.ContinueRun(pb.ContinueRunRequest(run_id=created.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(error)
    assert (info.reason, info.metadata["state"]) == ("RUN_NOT_CONTINUABLE", "running")

    run = await wait_for_run(stub, created.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert plain(step_of(run, "greet").output) == {"echo": {"topic": "t2", "extra": "e", "keep": 1}}
    error = await rpc_error(stub.ContinueRun(pb.ContinueRunRequest(run_id=created.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(error)[0].metadata["state"] == "succeeded"
    assert event_summary(await all_events(stub, created.id))[:3] == [
        ("run.created", ""),
        ("run.started", ""),
        ("step.queued", "greet"),
    ]

    parked = (await start_run(stub, "later", input={"topic": "x"}, start=False)).run
    cancelled = (await stub.CancelRun(pb.CancelRunRequest(run_id=parked.id))).run
    assert cancelled.state == Run.STATE_CANCELLED
    assert {s.state for s in cancelled.steps} == {StepRun.STATE_CANCELLED}
    error = await rpc_error(stub.ContinueRun(pb.ContinueRunRequest(run_id=parked.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert example_agents["echo"].stats.calls == 1


async def test_queue_time_of_a_continued_run_is_not_before_its_start(podium: Connect) -> None:
    """A step of a run created with start=false becomes runnable when ContinueRun
    starts the run, so its queue_time is not before the run's start_time."""
    stub = await podium()
    inline = plan([{"id": "a", "agent": "echo", "input": {}}])
    created = (await start_run(stub, inline=inline, start=False)).run
    await stub.ContinueRun(pb.ContinueRunRequest(run_id=created.id))
    run = await wait_for_run(stub, created.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    # Two requests, two transactions: a queue_time taken at creation would be earlier.
    assert ns(run.start_time) > ns(run.create_time)
    assert ns(step_of(run, "a").queue_time) >= ns(run.start_time)


# --------------------------------------------------------------------------- cancel


async def test_cancel_run_mid_step_cancels_the_agent_call_and_nothing_else_starts(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """CancelRun while a 30 s sleeper runs: the run is CANCELLED at once (reason
    recorded), the agent sees its call cancelled, the running and pending steps are
    CANCELLED, the dependent never starts; cancelling again changes nothing."""
    stub = await podium()
    await create_definition(
        stub,
        "cancel-me",
        [
            {"id": "nap", "agent": "sleeper", "input": {"seconds": 30}},
            {"id": "after", "agent": "echo", "depends_on": ["nap"], "input": {}},
        ],
    )
    run_id = (await start_run(stub, "cancel-me")).run.id
    await wait_for_step(stub, run_id, "nap", [StepRun.STATE_RUNNING])
    sleeper = example_agents["sleeper"].stats
    await wait_until(lambda: sleeper.in_flight == 1, "the sleeper to receive the task")

    cancelled = (await stub.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="user asked"))).run
    assert cancelled.state == Run.STATE_CANCELLED
    assert cancelled.error.message == "user asked"
    assert cancelled.HasField("end_time")
    await wait_until(lambda: sleeper.cancellations == 1, "the sleeper to see the cancel", within=10)
    assert sleeper.in_flight == 0

    await scheduler_passes(stub)  # a wrongly queued dependent would have started by then
    run = await get_run(stub, run_id)
    assert run.state == Run.STATE_CANCELLED
    nap, after = step_of(run, "nap"), step_of(run, "after")
    assert nap.state == StepRun.STATE_CANCELLED and after.state == StepRun.STATE_CANCELLED
    assert len(nap.attempts) == 1 and nap.attempts[0].HasField("end_time")
    assert nap.attempts[0].error.code == "CANCELLED"
    assert after.attempt == 0 and list(after.attempts) == []
    assert example_agents["echo"].stats.calls == 0
    events = await all_events(stub, run_id)
    assert event_summary(events)[-1] == ("run.cancelled", "")
    assert events[-1].run_state == Run.STATE_CANCELLED
    assert ("step.started", "after") not in event_summary(events)

    again = (await stub.CancelRun(pb.CancelRunRequest(run_id=run_id))).run
    assert again.state == Run.STATE_CANCELLED
    assert again.last_event_sequence == run.last_event_sequence == len(events)
    assert sleeper.calls == 1


async def test_cancel_of_a_succeeded_run_is_failed_precondition(podium: Connect) -> None:
    """Only unfinished runs can be cancelled; the run stays SUCCEEDED."""
    stub = await podium()
    started = await start_run(stub, inline=plan([{"id": "a", "agent": "echo", "input": {}}]))
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED
    error = await rpc_error(stub.CancelRun(pb.CancelRunRequest(run_id=run.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(error)
    assert (info.reason, info.metadata["state"]) == ("RUN_FINISHED", "succeeded")
    assert (await get_run(stub, run.id)).state == Run.STATE_SUCCEEDED


async def test_cancel_during_a_retry_wait_stops_the_retries(
    podium: Connect, example_agents: ExampleAgents, database_url: str
) -> None:
    """A step WAITING_RETRY shows when its next attempt is due; CancelRun then cancels
    it and no further attempt reaches the agent, even once that attempt is due."""
    stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [{"id": "wobble", "agent": "flaky", "input": {"failures": 10}}],
            error_handling={
                "on_step_failure": {
                    "max_attempts": 10,
                    "backoff": {"initial_seconds": 30, "max_seconds": 30},
                }
            },
        ),
    )
    run = await wait_for_step(stub, started.run.id, "wobble", [StepRun.STATE_WAITING_RETRY])
    step = step_of(run, "wobble")
    assert step.HasField("next_attempt_time")
    assert ns(step.next_attempt_time) >= ns(step.attempts[-1].end_time) - 10**9
    assert step.error.code == "FLAKY" and not step.HasField("end_time")

    cancelled = (await stub.CancelRun(pb.CancelRunRequest(run_id=run.id))).run
    calls = example_agents["flaky"].stats.calls
    assert step_of(cancelled, "wobble").state == StepRun.STATE_CANCELLED
    conn = await asyncpg.connect(database_url)
    try:  # the 30 s backoff over: were the step still retrying, it would be claimed now
        await conn.execute(
            "UPDATE orchestration_steps SET next_attempt_at = now() WHERE run_id = $1",
            uuid.UUID(run.id),
        )
    finally:
        await conn.close()
    await scheduler_passes(stub)
    run = await get_run(stub, run.id)
    assert (run.state, step_of(run, "wobble").state) == (
        Run.STATE_CANCELLED,
        StepRun.STATE_CANCELLED,
    )
    assert example_agents["flaky"].stats.calls == calls


async def test_unknown_and_malformed_run_ids(podium: Connect) -> None:
    """Every run RPC answers NOT_FOUND for an unknown run id and INVALID_ARGUMENT naming
    `run_id` for a malformed one."""
    stub = await podium()
    unknown = str(uuid.uuid4())
    calls: list[Callable[[str], Awaitable[Any]]] = [
        lambda rid: stub.GetRun(pb.GetRunRequest(run_id=rid)),
        lambda rid: stub.CancelRun(pb.CancelRunRequest(run_id=rid)),
        lambda rid: stub.ContinueRun(pb.ContinueRunRequest(run_id=rid)),
        lambda rid: stub.ListRunEvents(pb.ListRunEventsRequest(run_id=rid)),
        lambda rid: stub.ListDeliverables(pb.ListDeliverablesRequest(run_id=rid)),
    ]
    for call in calls:
        error = await rpc_error(call(unknown))
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        assert error_details(error)[0].reason == "RUN_NOT_FOUND"
        error = await rpc_error(call("not-a-uuid"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "run_id" in violations(error)


# --------------------------------------------------------------------------- failures


async def test_unknown_agent_fails_the_step_with_agent_not_found(podium: Connect) -> None:
    """A step naming an unregistered agent fails AGENT_NOT_FOUND (retryable, but one
    attempt allowed), which fails the run."""
    stub = await podium()
    started = await start_run(stub, inline=plan([{"id": "lost", "agent": "ghost", "input": {}}]))
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED, run
    step = step_of(run, "lost")
    assert step.state == StepRun.STATE_FAILED
    assert (step.error.code, step.error.retryable) == ("AGENT_NOT_FOUND", True)
    assert "ghost" in step.error.message
    assert [(a.number, a.agent, a.error.code) for a in step.attempts] == [
        (1, "ghost", "AGENT_NOT_FOUND")
    ]
    assert (run.error.code, run.error.step_id) == ("AGENT_NOT_FOUND", "lost")
    summary = event_summary(await all_events(stub, run.id))
    assert ("step.retrying", "lost") not in summary
    assert summary[-2:] == [("step.failed", "lost"), ("run.failed", "lost")]


async def test_retryable_failures_are_retried_with_backoff_until_success(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """The flaky agent fails twice (retryable FLAKY); with max_attempts 3 the step
    succeeds on attempt 3: three attempts recorded, the first two with FLAKY, each
    retry announced with its due time, and no attempt started before it was due."""
    stub = await podium()
    started = await start_run(
        stub,
        inline=plan([{"id": "wobble", "agent": "flaky", "input": {}}], error_handling=FAST_RETRIES),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    step = step_of(run, "wobble")
    assert (step.attempt, step.max_attempts) == (3, 3)
    assert plain(step.output) == {"attempt": 3}
    assert not step.error.code and not step.HasField("next_attempt_time")
    assert [(a.number, a.agent, a.error.code) for a in step.attempts] == [
        (1, "flaky", "FLAKY"),
        (2, "flaky", "FLAKY"),
        (3, "flaky", ""),
    ]
    assert all(a.error.retryable for a in step.attempts[:2])
    assert_attempts_ordered(step)

    events = await all_events(stub, run.id)
    retries = [e for e in events if e.type == RunEvent.TYPE_STEP_RETRYING]
    assert [(e.attempt, e.retry.next_attempt) for e in retries] == [(1, 2), (2, 3)]
    for retry in retries:
        assert retry.step_state == StepRun.STATE_WAITING_RETRY
        due = ns(retry.retry.next_attempt_time)
        assert due >= ns(step.attempts[retry.attempt - 1].end_time) - 10**9  # clock skew slack
        assert ns(step.attempts[retry.attempt].start_time) >= due
    assert [e.attempt for e in events if e.type == RunEvent.TYPE_STEP_STARTED] == [1, 2, 3]

    seen = list(example_agents["flaky"].stats.tasks)
    assert [t.attempt for t in seen] == [1, 2, 3]
    assert len({t.task_id for t in seen}) == 3  # a task id per attempt


async def test_retrying_event_carries_the_failed_attempts_error(podium: Connect) -> None:
    """step.retrying reports why the attempt failed (event.proto documents `error` for
    step.retrying) as well as when the next attempt is due."""
    stub = await podium()
    started = await start_run(
        stub,
        inline=plan([{"id": "wobble", "agent": "flaky", "input": {}}], error_handling=FAST_RETRIES),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    retries = [e for e in await all_events(stub, run.id) if e.type == RunEvent.TYPE_STEP_RETRYING]
    assert [e.retry.next_attempt for e in retries] == [2, 3]
    assert [e.error.code for e in retries] == ["FLAKY", "FLAKY"]


async def test_non_retryable_failure_stops_after_one_attempt(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """`input.fatal` makes the flaky agent's error non-retryable: one attempt, FAILED."""
    stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [{"id": "wobble", "agent": "flaky", "input": {"fatal": True}}],
            error_handling=FAST_RETRIES,
        ),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED, run
    step = step_of(run, "wobble")
    assert (step.error.code, step.error.retryable) == ("FLAKY", False)
    assert step.attempt == 1 and len(step.attempts) == 1
    assert (run.error.code, run.error.step_id) == ("FLAKY", "wobble")
    assert example_agents["flaky"].stats.calls == 1


async def test_retries_stop_at_max_attempts(podium: Connect, example_agents: ExampleAgents) -> None:
    """A step-level `on_failure.max_attempts: 2` over the definition's 3: an agent that
    keeps failing is called twice, then the step and the run fail."""
    stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {
                    "id": "wobble",
                    "agent": "flaky",
                    "input": {"failures": 5},
                    "on_failure": {"max_attempts": 2},
                }
            ],
            error_handling=FAST_RETRIES,
        ),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED, run
    step = step_of(run, "wobble")
    assert (step.attempt, step.max_attempts) == (2, 2)
    assert (step.error.code, step.error.retryable) == ("FLAKY", True)
    assert [a.error.code for a in step.attempts] == ["FLAKY", "FLAKY"]
    assert example_agents["flaky"].stats.calls == 2


@pytest.mark.parametrize(
    ("agent_options", "step_extra", "plan_extra", "server_extra", "limit"),
    [
        pytest.param(
            "", {"timeout_seconds": 0.3}, {}, {}, "after 0.3 s (the step's timeout_seconds)",
            id="step",
        ),
        pytest.param(
            "", {}, {"execution": {"default_timeout_seconds": 0.3}}, {},
            "after 0.3 s (the definition's execution.default_timeout_seconds)",
            id="definition",
        ),
        pytest.param(
            "timeout=0.3", {}, {}, {}, "after 0.3 s (agent 'sleeper''s default_timeout_seconds)",
            id="agent",
        ),
        pytest.param(
            "", {}, {}, {"default_step_timeout_seconds": 0.3},
            "after 0.3 s (the server's ORCHESTRATION_DEFAULT_STEP_TIMEOUT_SECONDS)",
            id="server",
        ),
    ],
)  # fmt: skip
async def test_step_timeout_is_deadline_exceeded_and_cancels_the_agent_call(
    podium: Connect,
    example_agents: ExampleAgents,
    agent_options: str,
    step_extra: dict[str, Any],
    plan_extra: dict[str, Any],
    server_extra: dict[str, Any],
    limit: str,
) -> None:
    """A step whose agent outlives its timeout (the step's, else the definition's
    default, else the agent's, else the server's) fails DEADLINE_EXCEEDED (retryable,
    one attempt allowed), the error says which limit and its value, and the agent sees
    its call cancelled."""
    stub = await podium(
        agents=agents_setting(example_agents, sleeper=agent_options), **server_extra
    )
    nap = {"id": "nap", "agent": "sleeper", "input": {"seconds": 30}, **step_extra}
    started = await start_run(stub, inline=plan([nap], **plan_extra))
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED, run
    step = step_of(run, "nap")
    assert (step.error.code, step.error.retryable) == ("DEADLINE_EXCEEDED", True)
    assert step.error.message.startswith(f"step 'nap' timed out {limit}: "), step.error.message
    assert [a.error.code for a in step.attempts] == ["DEADLINE_EXCEEDED"]
    sleeper = example_agents["sleeper"].stats
    await wait_until(lambda: sleeper.cancellations == 1, "the sleeper to see the deadline")


async def test_a_step_longer_than_its_lease_runs_once(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """With a 1 s lease, a 2.5 s step keeps its lease (renewed every third of it): it
    is executed once, as attempt 1, never re-queued."""
    stub = await podium(lease_seconds=1.0)
    started = await start_run(
        stub, inline=plan([{"id": "nap", "agent": "sleeper", "input": {"seconds": 2.5}}])
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    step = step_of(run, "nap")
    assert step.attempt == 1 and len(step.attempts) == 1
    assert example_agents["sleeper"].stats.calls == 1
    summary = event_summary(await all_events(stub, run.id))
    assert summary.count(("step.queued", "nap")) == 1


async def test_an_unstorable_agent_output_does_not_stall_other_runs(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """An agent whose output jsonb cannot hold (a NUL character; a real SDK agent, not
    an example one) fails its own step; other runs keep completing."""
    calls = 0

    async def nul_output(task: Task) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"text": "a\x00b"}

    server = await Agent("nul", handler=nul_output).serve("127.0.0.1:0")
    try:
        stub = await podium(agents=agents_setting(example_agents) + f",nul={server.address}")
        poisoned = await start_run(stub, inline=plan([{"id": "bad", "agent": "nul"}]))
        await wait_until(lambda: calls == 1, "the nul agent to be called")
        healthy = await start_run(stub, inline=plan([{"id": "ok", "agent": "echo"}]))
        run = await wait_for_run(stub, healthy.run.id, within=5)
        assert run.state == Run.STATE_SUCCEEDED, run
        run = await wait_for_run(stub, poisoned.run.id, within=5)
        assert run.state == Run.STATE_FAILED, run
    finally:
        await server.stop(None)


async def test_each_step_has_one_conversation_id_kept_across_retries(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """Every step gets its own conversation id, sent to its agent on every attempt."""
    stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {"id": "a", "agent": "echo", "input": {}},
                {"id": "b", "agent": "echo", "input": {}},
                {
                    "id": "c",
                    "agent": "flaky",
                    "depends_on": ["a"],
                    "input": {"failures": 1},
                    "on_failure": {"max_attempts": 2, "backoff": {"initial_seconds": 0.05}},
                },
            ]
        ),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    ids = {s.step_id: s.conversation_id for s in run.steps}
    assert len(set(ids.values())) == 3
    for value in ids.values():
        uuid.UUID(value)
    echo = {t.step_id: t.conversation_id for t in example_agents["echo"].stats.tasks}
    assert echo == {"a": ids["a"], "b": ids["b"]}
    flaky = [(t.attempt, t.conversation_id) for t in example_agents["flaky"].stats.tasks]
    assert flaky == [(1, ids["c"]), (2, ids["c"])]


# --------------------------------------------------------------------------- deliverables


async def test_artifacts_become_deliverables(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """The summarizer's `summary.md` artifact is a deliverable of its step: listed on
    GetRun (without data) and by ListDeliverables (with the exact bytes when asked),
    filterable by step, paged one by one; the usage it reports is accounted."""
    stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {"id": "s1", "agent": "summarizer", "input": {"text": "alpha beta gamma"}},
                {
                    "id": "s2",
                    "agent": "summarizer",
                    "depends_on": ["s1"],
                    "input": {"text": "delta epsilon zeta eta", "max_words": 2},
                },
            ]
        ),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    expected = {
        "s1": b"# Summary\n\nalpha beta gamma\n",
        "s2": b"# Summary\n\ndelta epsilon ...\n",
    }
    for step in run.steps:
        assert plain(step.output)["summary"] in expected[step.step_id].decode()
        assert len(step.deliverables) == 1
        d = step.deliverables[0]
        assert (d.run_id, d.step_id, d.attempt) == (run.id, step.step_id, 1)
        assert (d.name, d.media_type) == ("summary.md", "text/markdown")
        assert d.size_bytes == len(expected[step.step_id])
        assert d.data == b""  # GetRun never carries content
        assert d.conversation_id == step.conversation_id
        assert d.id and d.HasField("create_time")
    usage = {s.step_id: (s.usage.input_tokens, s.usage.output_tokens) for s in run.steps}
    assert usage == {"s1": (3, 3), "s2": (4, 2)}
    assert (run.usage.input_tokens, run.usage.output_tokens) == (7, 5)

    listed = await stub.ListDeliverables(pb.ListDeliverablesRequest(run_id=run.id))
    assert [d.step_id for d in listed.deliverables] == ["s1", "s2"]
    assert all(d.data == b"" for d in listed.deliverables)
    assert listed.next_page_token == ""
    with_data = await stub.ListDeliverables(
        pb.ListDeliverablesRequest(run_id=run.id, include_data=True)
    )
    assert {d.step_id: d.data for d in with_data.deliverables} == expected

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListDeliverables(
            pb.ListDeliverablesRequest(
                run_id=run.id, page_size=1, page_token=token, include_data=True
            )
        )
        pages += 1
        assert len(page.deliverables) == 1
        seen.append(page.deliverables[0].id)
        assert page.deliverables[0].data == expected[page.deliverables[0].step_id]
        token = page.next_page_token
        if not token:
            break
    assert pages == 2
    assert seen == [d.id for d in listed.deliverables]

    only = await stub.ListDeliverables(pb.ListDeliverablesRequest(run_id=run.id, step_id="s2"))
    assert [d.step_id for d in only.deliverables] == ["s2"]
    first = await stub.ListDeliverables(pb.ListDeliverablesRequest(run_id=run.id, page_size=1))
    error = await rpc_error(
        stub.ListDeliverables(
            pb.ListDeliverablesRequest(
                run_id=run.id, step_id="s1", page_token=first.next_page_token
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in violations(error)


# --------------------------------------------------------------------------- list


async def test_list_runs_filters_and_pages_newest_first(podium: Connect) -> None:
    """ListRuns filters by state, definition name and labels (the definition's merged
    with the request's), pages newest first without duplicates, and rejects bad tokens
    and tokens issued for other filters."""
    stub = await podium()
    step = [{"id": "a", "agent": "echo", "input": {}}]
    await create_definition(stub, "alpha", step, labels={"team": "a", "env": "dev"})
    await create_definition(stub, "beta", step, labels={"team": "b"})
    a1 = (await start_run(stub, "alpha")).run
    a2 = (await start_run(stub, "alpha", labels={"env": "prod"})).run
    a3 = (await start_run(stub, "alpha", labels={"extra": "x"})).run
    b1 = (await start_run(stub, "beta")).run
    b2 = (await start_run(stub, "beta")).run
    c1 = (await start_run(stub, "alpha", start=False)).run
    for run in (a1, a2, a3, b1, b2):
        assert (await wait_for_run(stub, run.id)).state == Run.STATE_SUCCEEDED
    assert dict(a2.labels) == {"team": "a", "env": "prod"}
    assert dict(a3.labels) == {"team": "a", "env": "dev", "extra": "x"}

    async def ids(**filters: Any) -> list[str]:
        response = await stub.ListRuns(pb.ListRunsRequest(**filters))
        assert response.next_page_token == ""
        assert all(len(r.steps) == 0 for r in response.runs)
        return [r.id for r in response.runs]

    newest_first = [c1.id, b2.id, b1.id, a3.id, a2.id, a1.id]
    assert await ids() == newest_first
    assert await ids(states=[Run.STATE_CREATED]) == [c1.id]
    assert await ids(states=[Run.STATE_SUCCEEDED]) == newest_first[1:]
    assert await ids(states=[Run.STATE_CREATED, Run.STATE_SUCCEEDED]) == newest_first
    assert await ids(states=[Run.STATE_FAILED]) == []
    assert await ids(definition_name="alpha") == [c1.id, a3.id, a2.id, a1.id]
    assert await ids(definition_name="beta") == [b2.id, b1.id]
    assert await ids(definition_name="gamma") == []
    assert await ids(labels={"env": "prod"}) == [a2.id]
    assert await ids(labels={"env": "dev"}) == [c1.id, a3.id, a1.id]
    assert await ids(labels={"team": "a", "extra": "x"}) == [a3.id]
    assert await ids(labels={"team": "b"}) == [b2.id, b1.id]
    assert await ids(
        definition_name="alpha", states=[Run.STATE_SUCCEEDED], labels={"team": "a"}
    ) == [a3.id, a2.id, a1.id]

    listed = (await stub.ListRuns(pb.ListRunsRequest())).runs
    times = [ns(r.create_time) for r in listed]
    assert times == sorted(times, reverse=True)

    async def pages(size: int, **filters: Any) -> list[list[str]]:
        out: list[list[str]] = []
        token = ""
        while True:
            page = await stub.ListRuns(
                pb.ListRunsRequest(page_size=size, page_token=token, **filters)
            )
            out.append([r.id for r in page.runs])
            token = page.next_page_token
            if not token:
                return out
            assert len(out) < 10, "paging does not end"

    paged = await pages(2)
    assert [len(p) for p in paged] == [2, 2, 2]
    assert [i for p in paged for i in p] == newest_first
    paged = await pages(3, definition_name="alpha")
    assert [i for p in paged for i in p] == [c1.id, a3.id, a2.id, a1.id]

    error = await rpc_error(stub.ListRuns(pb.ListRunsRequest(page_token="garbage!")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in violations(error)
    first = await stub.ListRuns(pb.ListRunsRequest(page_size=2))
    error = await rpc_error(
        stub.ListRuns(
            pb.ListRunsRequest(
                page_size=2, page_token=first.next_page_token, definition_name="alpha"
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in violations(error)
    unknown_state = Run.State.ValueType(99)  # not a Run.State value
    error = await rpc_error(
        stub.ListRuns(pb.ListRunsRequest(states=[Run.STATE_RUNNING, unknown_state]))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "states[1]" in violations(error)
    error = await rpc_error(stub.ListRuns(pb.ListRunsRequest(page_size=-1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in violations(error)


async def test_list_runs_tampered_page_token_is_invalid_argument(podium: Connect) -> None:
    """A token whose fingerprint matches but whose position was edited is rejected as
    INVALID_ARGUMENT (a client error), never INTERNAL."""
    stub = await podium()
    await create_definition(stub, "alpha", [{"id": "a", "agent": "echo", "input": {}}])
    for _ in range(2):
        await start_run(stub, "alpha", start=False)
    token = (await stub.ListRuns(pb.ListRunsRequest(page_size=1))).next_page_token
    assert token
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    data["p"] = ["yesterday", "not-a-uuid"]
    tampered = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    error = await rpc_error(stub.ListRuns(pb.ListRunsRequest(page_size=1, page_token=tampered)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- agents


async def test_register_list_and_deregister_agents_through_the_api(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """A registered agent is listed with the static ones and used by runs; invalid
    registrations get one violation per field; static agents can be neither replaced
    nor deregistered; a deregistered agent is gone for new runs."""
    echo_address = example_agents.addresses["echo"]
    stub = await podium(agents=f"echo={echo_address};skills=echo")

    registered = (
        await stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=agent_pb2.Agent(
                    name="echo-2", endpoint=echo_address, skills=["echo"], max_concurrency=2
                )
            )
        )
    ).agent
    assert registered.source == agent_pb2.Agent.SOURCE_REGISTERED
    assert (registered.organization_id, registered.max_concurrency) == ("default", 2)
    assert registered.HasField("create_time")

    listed = (await stub.ListAgents(pb.ListAgentsRequest())).agents
    assert [(a.name, a.source) for a in listed] == [
        ("echo", agent_pb2.Agent.SOURCE_STATIC),
        ("echo-2", agent_pb2.Agent.SOURCE_REGISTERED),
    ]
    assert [a.name for a in (await stub.ListAgents(pb.ListAgentsRequest(skill="echo"))).agents] == [
        "echo",
        "echo-2",
    ]

    started = await start_run(
        stub, inline=plan([{"id": "a", "agent": "echo-2", "input": {"v": 1}}])
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert step_of(run, "a").agent == "echo-2"
    assert [t.run_id for t in example_agents["echo"].stats.tasks] == [run.id]

    error = await rpc_error(
        stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=agent_pb2.Agent(
                    name="Bad Name!",
                    endpoint="not an endpoint",
                    skills=["ok", "Bad Skill"],
                    max_concurrency=-1,
                )
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(error)[0].reason == "INVALID_AGENT"
    assert {"agent.name", "agent.endpoint", "agent.skills[1]", "agent.max_concurrency"} <= set(
        violations(error)
    )
    assert len((await stub.ListAgents(pb.ListAgentsRequest())).agents) == 2

    error = await rpc_error(
        stub.RegisterAgent(
            pb.RegisterAgentRequest(agent=agent_pb2.Agent(name="echo", endpoint="127.0.0.1:1"))
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = await rpc_error(stub.DeregisterAgent(pb.DeregisterAgentRequest(name="echo")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(error)[0].reason == "STATIC_AGENT"

    await stub.DeregisterAgent(pb.DeregisterAgentRequest(name="echo-2"))
    assert [a.name for a in (await stub.ListAgents(pb.ListAgentsRequest())).agents] == ["echo"]
    error = await rpc_error(stub.DeregisterAgent(pb.DeregisterAgentRequest(name="echo-2")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    started = await start_run(stub, inline=plan([{"id": "a", "agent": "echo-2", "input": {}}]))
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED, run
    assert step_of(run, "a").error.code == "AGENT_NOT_FOUND"
    assert example_agents["echo"].stats.calls == 1
