"""After the last attempt (allow_skip, notify_human), checkpoints and approvals,
ContinueRun on a waiting run, ResumeRun, and sub-orchestrations, end to end: a real
Podium server on a fresh database, the generated stub, the real example agents.

Retries with backoff, non-retryable errors, timeouts and rollback hints are covered in
test_runs_api.py. No timing assertions: waits poll (runs_helpers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import approval_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from tests.integration.conftest import StartServer, static_agents
from tests.integration.rpc import error_details, rpc_error, violations
from tests.integration.runs_helpers import (
    Run,
    StepRun,
    all_events,
    create_definition,
    event_summary,
    event_type,
    get_run,
    plain,
    plan,
    start_run,
    step_of,
    struct,
    wait_for_run,
    wait_for_step,
    wait_until,
)

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

Approval = approval_pb2.Approval
Stub = "OrchestrationServiceAsyncStub"
Connect = Callable[..., Awaitable[tuple[PodiumServer, "OrchestrationServiceAsyncStub"]]]

FAST = {"initial_seconds": 0.05, "max_seconds": 0.1}


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


async def pending_approval(stub: OrchestrationServiceAsyncStub, run_id: str) -> Approval:
    """The one pending approval of a run, once it exists."""
    found: list[Approval] = []

    async def check() -> bool:
        response = await stub.ListApprovals(pb.ListApprovalsRequest(run_id=run_id))
        found[:] = list(response.approvals)
        return len(found) == 1

    await wait_until(check, f"a pending approval of run {run_id}")
    return found[0]


async def decide(
    stub: OrchestrationServiceAsyncStub, approval_id: str, decision: int, **fields: Any
) -> Approval:
    request = pb.DecideApprovalRequest(approval_id=approval_id, **fields)
    request.decision = approval_pb2.Decision.ValueType(decision)
    response = await stub.DecideApproval(request)
    return response.approval


def failing(step_id: str, **policy: Any) -> dict[str, Any]:
    """A step that always fails (flaky with 99 failures), with its on_failure policy."""
    return {
        "id": step_id,
        "agent": "flaky",
        "input": {"failures": 99},
        "on_failure": {"max_attempts": 1, **policy},
    }


# --------------------------------------------------------------- after the last attempt


async def test_allow_skip_skips_the_step_and_dependents_see_null(podium: Connect) -> None:
    """allow_skip: the failed step is skipped (its error kept), the run goes on, and a
    dependent referencing its output receives null."""
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                failing("a", allow_skip=True),
                {
                    "id": "b",
                    "agent": "echo",
                    "depends_on": ["a"],
                    "input": {"got": "${steps.a.output}"},
                },
            ]
        ),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED
    a, b = step_of(run, "a"), step_of(run, "b")
    assert a.state == StepRun.STATE_SKIPPED
    assert a.error.code == "FLAKY"
    assert b.state == StepRun.STATE_SUCCEEDED
    assert plain(b.output) == {"echo": {"got": None}}
    assert ("step.skipped", "a") in event_summary(await all_events(stub, run.id))


async def test_skip_dependents_skips_everything_downstream(podium: Connect) -> None:
    """skip_dependents: every step downstream of the skipped one is skipped, other
    branches still run, and the run succeeds."""
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                failing("a", allow_skip=True, skip_dependents=True),
                {"id": "b", "agent": "echo", "depends_on": ["a"]},
                {"id": "c", "agent": "echo", "depends_on": ["b"]},
                {"id": "other", "agent": "echo"},
            ]
        ),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    states = {s.step_id: s.state for s in run.steps}
    assert states == {
        "a": StepRun.STATE_SKIPPED,
        "b": StepRun.STATE_SKIPPED,
        "c": StepRun.STATE_SKIPPED,
        "other": StepRun.STATE_SUCCEEDED,
    }
    assert step_of(run, "c").error.code == "UPSTREAM_SKIPPED"
    assert not step_of(run, "b").attempts  # never dispatched


async def test_notify_human_parks_the_step_and_retry_then_success(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """notify_human: after its last attempt the step waits on a failure review; the
    decision RETRY gives it one more attempt, which succeeds."""
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {
                    "id": "a",
                    "agent": "flaky",
                    "input": {"failures": 1},
                    "on_failure": {"max_attempts": 1, "notify_human": True},
                }
            ]
        ),
    )
    approval = await pending_approval(stub, started.run.id)
    assert approval.kind == Approval.KIND_FAILURE_REVIEW
    assert approval.step_id == "a"
    assert plain(approval.subject)["error"]["code"] == "FLAKY"
    run = await get_run(stub, started.run.id)
    # Every remaining step waits on a human: the run is paused.
    assert run.state == Run.STATE_PAUSED
    assert step_of(run, "a").state == StepRun.STATE_AWAITING_APPROVAL
    assert step_of(run, "a").approval_id == approval.id

    decided = await decide(
        stub, approval.id, approval_pb2.DECISION_RETRY, actor="ops", comment="again"
    )
    assert (decided.state, decided.decision, decided.actor) == (
        Approval.STATE_DECIDED,
        approval_pb2.DECISION_RETRY,
        "ops",
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED
    step = step_of(run, "a")
    assert [a.number for a in step.attempts] == [1, 2]
    assert plain(step.output) == {"attempt": 2}
    events = await all_events(stub, run.id)
    types = [event_type(e) for e in events]
    assert types.index("step.awaiting_approval") < types.index("run.paused")
    assert types.index("run.paused") < types.index("approval.decided")
    decided_event = events[types.index("approval.decided")]
    assert decided_event.run_state == Run.STATE_RUNNING  # the decision lets it go on


@pytest.mark.parametrize(
    ("decision", "run_state", "step_state"),
    [
        (approval_pb2.DECISION_SKIP, Run.STATE_SUCCEEDED, StepRun.STATE_SKIPPED),
        (approval_pb2.DECISION_FAIL, Run.STATE_FAILED, StepRun.STATE_FAILED),
    ],
)
async def test_failure_review_skip_or_fail(
    podium: Connect, decision: int, run_state: int, step_state: int
) -> None:
    server, stub = await podium()
    state_name = Run.State.Name(Run.State.ValueType(run_state)).removeprefix("STATE_").lower()

    def runs_total() -> float:
        value = server.metrics.registry.get_sample_value(
            "orchestration_runs_total", {"state": state_name}
        )
        return value or 0.0

    started = await start_run(stub, inline=plan([failing("a", notify_human=True)]))
    approval = await pending_approval(stub, started.run.id)
    before = runs_total()
    await decide(stub, approval.id, decision, actor="ops")
    run = await wait_for_run(stub, started.run.id)
    assert (run.state, step_of(run, "a").state) == (run_state, step_state)
    assert runs_total() == before + 1  # the decision ended the run: counted once
    assert step_of(run, "a").error.code == "FLAKY"
    if run_state == Run.STATE_FAILED:
        assert run.error.step_id == "a"


# ------------------------------------------------------------------------- checkpoints


async def test_checkpoint_before_approve_runs_with_more_input(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """checkpoint before: the agent is not called until approved; the approval shows the
    resolved input; input given with the approval is merged over it."""
    _, stub = await podium()
    calls = example_agents["echo"].stats.calls
    started = await start_run(
        stub,
        inline=plan(
            [
                {
                    "id": "publish",
                    "agent": "echo",
                    "input": {"topic": "${run.input.topic}"},
                    "checkpoint": {"when": "WHEN_BEFORE", "prompt": "Publish?"},
                }
            ]
        ),
        input={"topic": "tea"},
    )
    approval = await pending_approval(stub, started.run.id)
    assert approval.kind == Approval.KIND_CHECKPOINT_BEFORE
    assert approval.prompt == "Publish?"
    assert plain(approval.subject) == {"input": {"topic": "tea"}}
    run = await get_run(stub, started.run.id)
    step = step_of(run, "publish")
    assert (step.state, step.attempt, list(step.attempts)) == (
        StepRun.STATE_AWAITING_APPROVAL,
        0,
        [],
    )
    assert example_agents["echo"].stats.calls == calls

    await decide(
        stub, approval.id, approval_pb2.DECISION_APPROVE, actor="ed", input=struct({"tone": "dry"})
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED
    step = step_of(run, "publish")
    assert plain(step.output) == {"echo": {"topic": "tea", "tone": "dry"}}
    assert [a.number for a in step.attempts] == [1]


@pytest.mark.parametrize(
    ("on_reject", "run_state", "step_state"),
    [
        ("REJECT_ACTION_FAIL", Run.STATE_FAILED, StepRun.STATE_FAILED),
        ("REJECT_ACTION_SKIP", Run.STATE_SUCCEEDED, StepRun.STATE_SKIPPED),
    ],
)
async def test_checkpoint_before_reject(
    podium: Connect, example_agents: ExampleAgents, on_reject: str, run_state: int, step_state: int
) -> None:
    _, stub = await podium()
    calls = example_agents["echo"].stats.calls
    started = await start_run(
        stub,
        inline=plan(
            [
                {
                    "id": "a",
                    "agent": "echo",
                    "checkpoint": {"when": "WHEN_BEFORE", "on_reject": on_reject},
                }
            ]
        ),
    )
    approval = await pending_approval(stub, started.run.id)
    await decide(stub, approval.id, approval_pb2.DECISION_REJECT, actor="ed", comment="not now")
    run = await wait_for_run(stub, started.run.id)
    assert (run.state, step_of(run, "a").state) == (run_state, step_state)
    assert step_of(run, "a").error.code == "CHECKPOINT_REJECTED"
    assert "not now" in step_of(run, "a").error.message
    assert example_agents["echo"].stats.calls == calls


async def test_checkpoint_after_holds_the_output_until_approved(podium: Connect) -> None:
    """checkpoint after: the agent ran, its output is the approval's subject, and the
    dependents start only after the approval."""
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {
                    "id": "draft",
                    "agent": "echo",
                    "input": {"v": 1},
                    "checkpoint": {"when": "WHEN_AFTER"},
                },
                {
                    "id": "next",
                    "agent": "echo",
                    "depends_on": ["draft"],
                    "input": {"d": "${steps.draft.output}"},
                },
            ]
        ),
    )
    approval = await pending_approval(stub, started.run.id)
    assert approval.kind == Approval.KIND_CHECKPOINT_AFTER
    assert plain(approval.subject) == {"output": {"echo": {"v": 1}}}
    run = await get_run(stub, started.run.id)
    assert step_of(run, "draft").state == StepRun.STATE_AWAITING_APPROVAL
    assert step_of(run, "next").state == StepRun.STATE_PENDING
    await decide(stub, approval.id, approval_pb2.DECISION_APPROVE, actor="ed")
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED
    assert plain(step_of(run, "next").output) == {"echo": {"d": {"echo": {"v": 1}}}}


async def test_checkpoint_after_reject_fails_the_run(podium: Connect) -> None:
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {"id": "draft", "agent": "echo", "checkpoint": {"when": "WHEN_AFTER"}},
                {"id": "next", "agent": "echo", "depends_on": ["draft"]},
            ]
        ),
    )
    approval = await pending_approval(stub, started.run.id)
    await decide(stub, approval.id, approval_pb2.DECISION_REJECT, actor="ed")
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED
    assert step_of(run, "draft").state == StepRun.STATE_FAILED
    assert step_of(run, "next").state == StepRun.STATE_CANCELLED


@pytest.mark.parametrize(
    ("on_expiry", "run_state"),
    [("EXPIRY_ACTION_APPROVE", Run.STATE_SUCCEEDED), ("EXPIRY_ACTION_REJECT", Run.STATE_FAILED)],
)
async def test_approval_expiry_applies_the_default_action(
    podium: Connect, on_expiry: str, run_state: int
) -> None:
    _, stub = await podium()
    checkpoint = {"when": "WHEN_BEFORE", "expires_after_seconds": 0.2, "on_expiry": on_expiry}
    started = await start_run(
        stub, inline=plan([{"id": "a", "agent": "echo", "checkpoint": checkpoint}])
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == run_state
    listed = await stub.ListApprovals(
        pb.ListApprovalsRequest(run_id=run.id, states=[Approval.STATE_EXPIRED])
    )
    (approval,) = listed.approvals
    assert approval.actor == "podium"
    expected = "approve" if on_expiry == "EXPIRY_ACTION_APPROVE" else "reject"
    assert approval_pb2.Decision.Name(approval.decision) == f"DECISION_{expected.upper()}"
    if run_state == Run.STATE_FAILED:
        assert step_of(run, "a").error.code == "APPROVAL_EXPIRED"


async def test_decide_approval_errors_and_idempotency(podium: Connect) -> None:
    """request_id makes a repeated decision return the approval; deciding twice
    otherwise is FAILED_PRECONDITION; a decision of the wrong kind, a missing decision,
    a bad id and an actor who is not an approver get clear errors."""
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {
                    "id": "a",
                    "agent": "echo",
                    "checkpoint": {"when": "WHEN_BEFORE", "approvers": ["ann", "bob"]},
                }
            ]
        ),
    )
    approval = await pending_approval(stub, started.run.id)
    assert list(approval.approvers) == ["ann", "bob"]

    error = await rpc_error(stub.DecideApproval(pb.DecideApprovalRequest(approval_id="nope")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"approval_id", "decision"}

    error = await rpc_error(decide(stub, approval.id, approval_pb2.DECISION_RETRY, actor="ann"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"decision"}

    error = await rpc_error(decide(stub, approval.id, approval_pb2.DECISION_APPROVE, actor="eve"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    first = await decide(
        stub, approval.id, approval_pb2.DECISION_APPROVE, actor="ann", request_id="r1"
    )
    again = await decide(
        stub, approval.id, approval_pb2.DECISION_APPROVE, actor="ann", request_id="r1"
    )
    assert (again.id, again.state, again.decide_time) == (first.id, first.state, first.decide_time)

    error = await rpc_error(decide(stub, approval.id, approval_pb2.DECISION_REJECT, actor="bob"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(error)
    assert info.reason == "APPROVAL_NOT_PENDING"

    error = await rpc_error(
        stub.GetApproval(pb.GetApprovalRequest(approval_id="00000000-0000-0000-0000-000000000000"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    got = (await stub.GetApproval(pb.GetApprovalRequest(approval_id=approval.id))).approval
    assert got.state == Approval.STATE_DECIDED
    assert (await wait_for_run(stub, started.run.id)).state == Run.STATE_SUCCEEDED


async def test_continue_run_gives_input_to_a_run_waiting_on_a_checkpoint(
    podium: Connect,
) -> None:
    """ContinueRun on a running run waiting on a checkpoint merges its input over the
    run's; the checkpointed step, once approved, resolves with it."""
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {
                    "id": "a",
                    "agent": "echo",
                    "input": {"lang": "${run.input.lang}"},
                    "checkpoint": {"when": "WHEN_BEFORE"},
                }
            ]
        ),
        input={"lang": "en"},
    )
    approval = await pending_approval(stub, started.run.id)
    continued = await stub.ContinueRun(
        pb.ContinueRunRequest(run_id=started.run.id, input=struct({"lang": "fr"}))
    )
    assert plain(continued.run.input) == {"lang": "fr"}
    await decide(stub, approval.id, approval_pb2.DECISION_APPROVE)
    run = await wait_for_run(stub, started.run.id)
    assert plain(step_of(run, "a").output) == {"echo": {"lang": "fr"}}
    assert "run.continued" in [event_type(e) for e in await all_events(stub, run.id)]

    error = await rpc_error(stub.ContinueRun(pb.ContinueRunRequest(run_id=run.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_pending_checkpoint_and_a_waiting_retry_survive_a_restart(
    podium: Connect,
) -> None:
    """Nothing in memory holds an approval or a retry schedule: a new server on the same
    database carries both on."""
    server, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {"id": "gate", "agent": "echo", "checkpoint": {"when": "WHEN_BEFORE"}},
                {
                    "id": "retry",
                    "agent": "flaky",
                    "input": {"failures": 1},
                    "on_failure": {
                        "max_attempts": 2,
                        "backoff": {"initial_seconds": 1, "multiplier": 1, "max_seconds": 1},
                    },
                },
            ],
            execution={"concurrency": {"max_parallel": 4}},
        ),
    )
    approval = await pending_approval(stub, started.run.id)
    await wait_until(
        lambda: _step_attempts(stub, started.run.id, "retry", 1), "the first failed attempt"
    )
    await server.stop(0)

    _, stub2 = await podium()
    await decide(stub2, approval.id, approval_pb2.DECISION_APPROVE)
    run = await wait_for_run(stub2, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert [a.number for a in step_of(run, "retry").attempts] == [1, 2]


async def _step_attempts(
    stub: OrchestrationServiceAsyncStub, run_id: str, step: str, n: int
) -> bool:
    run = await get_run(stub, run_id)
    s = step_of(run, step)
    return len(s.attempts) >= n and s.attempts[n - 1].HasField("end_time")


async def test_a_run_pauses_when_every_remaining_step_waits_on_a_human(
    podium: Connect,
) -> None:
    """While another step runs, a parked step leaves the run running; once that step
    completes, only the human is left: run.paused. The decision lets it go on."""
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {"id": "gate", "agent": "echo", "checkpoint": {"when": "WHEN_BEFORE"}},
                {"id": "busy", "agent": "echo", "input": {"delay": 0.3}},
            ],
            execution={"concurrency": {"max_parallel": 2}},
        ),
    )
    approval = await pending_approval(stub, started.run.id)
    run = await wait_for_run(stub, started.run.id, [Run.STATE_PAUSED])
    assert step_of(run, "busy").state == StepRun.STATE_SUCCEEDED
    await decide(stub, approval.id, approval_pb2.DECISION_APPROVE)
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED
    types = [event_type(e) for e in await all_events(stub, run.id)]
    assert types.count("run.paused") == 1
    assert types.index("run.paused") < types.index("approval.decided")


