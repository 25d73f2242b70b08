"""Podium runs whose steps target an A2A agent (protocol=a2a), end to end: a real
Podium server and a real A2A agent built with a2a-sdk's server classes. Every test runs
against an A2A 1.0 agent (``lf.a2a.v1``) and an A2A 0.3 one (only ``a2a.v1``, the SDK's
``CompatGrpcHandler``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import agent_pb2 as agent_resource_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1.approval_pb2 import DECISION_REJECT, Approval
from podium.orchestration.v1.run_pb2 import Run, StepRun
from tests.integration.a2a_agents import VERSIONS, A2AAgent, serve_a2a
from tests.integration.conftest import StartServer
from tests.integration.runs_helpers import (
    all_events,
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
        OrchestrationServiceAsyncStub as Stub,
    )


@pytest.fixture(params=VERSIONS, ids=[f"a2a-{v}" for v in VERSIONS])
async def a2a_agent(request: pytest.FixtureRequest) -> AsyncIterator[A2AAgent]:
    agent = await serve_a2a(version=request.param)
    try:
        yield agent
    finally:
        await agent.stop()


@pytest.fixture
async def stub(start_server: StartServer, a2a_agent: A2AAgent) -> AsyncIterator[Stub]:
    """A Podium server with the A2A agent declared statically as ``scripted``."""
    server = await start_server(agents=f"scripted={a2a_agent.endpoint};protocol=a2a")
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.OrchestrationServiceStub(channel)


async def run_step(stub: Stub, input: dict[str, Any], agent: str = "scripted") -> Run:
    inline = plan([{"id": "ask", "agent": agent, "input": input}])
    run = (await start_run(stub, inline=inline)).run
    return await wait_for_run(stub, run.id)


async def test_run_streams_progress_and_output(stub: Stub, a2a_agent: A2AAgent) -> None:
    run = await run_step(stub, {"mode": "ok"})
    assert run.state == Run.STATE_SUCCEEDED, run
    step = step_of(run, "ask")
    assert plain(step.output) == {"text": "Hello, world"}
    events = await all_events(stub, run.id)
    kinds = [event_type(e) for e in events]
    chunks = [e for e in events if event_type(e) == "step.output_chunk"]
    progress = [e for e in events if event_type(e) == "step.progress"]
    assert "".join(e.output_chunk.text for e in chunks) == "Hello, world"
    assert progress and progress[-1].progress.message == "done writing"
    completed = kinds.index("step.completed")
    assert all(kinds.index(event_type(e)) < completed for e in chunks + progress)
    # contextId is the step's conversation id.
    (seen,) = a2a_agent.requests
    assert seen.context_id == step.conversation_id
    assert seen.metadata["podium"]["run_id"] == run.id
    assert seen.metadata["podium"]["step_id"] == "ask"


async def test_failed_and_rejected_tasks_fail_the_step(stub: Stub) -> None:
    failed = await run_step(
        stub, {"mode": "fail", "fail_metadata": {"code": "BAD_INPUT", "retryable": False}}
    )
    assert failed.state == Run.STATE_FAILED
    error = step_of(failed, "ask").error
    assert (error.code, error.message, error.retryable) == ("BAD_INPUT", "boom", False)
    rejected = await run_step(stub, {"mode": "reject"})
    assert rejected.state == Run.STATE_FAILED
    error = step_of(rejected, "ask").error
    assert (error.code, error.message, error.retryable) == (
        "A2A_TASK_REJECTED",
        "not my job",
        False,
    )


async def test_cancel_run_cancels_the_a2a_task(stub: Stub, a2a_agent: A2AAgent) -> None:
    inline = plan([{"id": "ask", "agent": "scripted", "input": {"mode": "slow"}}])
    run = (await start_run(stub, inline=inline)).run
    await wait_for_step(stub, run.id, "ask", [StepRun.STATE_RUNNING])
    await wait_until(lambda: a2a_agent.started.is_set(), "the A2A task to start")
    await stub.CancelRun(pb.CancelRunRequest(run_id=run.id, reason="test"))
    await wait_until(lambda: bool(a2a_agent.cancelled), "CancelTask to reach the A2A agent")
    assert a2a_agent.cancelled == [a2a_agent.requests[0].task_id]
    assert (await wait_for_run(stub, run.id)).state == Run.STATE_CANCELLED


async def test_cut_stream_is_resumed_without_duplicated_output(
    stub: Stub, a2a_agent: A2AAgent
) -> None:
    run = await run_step(stub, {"mode": "cut"})
    assert run.state == Run.STATE_SUCCEEDED, run
    assert plain(step_of(run, "ask").output) == {"text": "abc"}
    events = await all_events(stub, run.id)
    chunks = [e.output_chunk.text for e in events if event_type(e) == "step.output_chunk"]
    assert "".join(chunks) == "abc"
    assert (a2a_agent.cuts, a2a_agent.subscriptions) == (1, 1)


async def test_input_required_parks_the_step_until_continue_run(
    stub: Stub, a2a_agent: A2AAgent
) -> None:
    """INPUT_REQUIRED parks the step on an input_required approval holding the question;
    ContinueRun's input is the answer, sent on the same A2A task and context."""
    inline = plan([{"id": "ask", "agent": "scripted", "input": {"mode": "input"}}])
    run = (await start_run(stub, inline=inline)).run
    await wait_for_step(stub, run.id, "ask", [StepRun.STATE_AWAITING_APPROVAL])
    (approval,) = (await stub.ListApprovals(pb.ListApprovalsRequest(run_id=run.id))).approvals
    assert approval.kind == Approval.KIND_INPUT_REQUIRED
    assert approval.prompt == "which city?"
    subject = plain(approval.subject)
    assert subject["task_id"] == a2a_agent.requests[0].task_id
    parked = step_of(await get_run(stub, run.id), "ask")
    assert (parked.error.code, parked.approval_id) == ("INPUT_REQUIRED", approval.id)

    await stub.ContinueRun(pb.ContinueRunRequest(run_id=run.id, input=struct({"city": "Paris"})))
    done = await wait_for_run(stub, run.id)
    assert done.state == Run.STATE_SUCCEEDED, done
    step = step_of(done, "ask")
    assert plain(step.output) == {"city": "Paris"}
    assert [a.number for a in step.attempts] == [1, 2]
    first, second = a2a_agent.requests
    assert (second.task_id, second.context_id) == (first.task_id, first.context_id)
    assert second.context_id == step.conversation_id
    decided = (await stub.GetApproval(pb.GetApprovalRequest(approval_id=approval.id))).approval
    assert (decided.state, decided.actor) == (Approval.STATE_DECIDED, "ContinueRun")
    kinds = [event_type(e) for e in await all_events(stub, run.id)]
    assert kinds.index("step.awaiting_approval") < kinds.index("run.continued")
    assert kinds.index("run.continued") < kinds.index("approval.decided")


