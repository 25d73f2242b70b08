"""A2A agents registered by their agent card's URL, on every binding: real a2a-sdk
servers (JSON-RPC and HTTP+JSON: its Starlette routes under uvicorn; gRPC: its
``GrpcHandler``, the card served over HTTP), called through Podium's
:class:`AgentDispatcher` with the outbound guard admitting loopback, as the server calls
them. The same behaviour on each binding: streamed progress and chunks, contextId =
the conversation, input-required then the answer on the same task, cancellation sent
to the agent, re-subscription after a cut stream."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1.agent_pb2 import Agent
from podium.orchestration.v1.run_pb2 import Run, StepRun
from podium.server.addresses import LOOPBACK
from podium.server.agents.a2a import A2A_NOT_SERVED, TaskInputRequired
from podium.server.agents.a2a_http import A2ACards
from podium.server.agents.client import AGENT_UNAVAILABLE, TaskFailed, TaskSucceeded
from podium.server.agents.dispatch import AGENT_ENDPOINT_REFUSED, AgentDispatcher
from podium.server.agents.endpoints import EndpointGuard
from tests.integration.a2a_agents import (
    HTTP_BINDINGS,
    A2AAgent,
    Recorder,
    request,
    serve_a2a_card,
    serve_a2a_http,
)
from tests.integration.client_helpers import podium
from tests.integration.conftest import StartServer
from tests.integration.rpc import violations
from tests.integration.runs_helpers import (
    all_events,
    event_type,
    plain,
    plan,
    start_run,
    step_of,
    struct,
    wait_for_run,
    wait_for_step,
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


async def run(
    dispatcher: AgentDispatcher, url: str, input: dict[str, Any], **kwargs: Any
) -> tuple[Any, Recorder]:
    recorder = Recorder()
    outcome = await dispatcher.execute(
        url,
        request(input, kwargs.pop("conversation_id", None)),
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


async def test_input_required_then_resume(dispatcher: AgentDispatcher, a2a_agent: A2AAgent) -> None:
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


async def test_deadline_cancels_the_task(dispatcher: AgentDispatcher, a2a_agent: A2AAgent) -> None:
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


@pytest.mark.parametrize("binding", HTTP_BINDINGS)
async def test_a2a_0_3_over_http(dispatcher: AgentDispatcher, binding: str) -> None:
    """A card listing an A2A 0.3 HTTP interface: a2a-sdk's 0.3 transports, the same
    behaviour (streaming, a question answered on the same task)."""
    agent = await serve_a2a_http(binding, version="0.3")
    try:
        outcome, recorder = await run(dispatcher, agent.card_url, {"mode": "ok"})
        assert isinstance(outcome, TaskSucceeded), outcome
        assert outcome.output == {"text": "Hello, world"}
        assert "".join(recorder.chunks) == "Hello, world"
        conversation = str(uuid.uuid4())
        asked, _ = await run(
            dispatcher, agent.card_url, {"mode": "input"}, conversation_id=conversation
        )
        assert isinstance(asked, TaskInputRequired), asked
        answered, _ = await run(
            dispatcher,
            agent.card_url,
            {"city": "Rome"},
            conversation_id=conversation,
            resume_task_id=asked.task_id,
        )
        assert isinstance(answered, TaskSucceeded), answered
        assert answered.output == {"city": "Rome"}
    finally:
        await agent.stop()


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


async def test_connections_go_to_the_checked_address() -> None:
    """A card URL's name is resolved by the guard and the connection made to the
    address it checked (``agent.podium.test`` resolves nowhere else); once the name
    re-binds to an address the guard refuses, the next card read is refused."""
    agent = await serve_a2a_http("JSONRPC")
    table = {"agent.podium.test": ["127.0.0.1"]}

    async def resolve(host: str, port: int) -> list[str]:
        return table[host]

    guard = EndpointGuard(LOOPBACK, resolver=resolve)
    calls = AgentDispatcher(guard=guard, cards=A2ACards(guard, refresh_seconds=0))
    url = agent.card_url.replace("127.0.0.1", "agent.podium.test")
    try:
        outcome, _ = await run(calls, url, {"mode": "data"})
        assert isinstance(outcome, TaskSucceeded), outcome
        assert agent.card_reads == 1
        table["agent.podium.test"] = ["10.0.0.1"]
        refused, _ = await run(calls, url, {"mode": "data"})
        assert isinstance(refused, TaskFailed), refused
        assert refused.code == AGENT_ENDPOINT_REFUSED
        assert "10.0.0.1, which is a private address" in refused.message
        assert agent.card_reads == 1
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


# --------------------------------------------------------------------------- the server


async def test_register_by_card_url_then_run_input_required(start_server: StartServer) -> None:
    """RegisterAgent with a card URL reads the card (skills from it), and a run on the
    JSON-RPC agent parks on its question and completes with ContinueRun's answer."""
    agent = await serve_a2a_http("JSONRPC")
    server = await start_server()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            registered = (
                await stub.RegisterAgent(
                    pb.RegisterAgentRequest(
                        agent=Agent(
                            name="remote", endpoint=agent.card_url, protocol=Agent.PROTOCOL_A2A
                        )
                    )
                )
            ).agent
            assert (registered.endpoint, list(registered.skills)) == (agent.card_url, ["scripted"])
            assert agent.card_reads == 1
            inline = plan([{"id": "ask", "skill": "scripted", "input": {"mode": "input"}}])
            run = (await start_run(stub, inline=inline)).run
            await wait_for_step(stub, run.id, "ask", [StepRun.STATE_AWAITING_APPROVAL])
            await stub.ContinueRun(
                pb.ContinueRunRequest(run_id=run.id, input=struct({"city": "Oslo"}))
            )
            done = await wait_for_run(stub, run.id)
            assert done.state == Run.STATE_SUCCEEDED, done
            step = step_of(done, "ask")
            assert plain(step.output) == {"city": "Oslo"}
            first, second = agent.requests
            assert (second.task_id, second.context_id) == (first.task_id, step.conversation_id)
            # The card read at registration serves the calls (no re-read within 300 s).
            assert agent.card_reads == 1
    finally:
        await agent.stop()


