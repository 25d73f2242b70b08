"""Loop steps (``loop: {until, max_iterations}``) end to end: a real Podium server on a
fresh database, the generated stub, the real example agents.

Each iteration is an attempt of the step and a ``step.queued`` event; its input may
reference the previous iteration's output (``${steps.SELF.output}``); the loop ends when
``until`` holds or after ``max_iterations``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from podium.client.definitions import load_definition
from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from tests.integration.rpc import rpc_error, violations
from tests.integration.runs_helpers import (
    Run,
    StepRun,
    all_events,
    definition,
    describe,
    event_type,
    plain,
    plan,
    start_run,
    step_of,
    wait_for_run,
)
from tests.integration.test_conditions import Connect, podium

__all__ = ["podium"]  # the fixture, used by name

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "refine-loop.yaml"


def growing(until: str, max_iterations: int) -> dict[str, Any]:
    """A summarizer fed its own previous summary plus one word: the word count grows by
    one per iteration (2, 3, 4, ...)."""
    return {
        "id": "draft",
        "skill": "summarize",
        "input": {"text": "${steps.draft.output.summary} more", "max_words": 50},
        "loop": {"until": until, "max_iterations": max_iterations},
    }


async def test_a_loop_stops_when_until_holds(podium: Connect) -> None:
    """until over the last output ends the loop; every iteration is an attempt and an
    event carrying the previous output; dependents see the last output."""
    _, stub = await podium()
    steps = [
        growing("output.word_count >= 4", 10),
        {
            "id": "after",
            "agent": "echo",
            "depends_on": ["draft"],
            "input": {"d": "${steps.draft.output}"},
        },
    ]
    run = await wait_for_run(stub, (await start_run(stub, inline=plan(steps))).run.id)
    assert run.state == Run.STATE_SUCCEEDED, describe(run)
    draft = step_of(run, "draft")
    assert draft.state == StepRun.STATE_SUCCEEDED
    assert plain(draft.output)["word_count"] == 4
    assert plain(draft.output)["summary"] == "null more more more"
    assert [a.number for a in draft.attempts] == [1, 2, 3]
    assert plain(step_of(run, "after").output)["echo"]["d"]["word_count"] == 4
    requeued = [
        plain(e.data)
        for e in await all_events(stub, run.id)
        if event_type(e) == "step.queued" and e.step_id == "draft" and e.data.fields
    ]
    assert [(d["iteration"], d["previous_output"]["word_count"]) for d in requeued] == [
        (2, 2),
        (3, 3),
    ]


async def test_a_loop_ends_at_max_iterations(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """An until that never holds (or none) stops after max_iterations; the step succeeds
    with its last output."""
    _, stub = await podium()
    for until in ("false", ""):
        example_agents.reset()
        run = await wait_for_run(
            stub, (await start_run(stub, inline=plan([growing(until, 3)]))).run.id
        )
        assert run.state == Run.STATE_SUCCEEDED, describe(run)
        draft = step_of(run, "draft")
        assert plain(draft.output)["word_count"] == 4  # 3 iterations: 2, 3, 4 words
        assert draft.attempt == 3
        assert example_agents["summarizer"].stats.calls == 3


async def test_an_until_that_fails_fails_the_step(podium: Connect) -> None:
    """An until that does not evaluate to a bool fails the step with CONDITION_ERROR."""
    _, stub = await podium()
    run = await wait_for_run(
        stub, (await start_run(stub, inline=plan([growing("output.word_count", 5)]))).run.id
    )
    assert run.state == Run.STATE_FAILED
    draft = step_of(run, "draft")
    assert draft.error.code == "CONDITION_ERROR"
    assert "loop.until" in draft.error.message and draft.attempt == 1


async def test_loop_field_violations(podium: Connect) -> None:
    """max_iterations is required (1 to 100); until is checked like a condition; loops
    of sub-orchestrations and with checkpoints are refused; only a loop step may
    reference its own output."""
    _, stub = await podium()
    steps: list[dict[str, Any]] = [
        {"id": "a", "agent": "echo", "loop": {"until": "output.done"}},
        {"id": "b", "agent": "echo", "loop": {"until": "outptu.done", "max_iterations": 2}},
        {"id": "c", "orchestration": {"name": "other"}, "loop": {"max_iterations": 2}},
        {
            "id": "d",
            "agent": "echo",
            "checkpoint": {"when": "WHEN_BEFORE"},
            "loop": {"max_iterations": 2},
        },  # fmt: skip
        {"id": "e", "agent": "echo", "input": {"x": "${steps.e.output}"}},
        {"id": "f", "agent": "echo", "loop": {"until": "steps.f.output == 1", "max_iterations": 2}},
        {
            "id": "g",
            "agent": "echo",
            "input": {"x": "${steps.g.output.n}"},
            "loop": {"until": "iteration == 2 || output.n > 1", "max_iterations": 100},
        },  # fmt: skip
    ]
    error = await rpc_error(
        stub.CreateDefinition(pb.CreateDefinitionRequest(definition=definition("loops", steps)))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    assert set(found) == {
        "steps[0].loop.max_iterations",
        "steps[1].loop.until",
        "steps[2].orchestration",  # unknown definition
        "steps[2].loop",
        "steps[3].loop",
        "steps[4].input.x",
        "steps[5].loop.until",
    }, found
    assert "1 to 100" in found["steps[0].loop.max_iterations"]
    assert "unknown variable 'outptu'" in found["steps[1].loop.until"]
    assert "sub-orchestration" in found["steps[2].loop"]
    assert "checkpoint" in found["steps[3].loop"]
    assert "only a loop step" in found["steps[4].input.x"]
    assert "use output" in found["steps[5].loop.until"]


async def test_the_example_loop(podium: Connect) -> None:
    """examples/refine-loop.yaml: three passes (10, 19, 28 words), then the translation
    of the last one."""
    _, stub = await podium()
    await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=load_definition(EXAMPLE)))
    brief = "tea is a drink made from leaves of camellia"
    run = await wait_for_run(
        stub, (await start_run(stub, "refine-loop", input={"brief": brief})).run.id
    )
    assert run.state == Run.STATE_SUCCEEDED, describe(run)
    draft = step_of(run, "draft")
    assert (draft.attempt, plain(draft.output)["word_count"]) == (3, 28)
    assert plain(step_of(run, "translate").output)["text"].startswith("[fr] ")


async def test_retries_apply_per_iteration(podium: Connect) -> None:
    """An iteration that fails with a retryable error is retried (max_attempts per
    iteration) and the loop goes on from the iteration it was in."""
    _, stub = await podium()
    step = {
        "id": "flaky",
        "agent": "flaky",
        "input": {"failures": 1},
        "on_failure": {"max_attempts": 2, "backoff": {"initial_seconds": 0.01}},
        "loop": {"until": "iteration == 2", "max_iterations": 5},
    }
    run = await wait_for_run(stub, (await start_run(stub, inline=plan([step]))).run.id)
    assert run.state == Run.STATE_SUCCEEDED, describe(run)
    flaky = step_of(run, "flaky")
    assert [(a.number, a.error.code) for a in flaky.attempts] == [(1, "FLAKY"), (2, ""), (3, "")]
    assert plain(flaky.output) == {"attempt": 3}
    assert flaky.max_attempts == 4  # the second iteration had its own two attempts
