"""A2A agents registered by their agent card's URL, on every binding: real a2a-sdk
servers (JSON-RPC and HTTP+JSON: its Starlette routes under uvicorn; gRPC: its
``GrpcHandler``, the card served over HTTP), called through Podium's
:class:`AgentDispatcher` with the outbound guard admitting loopback, as the server calls
them. The same behaviour on each binding: streamed progress and chunks, contextId =
the conversation, input-required then the answer on the same task, cancellation sent
to the agent, re-subscription after a cut stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from podium.agent.v1 import agent_pb2
from podium.server.addresses import LOOPBACK
from podium.server.agents.a2a import A2A_NOT_SERVED, TaskInputRequired
from podium.server.agents.a2a_http import A2ACards
from podium.server.agents.client import AGENT_UNAVAILABLE, TaskFailed, TaskSucceeded
from podium.server.agents.dispatch import AGENT_ENDPOINT_REFUSED, AgentDispatcher
from podium.server.agents.endpoints import EndpointGuard
from tests.integration.a2a_agents import (
    HTTP_BINDINGS,
    A2AAgent,
    serve_a2a_card,
    serve_a2a_http,
)

DEADLINE = 30.0
BINDINGS = (*HTTP_BINDINGS, "GRPC")


async def _serve(binding: str) -> A2AAgent:
    return await serve_a2a_card() if binding == "GRPC" else await serve_a2a_http(binding)


@pytest.fixture(params=BINDINGS)
async def a2a_agent(request: pytest.FixtureRequest) -> AsyncIterator[A2AAgent]:
    agent = await _serve(request.param)
    try:
        yield agent
    finally:
        await agent.stop()


@pytest.fixture
async def dispatcher() -> AsyncIterator[AgentDispatcher]:
    guard = EndpointGuard(LOOPBACK)
    calls = AgentDispatcher(guard=guard, cards=A2ACards(guard))
    try:
        yield calls
    finally:
        await calls.close()


def request(input: dict[str, Any], conversation_id: str = "") -> agent_pb2.ExecuteTaskRequest:
    req = agent_pb2.ExecuteTaskRequest(
        task_id=str(uuid.uuid4()),
        run_id=str(uuid.uuid4()),
        step_id="ask",
        attempt=1,
        conversation_id=conversation_id or str(uuid.uuid4()),
        organization_id="default",
    )
    req.input.update(input)
    return req


class Recorder:
    def __init__(self) -> None:
        self.progress: list[tuple[str, float]] = []
        self.chunks: list[str] = []

    def on_progress(self, progress: agent_pb2.Progress) -> None:
        self.progress.append((progress.message, progress.fraction))

    def on_chunk(self, chunk: agent_pb2.OutputChunk) -> None:
        self.chunks.append(chunk.text)


async def run(
    dispatcher: AgentDispatcher, url: str, input: dict[str, Any], **kwargs: Any
) -> tuple[Any, Recorder]:
    recorder = Recorder()
    outcome = await dispatcher.execute(
        url,
        request(input, kwargs.pop("conversation_id", "")),
        protocol="a2a",
        timeout=kwargs.pop("timeout", DEADLINE),
        on_progress=recorder.on_progress,
        on_output_chunk=recorder.on_chunk,
        **kwargs,
    )
    return outcome, recorder


async def test_streams_progress_and_output(
    dispatcher: AgentDispatcher, a2a_agent: A2AAgent
) -> None:
    conversation = str(uuid.uuid4())
    outcome, recorder = await run(
        dispatcher, a2a_agent.card_url, {"mode": "ok"}, conversation_id=conversation
    )
    assert isinstance(outcome, TaskSucceeded), outcome
    assert outcome.output == {"text": "Hello, world"}
    assert recorder.chunks == ["Hello, ", "world"]
    assert recorder.progress == [("thinking", 0.25), ("done writing", -1.0)]
    (seen,) = a2a_agent.requests
    assert seen.context_id == conversation
    assert seen.input == {"mode": "ok"}
    assert seen.metadata["podium"]["step_id"] == "ask"


async def test_base_url_reads_the_well_known_card(
    dispatcher: AgentDispatcher, a2a_agent: A2AAgent
) -> None:
    outcome, _ = await run(dispatcher, a2a_agent.base_url, {"mode": "data"})
    assert isinstance(outcome, TaskSucceeded), outcome
    assert outcome.output == {"answer": 42}
    assert a2a_agent.card_reads == 1


async def test_fraction_of_the_status_update_metadata(
    dispatcher: AgentDispatcher, a2a_agent: A2AAgent
) -> None:
    outcome, recorder = await run(dispatcher, a2a_agent.card_url, {"mode": "status_fraction"})
    assert isinstance(outcome, TaskSucceeded), outcome
    assert recorder.progress == [("thinking", 0.25), ("halfway", 0.5)]


async def test_failed_keeps_the_agent_code(
    dispatcher: AgentDispatcher, a2a_agent: A2AAgent
) -> None:
    outcome, _ = await run(
        dispatcher,
        a2a_agent.card_url,
        {"mode": "fail", "fail_metadata": {"code": "BAD_INPUT", "retryable": False}},
    )
    assert isinstance(outcome, TaskFailed), outcome
    assert (outcome.code, outcome.message, outcome.retryable) == ("BAD_INPUT", "boom", False)


async def test_input_required_then_resume(
    dispatcher: AgentDispatcher, a2a_agent: A2AAgent
) -> None:
    conversation = str(uuid.uuid4())
    outcome, _ = await run(
        dispatcher, a2a_agent.card_url, {"mode": "input"}, conversation_id=conversation
    )
    assert isinstance(outcome, TaskInputRequired), outcome
    assert (outcome.message, outcome.context_id) == ("which city?", conversation)
    resumed, _ = await run(
        dispatcher,
        a2a_agent.card_url,
        {"city": "Paris"},
        conversation_id=conversation,
        resume_task_id=outcome.task_id,
    )
    assert isinstance(resumed, TaskSucceeded), resumed
    assert resumed.output == {"city": "Paris"}
    assert [(s.task_id, s.context_id) for s in a2a_agent.requests] == [
        (outcome.task_id, conversation)
    ] * 2


async def test_cancel_sends_cancel_task(dispatcher: AgentDispatcher, a2a_agent: A2AAgent) -> None:
    task = asyncio.create_task(run(dispatcher, a2a_agent.card_url, {"mode": "slow"}))
    await asyncio.wait_for(a2a_agent.started.wait(), DEADLINE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a2a_agent.cancelled == [a2a_agent.requests[0].task_id]


async def test_deadline_cancels_the_task(
    dispatcher: AgentDispatcher, a2a_agent: A2AAgent
) -> None:
    outcome, _ = await run(dispatcher, a2a_agent.card_url, {"mode": "slow"}, timeout=2.0)
    assert isinstance(outcome, TaskFailed), outcome
    assert outcome.code == "DEADLINE_EXCEEDED"
    assert a2a_agent.cancelled == [a2a_agent.requests[0].task_id]


async def test_cut_stream_resubscribes_without_duplicates(
    dispatcher: AgentDispatcher, a2a_agent: A2AAgent
) -> None:
    outcome, recorder = await run(dispatcher, a2a_agent.card_url, {"mode": "cut"})
    assert isinstance(outcome, TaskSucceeded), outcome
    assert outcome.output == {"text": "abc"}
    assert "".join(recorder.chunks) == "abc"
    assert (a2a_agent.cuts, a2a_agent.subscriptions) == (1, 1)


async def test_card_is_read_again_once_old() -> None:
    agent = await serve_a2a_http("JSONRPC")
    guard = EndpointGuard(LOOPBACK)
    calls = AgentDispatcher(guard=guard, cards=A2ACards(guard, refresh_seconds=0))
    try:
        for _ in range(2):
            outcome, _ = await run(calls, agent.card_url, {"mode": "data"})
            assert isinstance(outcome, TaskSucceeded), outcome
        assert agent.card_reads == 2
    finally:
        await calls.close()
        await agent.stop()


async def test_card_without_a_binding_podium_calls(dispatcher: AgentDispatcher) -> None:
    agent = await serve_a2a_http("JSONRPC", card_binding="WEBSOCKET")
    try:
        outcome, _ = await run(dispatcher, agent.card_url, {"mode": "ok"})
        assert isinstance(outcome, TaskFailed), outcome
        assert (outcome.code, outcome.retryable) == (A2A_NOT_SERVED, False)
        assert "WEBSOCKET" in outcome.message
        assert agent.requests == []
    finally:
        await agent.stop()


async def test_guard_refuses_a_loopback_card_url() -> None:
    agent = await serve_a2a_http("JSONRPC")
    guard = EndpointGuard()  # nothing private admitted
    calls = AgentDispatcher(guard=guard, cards=A2ACards(guard))
    try:
        outcome, _ = await run(calls, agent.card_url, {"mode": "ok"})
        assert isinstance(outcome, TaskFailed), outcome
        assert (outcome.code, outcome.retryable) == (AGENT_ENDPOINT_REFUSED, False)
        assert "loopback" in outcome.message
        assert agent.card_reads == 0
    finally:
        await calls.close()
        await agent.stop()


async def test_agent_down(dispatcher: AgentDispatcher) -> None:
    agent = await serve_a2a_http("JSONRPC")
    url = agent.card_url
    await agent.stop()
    outcome, _ = await run(dispatcher, url, {"mode": "ok"})
    assert isinstance(outcome, TaskFailed), outcome
    assert (outcome.code, outcome.retryable) == (AGENT_UNAVAILABLE, True)