async def test_cancelling_a_run_cancels_its_pending_approval(podium: Connect) -> None:
    _, stub = await podium()
    started = await start_run(
        stub, inline=plan([{"id": "a", "agent": "echo", "checkpoint": {"when": "WHEN_BEFORE"}}])
    )
    approval = await pending_approval(stub, started.run.id)
    await stub.CancelRun(pb.CancelRunRequest(run_id=started.run.id, reason="stop"))
    got = (await stub.GetApproval(pb.GetApprovalRequest(approval_id=approval.id))).approval
    assert got.state == Approval.STATE_CANCELLED
    error = await rpc_error(decide(stub, approval.id, approval_pb2.DECISION_APPROVE))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# ---------------------------------------------------------------------------- resume


async def test_resume_re_executes_only_what_failed(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """A failed run resumed: succeeded steps keep their outputs and are not called
    again; the failed step and its dependents run; run_attempt is 2."""
    _, stub = await podium()
    started = await start_run(
        stub,
        inline=plan(
            [
                {"id": "ok", "agent": "echo", "input": {"v": 1}},
                {"id": "bad", "agent": "flaky", "depends_on": ["ok"], "input": {"failures": 1}},
                {
                    "id": "after",
                    "agent": "echo",
                    "depends_on": ["bad"],
                    "input": {"b": "${steps.bad.output}"},
                },
            ]
        ),
    )
    failed = await wait_for_run(stub, started.run.id)
    assert failed.state == Run.STATE_FAILED
    ok_end = step_of(failed, "ok").end_time
    echo_calls = example_agents["echo"].stats.calls

    error = await rpc_error(stub.ResumeRun(pb.ResumeRunRequest(run_id="not-a-uuid")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    resumed = (await stub.ResumeRun(pb.ResumeRunRequest(run_id=failed.id))).run
    assert (resumed.state, resumed.run_attempt) == (Run.STATE_RUNNING, 2)
    assert not resumed.HasField("error") or not resumed.error.code
    # A second ResumeRun finds the run running (or already succeeded): refused.
    error = await rpc_error(stub.ResumeRun(pb.ResumeRunRequest(run_id=failed.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    run = await wait_for_run(stub, failed.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert step_of(run, "ok").end_time == ok_end
    assert [a.number for a in step_of(run, "bad").attempts] == [1, 2]
    assert plain(step_of(run, "after").output) == {"echo": {"b": {"attempt": 2}}}
    assert example_agents["echo"].stats.calls == echo_calls + 1  # only "after"
    types = [event_type(e) for e in await all_events(stub, run.id)]
    assert types.count("run.failed") == 1 and "run.resumed" in types
    assert types[-1] == "run.completed"


async def test_resume_a_cancelled_run_and_refuse_a_running_one(podium: Connect) -> None:
    _, stub = await podium()
    started = await start_run(
        stub, inline=plan([{"id": "slow", "agent": "sleeper", "input": {"seconds": 30}}])
    )
    await wait_for_step(stub, started.run.id, "slow", [StepRun.STATE_RUNNING])
    error = await rpc_error(stub.ResumeRun(pb.ResumeRunRequest(run_id=started.run.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(error)
    assert (info.reason, info.metadata["state"]) == ("RUN_NOT_RESUMABLE", "running")

    await stub.CancelRun(pb.CancelRunRequest(run_id=started.run.id))
    resumed = (await stub.ResumeRun(pb.ResumeRunRequest(run_id=started.run.id))).run
    assert resumed.run_attempt == 2
    run = await wait_for_step(stub, started.run.id, "slow", [StepRun.STATE_RUNNING])
    assert step_of(run, "slow").attempt == 2
    await stub.CancelRun(pb.CancelRunRequest(run_id=started.run.id))


# ----------------------------------------------------------------- sub-orchestrations


async def test_child_run_success_gives_the_step_its_output(podium: Connect) -> None:
    _, stub = await podium()
    await create_definition(
        stub,
        "child-flow",
        [{"id": "inner", "agent": "echo", "input": {"x": "${run.input.x}"}}],
    )
    started = await start_run(
        stub,
        inline=plan(
            [
                {"id": "sub", "orchestration": {"name": "child-flow"}, "input": {"x": 7}},
                {
                    "id": "after",
                    "agent": "echo",
                    "depends_on": ["sub"],
                    "input": {"s": "${steps.sub.output.inner}"},
                },
            ]
        ),
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    sub = step_of(run, "sub")
    assert sub.child_run_id
    assert plain(sub.output) == {"inner": {"echo": {"x": 7}}}
    assert plain(step_of(run, "after").output) == {"echo": {"s": {"echo": {"x": 7}}}}
    child = await get_run(stub, sub.child_run_id)
    assert (child.parent_run_id, child.parent_step_id) == (run.id, "sub")
    assert child.organization_id == run.organization_id
    listed = await stub.ListRuns(pb.ListRunsRequest(parent_run_id=run.id))
    assert [r.id for r in listed.runs] == [child.id]


async def test_child_run_failure_fails_the_step(podium: Connect) -> None:
    _, stub = await podium()
    await create_definition(stub, "bad-child", [failing("boom")])
    started = await start_run(
        stub, inline=plan([{"id": "sub", "orchestration": {"name": "bad-child"}}])
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED
    step = step_of(run, "sub")
    assert step.error.code == "CHILD_RUN_FAILED"
    assert step.child_run_id in step.error.message
    assert (await get_run(stub, step.child_run_id)).state == Run.STATE_FAILED
    # A child is re-run through its parent, never alone.
    error = await rpc_error(stub.ResumeRun(pb.ResumeRunRequest(run_id=step.child_run_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(error)[0].reason == "RUN_IS_CHILD"
    resumed = (await stub.ResumeRun(pb.ResumeRunRequest(run_id=run.id))).run
    again = await wait_for_run(stub, resumed.id)
    new_child = step_of(again, "sub").child_run_id
    assert new_child and new_child != step.child_run_id  # the parent started a new child


async def test_cancelling_the_parent_cancels_the_child(podium: Connect) -> None:
    _, stub = await podium()
    await create_definition(
        stub, "slow-child", [{"id": "wait", "agent": "sleeper", "input": {"seconds": 30}}]
    )
    started = await start_run(
        stub, inline=plan([{"id": "sub", "orchestration": {"name": "slow-child"}}])
    )
    run = await wait_until_child(stub, started.run.id, "sub")
    child_id = step_of(run, "sub").child_run_id
    await wait_for_step(stub, child_id, "wait", [StepRun.STATE_RUNNING])
    await stub.CancelRun(pb.CancelRunRequest(run_id=started.run.id, reason="enough"))
    child = await wait_for_run(stub, child_id)
    assert child.state == Run.STATE_CANCELLED
    assert step_of(child, "wait").state == StepRun.STATE_CANCELLED


async def test_cancelling_the_child_fails_the_parent_step(podium: Connect) -> None:
    _, stub = await podium()
    await create_definition(
        stub, "slow-child", [{"id": "wait", "agent": "sleeper", "input": {"seconds": 30}}]
    )
    started = await start_run(
        stub,
        inline=plan(
            [
                {
                    "id": "sub",
                    "orchestration": {"name": "slow-child"},
                    "on_failure": {"allow_skip": True},
                }
            ]
        ),
    )
    run = await wait_until_child(stub, started.run.id, "sub")
    await stub.CancelRun(pb.CancelRunRequest(run_id=step_of(run, "sub").child_run_id))
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED  # allow_skip
    assert step_of(run, "sub").state == StepRun.STATE_SKIPPED
    assert step_of(run, "sub").error.code == "CHILD_RUN_CANCELLED"


async def wait_until_child(stub: OrchestrationServiceAsyncStub, run_id: str, step: str) -> Run:
    found: list[Run] = []

    async def check() -> bool:
        found[:] = [await get_run(stub, run_id)]
        return bool(step_of(found[0], step).child_run_id)

    await wait_until(check, f"the child run of {step}")
    return found[0]


async def test_depth_limit_and_recursion(podium: Connect) -> None:
    """A definition running itself, directly or through another, is refused at
    validation; nesting beyond ORCHESTRATION_MAX_DEPTH fails the step."""
    _, stub = await podium(max_orchestration_depth=1)
    error = await rpc_error(
        create_definition(stub, "loop", [{"id": "again", "orchestration": {"name": "loop"}}])
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "steps[0].orchestration.name" in violations(error)

    await create_definition(stub, "leaf", [{"id": "x", "agent": "echo"}])
    await create_definition(stub, "mid", [{"id": "m", "orchestration": {"name": "leaf"}}])
    # top -> mid -> top would be a cycle through a stored definition.
    await create_definition(stub, "top", [{"id": "t", "orchestration": {"name": "mid"}}])
    error = await rpc_error(
        create_definition(stub, "mid", [{"id": "m", "orchestration": {"name": "top"}}])
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top" in violations(error)["steps[0].orchestration.name"]

    # depth: top (0) -> mid (1) -> leaf (2 > 1)
    started = await start_run(stub, "top")
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_FAILED
    mid = await get_run(stub, step_of(run, "t").child_run_id)
    assert step_of(mid, "m").error.code == "MAX_DEPTH_EXCEEDED"
    assert step_of(run, "t").error.code == "CHILD_RUN_FAILED"


# ------------------------------------------------------------------------------ fork


async def test_fork_reruns_from_a_step_with_new_input(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """ForkRun of a finished run: the named step, every step whose input the new run
    input changes, and everything downstream run again; the other outputs are copied,
    their agent not called."""
    _, stub = await podium()
    steps = [
        {"id": "a", "agent": "echo", "input": {"v": "${run.input.v}"}},
        {
            "id": "b",
            "agent": "echo",
            "depends_on": ["a"],
            "input": {"a": "${steps.a.output.echo.v}", "w": "${run.input.w}"},
        },
        {
            "id": "c",
            "agent": "echo",
            "depends_on": ["b"],
            "input": {"b": "${steps.b.output.echo.w}"},
        },
        {"id": "side", "agent": "echo", "input": {"s": 1}},
    ]
    first = await wait_for_run(
        stub, (await start_run(stub, inline=plan(steps), input={"v": 1, "w": "x"})).run.id
    )
    assert first.state == Run.STATE_SUCCEEDED
    calls = example_agents["echo"].stats.calls

    forked = (
        await stub.ForkRun(
            pb.ForkRunRequest(
                run_id=first.id, step_ids=["b"], input=struct({"v": 2, "w": "y"}), request_id="f1"
            )
        )
    ).run
    assert forked.forked_from_run_id == first.id
    assert plain(forked.input) == {"v": 2, "w": "y"}
    again = await stub.ForkRun(pb.ForkRunRequest(run_id=first.id, step_ids=["b"], request_id="f1"))
    assert again.run.id == forked.id  # request_id: idempotent

    run = await wait_for_run(stub, forked.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    # a reads run.input.v, which changed: it ran again, and b (named) and c after it;
    # side does not read the input: copied.
    assert plain(step_of(run, "a").output) == {"echo": {"v": 2}}
    assert step_of(run, "a").attempts and not step_of(run, "side").attempts
    assert plain(step_of(run, "b").output) == {"echo": {"a": 2, "w": "y"}}
    assert plain(step_of(run, "c").output) == {"echo": {"b": "y"}}
    assert example_agents["echo"].stats.calls == calls + 3
    copied = [e for e in await all_events(stub, run.id) if event_type(e) == "step.completed"]
    assert {e.step_id for e in copied if plain(e.data).get("copied_from_run_id") == first.id} == {
        "side"
    }


async def test_fork_with_new_input_reruns_only_what_the_input_changes(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """ForkRun with a new input and no step named: a step re-executes when its resolved
    input differs from the source run's (and everything downstream of it); a step whose
    input does not change is copied, even downstream of the input's readers when what
    it reads from them did not change."""
    _, stub = await podium()
    steps = [
        {"id": "topic", "agent": "echo", "input": {"t": "${run.input.topic}"}},
        {"id": "lang", "agent": "echo", "input": {"l": "${run.input.language}"}},
        {
            "id": "write",
            "agent": "echo",
            "depends_on": ["topic"],
            "input": {"about": "${steps.topic.output.echo.t}"},
        },
        {
            "id": "translate",
            "agent": "echo",
            "depends_on": ["lang"],
            "input": {"to": "${steps.lang.output.echo.l}"},
        },
        {"id": "fixed", "agent": "echo", "input": {"n": 1}},
    ]
    first = await wait_for_run(
        stub,
        (
            await start_run(
                stub,
                inline=plan(steps, execution={"concurrency": {"max_parallel": 5}}),
                input={"topic": "tea", "language": "fr"},
            )
        ).run.id,
    )
    assert first.state == Run.STATE_SUCCEEDED
    calls = example_agents["echo"].stats.calls
    forked = (
        await stub.ForkRun(
            pb.ForkRunRequest(run_id=first.id, input=struct({"topic": "coffee", "language": "fr"}))
        )
    ).run
    run = await wait_for_run(stub, forked.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert plain(step_of(run, "write").output) == {"echo": {"about": "coffee"}}
    assert example_agents["echo"].stats.calls == calls + 2  # topic and write
    copied = [e for e in await all_events(stub, run.id) if event_type(e) == "step.completed"]
    assert {e.step_id for e in copied if plain(e.data).get("copied_from_run_id") == first.id} == {
        "lang",
        "translate",
        "fixed",
    }
    # The same input would re-execute nothing: refused, no run created.
    runs_before = len((await stub.ListRuns(pb.ListRunsRequest())).runs)
    error = await rpc_error(
        stub.ForkRun(
            pb.ForkRunRequest(run_id=first.id, input=struct({"topic": "tea", "language": "fr"}))
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(error)[0].reason == "NOTHING_TO_RERUN"
    assert len((await stub.ListRuns(pb.ListRunsRequest())).runs) == runs_before


async def test_fork_errors_and_a_failed_source(podium: Connect) -> None:
    _, stub = await podium()
    started = await start_run(
        stub, inline=plan([{"id": "slow", "agent": "sleeper", "input": {"seconds": 30}}])
    )
    error = await rpc_error(
        stub.ForkRun(pb.ForkRunRequest(run_id=started.run.id, step_ids=["slow"]))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(error)[0].reason == "RUN_NOT_FINISHED"
    await stub.CancelRun(pb.CancelRunRequest(run_id=started.run.id))

    error = await rpc_error(stub.ForkRun(pb.ForkRunRequest(run_id=started.run.id)))
    assert set(violations(error)) == {"step_ids"}  # neither a step nor a new input
    error = await rpc_error(
        stub.ForkRun(pb.ForkRunRequest(run_id=started.run.id, step_ids=["slow", "nope"]))
    )
    assert set(violations(error)) == {"step_ids[1]"}

    # A failed source: the step that failed runs again too, even upstream of the fork.
    failed = await wait_for_run(
        stub,
        (
            await start_run(
                stub,
                inline=plan(
                    [
                        {"id": "bad", "agent": "flaky", "input": {"failures": 1}},
                        {"id": "ok", "agent": "echo"},
                    ],
                    execution={"concurrency": {"max_parallel": 2}},
                ),
            )
        ).run.id,
    )
    assert failed.state == Run.STATE_FAILED
    forked = (await stub.ForkRun(pb.ForkRunRequest(run_id=failed.id, step_ids=["ok"]))).run
    run = await wait_for_run(stub, forked.id)
    # The flaky agent fails the first attempt of each run: executed again, not copied.
    assert run.state == Run.STATE_FAILED, run
    assert [a.error.code for a in step_of(run, "bad").attempts] == ["FLAKY"]