async def test_register_refuses_unusable_card_urls(start_server: StartServer) -> None:
    unusable = await serve_a2a_http("JSONRPC", card_binding="WEBSOCKET")
    down = await serve_a2a_http("JSONRPC")
    down_url = down.card_url
    await down.stop()
    server = await start_server()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            cases = {
                unusable.card_url: "lists no interface Podium can call",
                down_url: "cannot read the agent card",
                "ftp://example.com/card.json": "expected HOST:PORT",
                "http://user:pw@example.com/": "user information",
            }
            for url, reason in cases.items():
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.RegisterAgent(
                        pb.RegisterAgentRequest(
                            agent=Agent(name="remote", endpoint=url, protocol=Agent.PROTOCOL_A2A)
                        )
                    )
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, url
                assert reason in violations(refused.value)["agent.endpoint"], url
            # A card URL is for A2A agents only.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RegisterAgent(
                    pb.RegisterAgentRequest(agent=Agent(name="remote", endpoint=unusable.card_url))
                )
            assert "only A2A agents" in violations(refused.value)["agent.endpoint"]
            listed = await stub.ListAgents(pb.ListAgentsRequest())
            assert [a.name for a in listed.agents] == []
    finally:
        await unusable.stop()


@pytest.mark.parametrize("binding", BINDINGS)
async def test_static_agent_by_card_url_streams(start_server: StartServer, binding: str) -> None:
    agent = await _serve(binding)
    try:
        server = await start_server(agents=f"scripted={agent.card_url};protocol=a2a")
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            inline = plan([{"id": "ask", "agent": "scripted", "input": {"mode": "ok"}}])
            run = await wait_for_run(stub, (await start_run(stub, inline=inline)).run.id)
            assert run.state == Run.STATE_SUCCEEDED, run
            assert plain(step_of(run, "ask").output) == {"text": "Hello, world"}
            events = await all_events(stub, run.id)
            chunks = [e.output_chunk.text for e in events if event_type(e) == "step.output_chunk"]
            assert "".join(chunks) == "Hello, world"
            assert agent.requests[0].context_id == step_of(run, "ask").conversation_id
    finally:
        await agent.stop()


# --------------------------------------------------------------------------- the example

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "python" / "a2a_agent.py"


def _free_port_pair() -> int:
    """A port P with P and P + 1 free (the example serves gRPC on P + 1)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return int(port)
    raise AssertionError("no two free consecutive ports")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonrpc", "rest", "grpc"])
async def test_the_documented_example_agent(start_server: StartServer, kind: str) -> None:
    """docs/examples/python/a2a_agent.py in its own process on each binding, registered
    by its card URL with the CLI as docs/a2a.md shows: the answer, the progress fraction of the
    status update's metadata, and its question answered with ContinueRun."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        kind,
        "127.0.0.1",
        str(_free_port_pair()),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), DEADLINE)
        card_url = json.loads(line)["card_url"]
        server = await start_server()
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            registered = await podium(
                "agents", "register", "shouter", card_url, "--protocol", "a2a",
                "--address", server.address,
            )  # fmt: skip
            assert registered.returncode == 0, registered.stderr
            (agent,) = (await stub.ListAgents(pb.ListAgentsRequest())).agents
            assert (agent.name, agent.endpoint, list(agent.skills)) == (
                "shouter",
                card_url,
                ["shout"],
            )
            inline = plan([{"id": "ask", "skill": "shout", "input": {"text": "hi"}}])
            run = await wait_for_run(stub, (await start_run(stub, inline=inline)).run.id)
            assert run.state == Run.STATE_SUCCEEDED, run
            assert plain(step_of(run, "ask").output) == {"text": "HI!"}
            progress = [
                (e.progress.message, e.progress.fraction)
                for e in await all_events(stub, run.id)
                if event_type(e) == "step.progress"
            ]
            assert progress == [("shouting", 0.5)]

            inline = plan([{"id": "ask", "skill": "shout", "input": {}}])
            asking = (await start_run(stub, inline=inline)).run
            await wait_for_step(stub, asking.id, "ask", [StepRun.STATE_AWAITING_APPROVAL])
            await stub.ContinueRun(
                pb.ContinueRunRequest(run_id=asking.id, input=struct({"text": "later"}))
            )
            answered = await wait_for_run(stub, asking.id)
            assert plain(step_of(answered, "ask").output) == {"text": "LATER!"}
    finally:
        process.terminate()
        await process.wait()
