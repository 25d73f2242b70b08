"""A2AClient against real A2A agents built with a2a-sdk's server classes: every test
runs against an A2A 1.0 agent (``lf.a2a.v1``) and an A2A 0.3 one (``a2a.v1`` only)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from podium.server.agents.a2a import (
    A2A_TASK_FAILED,
    A2A_TASK_REJECTED,
    A2AClient,
    TaskInputRequired,
)
from podium.server.agents.client import AGENT_UNAVAILABLE, TaskFailed, TaskSucceeded
from tests.integration.a2a_agents import VERSIONS, A2AAgent, Recorder, request, serve_a2a

DEADLINE = 30.0


@pytest.fixture(params=VERSIONS, ids=[f"a2a-{v}" for v in VERSIONS])
async def a2a_agent(request: pytest.FixtureRequest) -> AsyncIterator[A2AAgent]:
    agent = await serve_a2a(version=request.param)
    try:
        yield agent
    finally:
        await agent.stop()


@pytest.fixture
async def client() -> AsyncIterator[A2AClient]:
    a2a = A2AClient()
    try:
        yield a2a
    finally:
        await a2a.close()


async def run(client: A2AClient, agent: A2AAgent, input: dict[str, Any], **kwargs: Any):
    recorder = Recorder()
    outcome = await client.execute(
        agent.endpoint,
        request(input, kwargs.pop("conversation_id", None)),
        timeout=DEADLINE,
        on_progress=recorder.on_progress,
        on_output_chunk=recorder.on_chunk,
        **kwargs,
    )
    return outcome, recorder


async def test_streams_progress_and_output(client: A2AClient, a2a_agent: A2AAgent) -> None:
    conversation = str(uuid.uuid4())
    outcome, recorder = await run(client, a2a_agent, {"mode": "ok"}, conversation_id=conversation)
    assert isinstance(outcome, TaskSucceeded), outcome
    assert outcome.output == {"text": "Hello, world"}
    assert recorder.chunks == ["Hello, ", "world"]
    assert recorder.progress == [("thinking", 0.25), ("done writing", -1.0)]
    (seen,) = a2a_agent.requests
    assert seen.context_id == conversation
    assert seen.input == {"mode": "ok"}
    assert seen.metadata["podium"]["step_id"] == "ask"
    assert await client.protocol_version(a2a_agent.endpoint) == a2a_agent.version


async def test_data_artifact_is_the_output(client: A2AClient, a2a_agent: A2AAgent) -> None:
    outcome, _ = await run(client, a2a_agent, {"mode": "data"})
    assert isinstance(outcome, TaskSucceeded), outcome
    assert outcome.output == {"answer": 42}


async def test_failed_and_rejected(client: A2AClient, a2a_agent: A2AAgent) -> None:
    failed, _ = await run(client, a2a_agent, {"mode": "fail"})
    assert isinstance(failed, TaskFailed)
    assert (failed.code, failed.message, failed.retryable, failed.origin) == (
        A2A_TASK_FAILED,
        "boom",
        True,
        "agent",
    )
    coded, _ = await run(
        client,
        a2a_agent,
        {"mode": "fail", "fail_metadata": {"code": "BAD_INPUT", "retryable": False}},
    )
    assert isinstance(coded, TaskFailed)
    assert (coded.code, coded.retryable) == ("BAD_INPUT", False)
    rejected, _ = await run(client, a2a_agent, {"mode": "reject"})
    assert isinstance(rejected, TaskFailed)
    assert (rejected.code, rejected.message, rejected.retryable) == (
        A2A_TASK_REJECTED,
        "not my job",
        False,
    )


async def test_cut_stream_resubscribes_without_duplicates(
    client: A2AClient, a2a_agent: A2AAgent
) -> None:
    outcome, recorder = await run(client, a2a_agent, {"mode": "cut"})
    assert isinstance(outcome, TaskSucceeded), outcome
    assert outcome.output == {"text": "abc"}
    assert "".join(recorder.chunks) == "abc"
    assert (a2a_agent.cuts, a2a_agent.subscriptions) == (1, 1)


async def test_reset_stream_resubscribes_without_duplicates(
    client: A2AClient, a2a_agent: A2AAgent
) -> None:
    outcome, recorder = await run(client, a2a_agent, {"mode": "reset"})
    assert isinstance(outcome, TaskSucceeded), outcome
    assert outcome.output == {"text": "abc"}
    assert "".join(recorder.chunks) == "abc"
    assert (a2a_agent.cuts, a2a_agent.subscriptions) == (1, 1)


async def test_input_required_then_resume(client: A2AClient, a2a_agent: A2AAgent) -> None:
    conversation = str(uuid.uuid4())
    outcome, _ = await run(client, a2a_agent, {"mode": "input"}, conversation_id=conversation)
    assert isinstance(outcome, TaskInputRequired), outcome
    assert outcome.message == "which city?"
    assert outcome.context_id == conversation
    assert outcome.task_id
    # What ContinueRun will send: the reply on the same task and context.
    resumed, _ = await run(
        client,
        a2a_agent,
        {"city": "Paris"},
        conversation_id=conversation,
        resume_task_id=outcome.task_id,
    )
    assert isinstance(resumed, TaskSucceeded), resumed
    assert resumed.output == {"city": "Paris"}
    assert [(s.task_id, s.context_id) for s in a2a_agent.requests] == [
        (outcome.task_id, conversation)
    ] * 2


async def test_cancel_sends_cancel_task(client: A2AClient, a2a_agent: A2AAgent) -> None:
    task = asyncio.create_task(run(client, a2a_agent, {"mode": "slow"}))
    await asyncio.wait_for(a2a_agent.started.wait(), DEADLINE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a2a_agent.cancelled == [a2a_agent.requests[0].task_id]


async def test_unreachable_agent(client: A2AClient) -> None:
    outcome = await client.execute("127.0.0.1:1", request({}), timeout=DEADLINE)
    assert isinstance(outcome, TaskFailed)
    assert outcome.code == AGENT_UNAVAILABLE
