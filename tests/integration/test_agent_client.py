"""AgentClient against real gRPC agent servers on 127.0.0.1.

Well-behaved agents are written with the agent SDK (``podium.client.agent``); agents
that break the stream contract are raw ``AgentServiceServicer`` subclasses, since the
SDK cannot produce such streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from podium.agent.v1 import agent_pb2, agent_pb2_grpc
from podium.client.agent import Agent, Skill, Task, TaskFailed
from podium.server.addresses import parse_allow_list
from podium.server.agents.client import (
    AGENT_PROTOCOL_ERROR,
    AGENT_UNAVAILABLE,
    DEADLINE_EXCEEDED,
    AgentCallError,
    AgentClient,
    TaskSucceeded,
    dict_from_struct,
    struct_from_dict,
)
from podium.server.agents.client import TaskFailed as Failure
from podium.server.agents.dispatch import AGENT_ENDPOINT_REFUSED, AgentDispatcher
from podium.server.agents.endpoints import EndpointGuard
from tests.integration.pg_cluster import free_port

Response = agent_pb2.ExecuteTaskResponse


@pytest.fixture
async def client() -> AsyncIterator[AgentClient]:
    agent_client = AgentClient()
    try:
        yield agent_client
    finally:
        await agent_client.close()


@asynccontextmanager
async def serving(agent: Agent) -> AsyncIterator[str]:
    """Serve ``agent`` on a free port; yield its endpoint."""
    server = await agent.serve("127.0.0.1:0")
    try:
        yield server.address
    finally:
        await server.stop(None)


@asynccontextmanager
async def serving_raw(servicer: agent_pb2_grpc.AgentServiceServicer) -> AsyncIterator[str]:
    """Serve a raw servicer (plus Health) on a free port; yield its endpoint."""
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


class Scripted(agent_pb2_grpc.AgentServiceServicer):
    """Streams a fixed list of responses, then ends with ``abort`` if given."""

    def __init__(
        self, responses: list[Response], abort: tuple[grpc.StatusCode, str] | None = None
    ) -> None:
        self.responses = responses
        self.abort = abort
        self.peers: list[str] = []

    async def ExecuteTask(
        self, request: agent_pb2.ExecuteTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Response]:
        self.peers.append(context.peer())
        for response in self.responses:
            yield response
        if self.abort is not None:
            await context.abort(*self.abort)

    async def GetAgentCard(
        self, request: agent_pb2.GetAgentCardRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.GetAgentCardResponse:
        return agent_pb2.GetAgentCardResponse(card=agent_pb2.AgentCard(name="scripted"))


def result(**output: Any) -> Response:
    response = Response()
    response.result.output.SetInParent()  # present even when empty
    response.result.output.update(output)
    return response


def request(**input_: Any) -> agent_pb2.ExecuteTaskRequest:
    req = agent_pb2.ExecuteTaskRequest(task_id="t-1", run_id="r-1", step_id="s", attempt=1)
    req.input.update(input_)
    return req


# --------------------------------------------------------------------------- success


async def test_success_relays_progress_chunks_and_artifacts_in_order(client: AgentClient) -> None:
    agent = Agent("worker", skills=[Skill("work")])

    @agent.task
    async def work(task: Task) -> dict[str, Any]:
        await task.progress("starting", 0.1)
        await task.output_chunk("Hello, ")
        await task.artifact("report.md", "# Report", media_type="text/markdown")
        await task.output_chunk(task.input["name"])
        await task.progress("done", 1.0)
        task.usage(model="demo", input_tokens=12, output_tokens=5, cost_usd=0.25)
        return {"n": task.input["n"] + 1, "ratio": 0.5, "nested": {"list": [1, 2.5, None, True]}}

    seen: list[tuple[str, Any]] = []

    def on_progress(progress: agent_pb2.Progress) -> None:
        seen.append(("progress", (progress.message, progress.fraction)))

    async def on_chunk(chunk: agent_pb2.OutputChunk) -> None:
        await asyncio.sleep(0)
        seen.append(("chunk", chunk.text))

    def on_artifact(artifact: agent_pb2.Artifact) -> None:
        seen.append(("artifact", artifact.name))

    async with serving(agent) as endpoint:
        outcome = await client.execute(
            endpoint,
            request(name="Ada", n=41),
            timeout=5,
            on_progress=on_progress,
            on_output_chunk=on_chunk,
            on_artifact=on_artifact,
        )

    assert isinstance(outcome, TaskSucceeded)
    assert outcome.ok
    assert outcome.output == {"n": 42, "ratio": 0.5, "nested": {"list": [1, 2.5, None, True]}}
    assert type(outcome.output["n"]) is int
    assert seen == [
        ("progress", ("starting", 0.1)),
        ("chunk", "Hello, "),
        ("artifact", "report.md"),
        ("chunk", "Ada"),
        ("progress", ("done", 1.0)),
    ]
    assert [(a.name, a.media_type, a.data) for a in outcome.artifacts] == [
        ("report.md", "text/markdown", b"# Report")
    ]
    assert outcome.usage is not None
    assert (outcome.usage.model, outcome.usage.input_tokens, outcome.usage.output_tokens) == (
        "demo",
        12,
        5,
    )
    assert outcome.usage.cost_usd == 0.25


async def test_without_callbacks_messages_are_skipped_and_artifacts_collected(
    client: AgentClient,
) -> None:
    artifact = Response(artifact=agent_pb2.Artifact(name="a.txt", data=b"x"))
    servicer = Scripted([Response(progress=agent_pb2.Progress(message="p")), artifact, result()])
    async with serving_raw(servicer) as endpoint:
        outcome = await client.execute(endpoint, request(), timeout=5)
    assert outcome == TaskSucceeded(output={}, artifacts=(artifact.artifact,))
    assert outcome.usage is None


async def test_metadata_reaches_the_agent(client: AgentClient) -> None:
    agent = Agent("meta")

    @agent.task
    async def handler(task: Task) -> dict[str, Any]:
        return {"traceparent": task.metadata.get("traceparent")}

    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with serving(agent) as endpoint:
        outcome = await client.execute(
            endpoint, request(), timeout=5, metadata=[("traceparent", traceparent)]
        )
    assert isinstance(outcome, TaskSucceeded)
    assert outcome.output == {"traceparent": traceparent}


# --------------------------------------------------------------------------- failures


async def test_agent_error_result_is_mapped(client: AgentClient) -> None:
    agent = Agent("failing")

    @agent.task
    async def handler(task: Task) -> dict[str, Any]:
        await task.artifact("partial.txt", "half")
        task.usage(model="m", input_tokens=3)
        raise TaskFailed("UPSTREAM_REFUSED", "the upstream said no", retryable=False)

    async with serving(agent) as endpoint:
        outcome = await client.execute(endpoint, request(), timeout=5)
    assert isinstance(outcome, Failure)
    assert not outcome.ok
    assert (outcome.code, outcome.message, outcome.retryable, outcome.origin) == (
        "UPSTREAM_REFUSED",
        "the upstream said no",
        False,
        "agent",
    )
    assert outcome.grpc_status is None
    assert outcome.usage is not None and outcome.usage.input_tokens == 3
    assert [a.name for a in outcome.artifacts] == ["partial.txt"]


async def test_error_result_without_code_gets_a_generic_code(client: AgentClient) -> None:
    response = Response()
    response.result.error.retryable = True
    async with serving_raw(Scripted([response])) as endpoint:
        outcome = await client.execute(endpoint, request(), timeout=5)
    assert isinstance(outcome, Failure)
    assert (outcome.code, outcome.retryable, outcome.origin) == ("AGENT_ERROR", True, "agent")
    assert outcome.message


async def test_deadline_is_deadline_exceeded_and_cancels_the_task(client: AgentClient) -> None:
    cancelled = asyncio.Event()
    agent = Agent("sleeper", on_cancel=lambda task: cancelled.set())

    @agent.task
    async def handler(task: Task) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    async with serving(agent) as endpoint:
        outcome = await client.execute(endpoint, request(), timeout=0.3)
        await asyncio.wait_for(cancelled.wait(), 5)
    assert isinstance(outcome, Failure)
    assert (outcome.code, outcome.retryable, outcome.origin, outcome.grpc_status) == (
        DEADLINE_EXCEEDED,
        True,
        "transport",
        "DEADLINE_EXCEEDED",
    )


async def test_unreachable_endpoint_is_agent_unavailable(client: AgentClient) -> None:
    outcome = await client.execute(f"127.0.0.1:{free_port()}", request(), timeout=5)
    assert isinstance(outcome, Failure)
    assert (outcome.code, outcome.retryable, outcome.origin, outcome.grpc_status) == (
        AGENT_UNAVAILABLE,
        True,
        "transport",
        "UNAVAILABLE",
    )


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "AGENT_INVALID_ARGUMENT", False),
        (grpc.StatusCode.UNIMPLEMENTED, "AGENT_UNIMPLEMENTED", False),
        (grpc.StatusCode.CANCELLED, "CANCELLED", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "AGENT_RESOURCE_EXHAUSTED", True),
        (grpc.StatusCode.INTERNAL, "AGENT_INTERNAL", True),
    ],
)
async def test_grpc_statuses_are_mapped(
    client: AgentClient, status: grpc.StatusCode, code: str, retryable: bool
) -> None:
    progress = Response(progress=agent_pb2.Progress(message="p"))
    async with serving_raw(Scripted([progress], abort=(status, "nope"))) as endpoint:
        outcome = await client.execute(endpoint, request(), timeout=5)
    assert isinstance(outcome, Failure)
    assert (outcome.code, outcome.retryable, outcome.origin) == (code, retryable, "transport")
    assert "nope" in outcome.message


async def test_a_server_without_the_agent_service_is_unimplemented(client: AgentClient) -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        outcome = await client.execute(f"127.0.0.1:{port}", request(), timeout=5)
    finally:
        await server.stop(None)
    assert isinstance(outcome, Failure)
    assert (outcome.code, outcome.retryable) == ("AGENT_UNIMPLEMENTED", False)


async def test_a_status_after_the_result_wins(client: AgentClient) -> None:
    servicer = Scripted([result(x=1)], abort=(grpc.StatusCode.INTERNAL, "crashed after"))
    async with serving_raw(servicer) as endpoint:
        outcome = await client.execute(endpoint, request(), timeout=5)
    assert isinstance(outcome, Failure)
    assert (outcome.code, outcome.origin) == ("AGENT_INTERNAL", "transport")


# --------------------------------------------------------------------------- protocol


@pytest.mark.parametrize(
    ("responses", "message"),
    [
        ([Response(progress=agent_pb2.Progress(message="p"))], "ended without a result"),
        ([], "ended without a result"),
        ([result(a=1), result(a=2)], "a second result after its result"),
        (
            [result(a=1), Response(output_chunk=agent_pb2.OutputChunk(text="late"))],
            "another message (output_chunk) after its result",
        ),
        ([result(a=1), Response()], "another message (empty) after its result"),
    ],
    ids=["no-result", "empty-stream", "two-results", "chunk-after-result", "empty-after-result"],
)
async def test_protocol_violations(
    client: AgentClient, responses: list[Response], message: str
) -> None:
    async with serving_raw(Scripted(responses)) as endpoint:
        outcome = await client.execute(endpoint, request(), timeout=5)
    assert isinstance(outcome, Failure)
    assert (outcome.code, outcome.retryable, outcome.origin) == (
        AGENT_PROTOCOL_ERROR,
        True,
        "protocol",
    )
    assert message in outcome.message


async def test_unknown_event_kinds_before_the_result_are_ignored(client: AgentClient) -> None:
    async with serving_raw(Scripted([Response(), result(ok=True)])) as endpoint:
        outcome = await client.execute(endpoint, request(), timeout=5)
    assert outcome == TaskSucceeded(output={"ok": True})


# --------------------------------------------------------------------------- cancellation


async def test_cancelling_the_caller_cancels_the_agent_task(client: AgentClient) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    agent = Agent("sleeper", on_cancel=lambda task: cancelled.set())

    @agent.task
    async def handler(task: Task) -> dict[str, Any]:
        await task.progress("working")
        await asyncio.sleep(30)
        return {}

    async with serving(agent) as endpoint:
        call = asyncio.create_task(
            client.execute(endpoint, request(), timeout=30, on_progress=lambda p: started.set())
        )
        await asyncio.wait_for(started.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(cancelled.wait(), 5)
    assert agent.cancelled_tasks == 1


async def test_a_failing_callback_cancels_the_call_and_propagates(client: AgentClient) -> None:
    cancelled = asyncio.Event()
    agent = Agent("chatty", on_cancel=lambda task: cancelled.set())

    @agent.task
    async def handler(task: Task) -> dict[str, Any]:
        await task.progress("one")
        await asyncio.sleep(30)
        return {}

    def explode(progress: agent_pb2.Progress) -> None:
        raise RuntimeError("relay failed")

    async with serving(agent) as endpoint:
        with pytest.raises(RuntimeError, match="relay failed"):
            await client.execute(endpoint, request(), timeout=30, on_progress=explode)
        await asyncio.wait_for(cancelled.wait(), 5)


# --------------------------------------------------------------------------- channels


async def test_closing_the_channel_fails_calls_in_flight(client: AgentClient) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    agent = Agent("sleeper", on_cancel=lambda task: cancelled.set())

    @agent.task
    async def handler(task: Task) -> dict[str, Any]:
        await task.progress("working")
        await asyncio.sleep(30)
        return {}

    async with serving(agent) as endpoint:
        call = asyncio.create_task(
            client.execute(endpoint, request(), timeout=30, on_progress=lambda p: started.set())
        )
        await asyncio.wait_for(started.wait(), 5)
        await client.discard(endpoint)
        outcome = await call
        await asyncio.wait_for(cancelled.wait(), 5)
    assert isinstance(outcome, Failure)
    assert (outcome.code, outcome.retryable, outcome.origin) == ("CANCELLED", True, "transport")


async def test_one_channel_per_endpoint_reused_across_calls(client: AgentClient) -> None:
    first, second = Scripted([result()]), Scripted([result()])
    async with serving_raw(first) as endpoint_a, serving_raw(second) as endpoint_b:
        channel_a = client.channel(endpoint_a)
        for _ in range(3):
            await client.execute(endpoint_a, request(), timeout=5)
        await asyncio.gather(*(client.execute(endpoint_a, request(), timeout=5) for _ in range(5)))
        await client.execute(endpoint_b, request(), timeout=5)
        assert client.channel(endpoint_a) is channel_a
        assert sorted(client.endpoints) == sorted([endpoint_a, endpoint_b])
    # Every call to A came over one connection (one client port).
    assert len(first.peers) == 8
    assert len(set(first.peers)) == 1
    assert len(second.peers) == 1


async def test_discard_and_close(client: AgentClient) -> None:
    async with serving_raw(Scripted([result()])) as endpoint:
        await client.execute(endpoint, request(), timeout=5)
        channel = client.channel(endpoint)
        await client.discard(endpoint)
        assert client.endpoints == []
        assert (await client.execute(endpoint, request(), timeout=5)).ok
        assert client.channel(endpoint) is not channel
        await client.close()
        await client.close()  # idempotent
        assert client.endpoints == []
        with pytest.raises(RuntimeError, match="closed"):
            await client.execute(endpoint, request(), timeout=5)


async def test_dispatcher_clients_share_one_channel_per_endpoint() -> None:
    dispatcher = AgentDispatcher()
    try:
        async with serving_raw(Scripted([result()])) as endpoint:
            assert (await dispatcher.podium.execute(endpoint, request(), timeout=5)).ok
            channel = dispatcher.podium.channel(endpoint)
            # Not an A2A agent: the A2A client asks over the same channel.
            assert await dispatcher.a2a.protocol_version(endpoint) == ""
            assert dispatcher.a2a.channel(endpoint) is channel
            assert dispatcher.channels.endpoints == [endpoint]
            routed = await dispatcher.execute(endpoint, request(), protocol="a2a", timeout=5)
            assert isinstance(routed, Failure)
            assert (routed.code, routed.retryable) == ("A2A_NOT_SERVED", False)
            # A channel discarded by one client is reopened for both.
            await dispatcher.a2a.discard(endpoint)
            assert dispatcher.channels.endpoints == []
            assert (await dispatcher.podium.execute(endpoint, request(), timeout=5)).ok
            reopened = dispatcher.a2a.channel(endpoint)
            assert reopened is not channel
            assert dispatcher.podium.channel(endpoint) is reopened
            assert await dispatcher.a2a.protocol_version(endpoint) == ""
    finally:
        await dispatcher.close()
        await dispatcher.close()  # idempotent
    assert dispatcher.channels.endpoints == []
    with pytest.raises(RuntimeError, match="closed"):
        dispatcher.channels.get("127.0.0.1:1")


async def test_a_guarded_dispatcher_connects_to_the_checked_address_only() -> None:
    # "agent.test" exists only in the guard's resolver: a call reaches the agent because
    # the channel targets the address the guard checked, never the name.
    answers = {"agent.test": ["127.0.0.1"]}

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    guard = EndpointGuard(parse_allow_list("127.0.0.1/32"), resolver=resolve)
    dispatcher = AgentDispatcher(guard=guard)
    agent = Scripted([result(ok=True)])
    try:
        async with serving_raw(agent) as endpoint:
            named = f"agent.test:{endpoint.rpartition(':')[2]}"
            assert (await dispatcher.execute(named, request(), timeout=5)).ok
            channel = dispatcher.channels.get(named)
            assert (await dispatcher.execute(named, request(), timeout=5)).ok
            assert dispatcher.channels.get(named) is channel  # reused while it resolves
            assert len(agent.peers) == 2
            # DNS rebinding: the name now points inside; refused before any connection.
            for inside in (["10.9.8.7"], ["127.0.0.1", "169.254.169.254"], ["127.0.0.2"]):
                answers["agent.test"] = inside
                refused = await dispatcher.execute(named, request(), timeout=5)
                assert isinstance(refused, Failure)
                assert (refused.code, refused.retryable) == (AGENT_ENDPOINT_REFUSED, False)
                assert "PODIUM_AGENT_ALLOWED_NETWORKS" in refused.message
            assert len(agent.peers) == 2
            # An unresolvable name is a retryable unavailability.
            del answers["agent.test"]
            answers["other.test"] = []
            gone = await dispatcher.execute("other.test:1", request(), timeout=5)
            assert isinstance(gone, Failure) and gone.retryable
            assert gone.code == "AGENT_UNAVAILABLE"
            # Refused forms never reach the resolver.
            sock = await dispatcher.execute("unix:///tmp/agent.sock", request(), timeout=5)
            assert isinstance(sock, Failure) and sock.code == AGENT_ENDPOINT_REFUSED
    finally:
        await dispatcher.close()


async def test_a_named_agent_is_looked_up_once_until_a_call_finds_it_gone() -> None:
    """With PODIUM_AGENT_DNS_CACHE_SECONDS, calls to an agent named by host reuse the
    checked answer instead of resolving before each call; a call that finds nothing
    listening drops it, so the next call (the agent back at another address) resolves
    the name again."""
    answers = {"agent.test": ["127.0.0.1"]}
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return answers[host]

    guard = EndpointGuard(parse_allow_list("loopback"), resolver=resolve, cache_seconds=300)
    dispatcher = AgentDispatcher(guard=guard)
    try:
        async with serving_raw(Scripted([result(ok=True)])) as endpoint:
            named = f"agent.test:{endpoint.rpartition(':')[2]}"
            for _ in range(3):
                assert (await dispatcher.execute(named, request(), timeout=5)).ok
            assert lookups == ["agent.test"]
        # The agent is gone from that address: unavailable, and its name forgotten.
        gone = await dispatcher.execute(named, request(), timeout=5)
        assert isinstance(gone, Failure) and gone.code == "AGENT_UNAVAILABLE"
        assert lookups == ["agent.test"]
        # So the next call looks the name up again: the agent may listen elsewhere now.
        await dispatcher.execute(named, request(), timeout=5)
        assert lookups == ["agent.test", "agent.test"]
    finally:
        await dispatcher.close()


async def test_message_size_limits_apply_and_are_not_retryable() -> None:
    small = AgentClient(max_message_bytes=1024)
    try:
        async with serving_raw(Scripted([result(text="x" * 4096)])) as endpoint:
            too_big_response = await small.execute(endpoint, request(), timeout=5)
            too_big_request = await small.execute(endpoint, request(text="x" * 4096), timeout=5)
    finally:
        await small.close()
    for outcome in (too_big_response, too_big_request):
        assert isinstance(outcome, Failure)
        assert (outcome.code, outcome.retryable) == ("AGENT_MESSAGE_TOO_LARGE", False)
        assert "larger than max" in outcome.message


# --------------------------------------------------------------------------- health, card


async def test_check_health(client: AgentClient) -> None:
    agent = Agent("healthy")

    @agent.task
    async def handler(task: Task) -> dict[str, Any]:
        return {}

    server = await agent.serve("127.0.0.1:0")
    try:
        assert await client.check_health(server.address)
        assert await client.check_health(server.address, service="podium.agent.v1.AgentService")
        assert not await client.check_health(server.address, service="no.such.Service")
        await server.health.enter_graceful_shutdown()
        assert not await client.check_health(server.address)
    finally:
        await server.stop(None)
    assert not await client.check_health(server.address, timeout=1)
    assert not await client.check_health(f"127.0.0.1:{free_port()}", timeout=1)


async def test_get_card(client: AgentClient) -> None:
    agent = Agent("carded", version="1.2", skills=[Skill("summarize")], max_concurrency=3)

    @agent.task
    async def handler(task: Task) -> dict[str, Any]:
        return {}

    async with serving(agent) as endpoint:
        card = await client.get_card(endpoint, timeout=5)
    assert (card.name, card.version, card.max_concurrency) == ("carded", "1.2", 3)
    assert [skill.id for skill in card.skills] == ["summarize"]
    with pytest.raises(AgentCallError) as info:
        await client.get_card(f"127.0.0.1:{free_port()}", timeout=5)
    assert (info.value.code, info.value.retryable, info.value.grpc_status) == (
        AGENT_UNAVAILABLE,
        True,
        "UNAVAILABLE",
    )


# --------------------------------------------------------------------------- structs


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"s": "x", "i": 3, "f": 2.5, "b": False, "n": None},
        {"deep": {"list": [1, [2, {"x": -7}], "y"], "big": 2**53, "neg": -0.5}},
    ],
)
def test_struct_round_trip_keeps_integers(value: dict[str, Any]) -> None:
    struct = struct_from_dict(value)
    assert isinstance(struct, struct_pb2.Struct)
    assert dict_from_struct(struct) == value
    assert all(type(dict_from_struct(struct)[k]) is type(v) for k, v in value.items())


def test_non_integral_and_huge_numbers_stay_floats() -> None:
    struct = struct_from_dict({"huge": 2.0**60, "inf": float("inf"), "half": 0.5})
    out = dict_from_struct(struct)
    assert type(out["huge"]) is float and type(out["inf"]) is float and out["half"] == 0.5