async def test_refusing_to_answer_fails_the_step(stub: Stub) -> None:
    inline = plan([{"id": "ask", "agent": "scripted", "input": {"mode": "input"}}])
    run = (await start_run(stub, inline=inline)).run
    await wait_for_step(stub, run.id, "ask", [StepRun.STATE_AWAITING_APPROVAL])
    (approval,) = (await stub.ListApprovals(pb.ListApprovalsRequest(run_id=run.id))).approvals
    await stub.DecideApproval(
        pb.DecideApprovalRequest(approval_id=approval.id, decision=DECISION_REJECT, actor="ops")
    )
    done = await wait_for_run(stub, run.id)
    assert done.state == Run.STATE_FAILED
    assert step_of(done, "ask").error.code == "INPUT_REFUSED"


async def test_registered_a2a_agent(
    start_server: StartServer, a2a_agent: A2AAgent, example_agents: ExampleAgents
) -> None:
    server = await start_server()
    Agent = agent_resource_pb2.Agent
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=Agent(
                    name="remote",
                    endpoint=a2a_agent.endpoint,
                    protocol=Agent.Protocol.PROTOCOL_A2A,
                )
            )
        )
        run = await run_step(stub, {"mode": "data"}, agent="remote")
        assert run.state == Run.STATE_SUCCEEDED, run
        assert plain(step_of(run, "ask").output) == {"answer": 42}
        # An A2A entry pointing at a podium.agent.v1 agent fails clearly, not retried.
        summarizer = example_agents.addresses["summarizer"]
        await stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=Agent(name="wrong", endpoint=summarizer, protocol=Agent.Protocol.PROTOCOL_A2A)
            )
        )
        wrong = await run_step(stub, {"text": "hi"}, agent="wrong")
    assert wrong.state == Run.STATE_FAILED
    error = step_of(wrong, "ask").error
    assert (error.code, error.retryable) == ("A2A_NOT_SERVED", False)
