"""Podium as an A2A agent: a2a-sdk's own client against a real Podium server, over the
gRPC binding (``lf.a2a.v1.A2AService`` on the gRPC port) and the JSON-RPC binding
(``PODIUM_A2A_HTTP_ADDRESS``), and a Podium run whose step calls a second Podium
definition over A2A (Podium registered as an A2A agent of itself)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.errors import (
    InvalidParamsError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf import json_format, struct_pb2

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import agent_pb2 as agent_resource_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1.run_pb2 import Run
from podium.server.app import PodiumServer
from tests.integration.conftest import StartServer, bearer_channel, static_agents
from tests.integration.runs_helpers import (
    create_definition,
    get_run,
    plain,
    start_run,
    step_of,
    wait_for_run,
)

Stub = Any


@dataclass
class Podium:
    server: PodiumServer
    key: str
    stub: Stub
    """OrchestrationService, with the admin key."""


@pytest.fixture
async def podium(start_server: StartServer, example_agents: ExampleAgents) -> AsyncIterator[Podium]:
    """A server with authentication on, A2A JSON-RPC on a free port, and three
    definitions: ``greet`` (one echo step), ``gated`` (a checkpoint before it) and
    ``old`` (archived)."""
    server = await start_server(
        auth="required",
        agents=static_agents(example_agents, "echo"),
        a2a_http_address="127.0.0.1:0",
    )
    key = (await server.engine.api_keys.create("default", "admin", "a2a")).key
    async with bearer_channel(server.address, key) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub, "greet", [{"id": "say", "agent": "echo", "input": {"who": "${run.input.who}"}}]
        )
        gated = {"id": "say", "agent": "echo", "input": {"n": 1}}
        gated["checkpoint"] = {"when": "WHEN_BEFORE", "prompt": "go ahead?"}
        await create_definition(stub, "gated", [gated])
        await create_definition(stub, "old", [{"id": "s", "agent": "echo"}])
        await stub.ArchiveDefinition(pb.ArchiveDefinitionRequest(name="old"))
        yield Podium(server, key, stub)


def message(
    parts: dict[str, Any] | str | None = None,
    *,
    task_id: str = "",
    context_id: str = "",
    **podium: Any,
) -> a2a_pb2.SendMessageRequest:
    """A user message: ``parts`` as a data part (a dict) or a text part (a str), the
    keyword arguments under the metadata key ``podium``."""
    msg = a2a_pb2.Message(
        message_id=str(uuid.uuid4()),
        role=a2a_pb2.ROLE_USER,
        task_id=task_id,
        context_id=context_id,
    )
    if isinstance(parts, str):
        msg.parts.append(a2a_pb2.Part(text=parts))
    elif parts is not None:
        value = struct_pb2.Value()
        value.struct_value.SetInParent()  # {} too
        value.struct_value.update(parts)
        msg.parts.append(a2a_pb2.Part(data=value, media_type="application/json"))
    if podium:
        msg.metadata.update({"podium": podium})
    return a2a_pb2.SendMessageRequest(message=msg)


async def collect(stream: AsyncIterator[a2a_pb2.StreamResponse]) -> list[a2a_pb2.StreamResponse]:
    return [event async for event in stream]


def states(events: list[a2a_pb2.StreamResponse]) -> list[str]:
    """The task states a stream went through, in order, without repeats."""
    out: list[str] = []
    for event in events:
        kind = event.WhichOneof("payload")
        if kind == "task":
            state = event.task.status.state
        elif kind == "status_update":
            state = event.status_update.status.state
        else:
            continue
        name = a2a_pb2.TaskState.Name(state).removeprefix("TASK_STATE_")
        if not out or out[-1] != name:
            out.append(name)
    return out


def output_of(task: a2a_pb2.Task) -> dict[str, Any]:
    (artifact,) = task.artifacts
    (part,) = artifact.parts
    return plain(part.data.struct_value)


async def grpc_client(podium: Podium) -> tuple[Client, a2a_pb2.AgentCard]:
    """a2a-sdk's client over the gRPC binding, from the extended card (the key on the
    channel)."""
    async with bearer_channel(podium.server.address, podium.key) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        card = await stub.GetExtendedAgentCard(a2a_pb2.GetExtendedAgentCardRequest())
    config = ClientConfig(
        grpc_channel_factory=lambda url: bearer_channel(url, podium.key),
        supported_protocol_bindings=["GRPC"],
    )
    return ClientFactory(config).create(card), card


async def test_grpc_binding_runs_definitions_as_tasks(podium: Podium) -> None:
    client, card = await grpc_client(podium)
    try:
        # The card: one skill per non-archived definition, both bindings.
        assert sorted(skill.id for skill in card.skills) == ["gated", "greet"]
        bindings = {i.protocol_binding: i.url for i in card.supported_interfaces}
        assert bindings["GRPC"] == podium.server.address
        assert podium.server.a2a_gateway is not None
        assert bindings["JSONRPC"] == podium.server.a2a_gateway.url
        assert card.capabilities.streaming and card.capabilities.extended_agent_card

        # SendStreamingMessage: a run from the data part; updates from its event log.
        context = f"ctx-{uuid.uuid4()}"
        events = await collect(
            client.send_message(message({"who": "ada"}, context_id=context, definition="greet"))
        )
        assert events[0].WhichOneof("payload") == "task"
        task_id = events[0].task.id
        assert states(events)[-1] == "COMPLETED", states(events)
        sequences = [
            plain(e.status_update.metadata)["podium"]["sequence"]
            for e in events
            if e.WhichOneof("payload") == "status_update"
        ]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        artifacts = [
            e.artifact_update for e in events if e.WhichOneof("payload") == "artifact_update"
        ]
        run = await get_run(podium.stub, task_id)  # task id = run id
        assert run.state == Run.STATE_SUCCEEDED and run.definition_name == "greet"
        assert plain(step_of(run, "say").input) == {"who": "ada"}
        assert len(artifacts) == 1
        assert plain(artifacts[0].artifact.parts[0].data.struct_value) == plain(run.output)

        # GetTask and ListTasks map onto the run.
        task = await client.get_task(a2a_pb2.GetTaskRequest(id=task_id))
        assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED and task.context_id == context
        assert output_of(task) == plain(run.output)
        listed = await client.list_tasks(a2a_pb2.ListTasksRequest(context_id=context))
        assert [t.id for t in listed.tasks] == [task_id]
        done = await client.list_tasks(
            a2a_pb2.ListTasksRequest(status=a2a_pb2.TASK_STATE_COMPLETED)
        )
        assert task_id in [t.id for t in done.tasks]

        # A text part is the input {"text": ...}; the skill id names the definition.
        # greet needs input.who: the run fails, and so does the task, with the error.
        events = await collect(client.send_message(message("hello", skill="greet")))
        run = await get_run(podium.stub, events[0].task.id)
        assert plain(run.input) == {"text": "hello"} and states(events)[-1] == "FAILED"
        # A run that failed before the first snapshot ends the stream with that task.
        last = events[-1]
        kind = last.WhichOneof("payload")
        failed = (last.task if kind == "task" else last.status_update).status.message
        assert failed.parts[0].text == run.error.message
        assert failed.metadata["code"] == run.error.code

        # Bad input: A2A errors, never INTERNAL.
        with pytest.raises(TaskNotFoundError):
            await client.get_task(a2a_pb2.GetTaskRequest(id=str(uuid.uuid4())))
        with pytest.raises(TaskNotFoundError):
            await client.get_task(a2a_pb2.GetTaskRequest(id="not-a-run"))
        with pytest.raises(InvalidParamsError) as caught:
            await collect(client.send_message(message({"who": "x"})))
        assert caught.value.data is not None
        assert caught.value.data["errors"][0]["field"] == "message.metadata.podium.definition"
        with pytest.raises(InvalidParamsError) as caught:
            await collect(client.send_message(message({"who": "x"}, definition="old")))
        assert "old" in caught.value.message
        with pytest.raises(TaskNotFoundError):
            await collect(client.send_message(message({}, task_id=str(uuid.uuid4()))))
    finally:
        await client.close()


async def test_input_required_is_answered_by_the_next_message(podium: Podium) -> None:
    client, _ = await grpc_client(podium)
    try:
        events = await collect(client.send_message(message({}, definition="gated")))
        assert states(events)[-1] == "INPUT_REQUIRED", states(events)
        # A run that paused before the first snapshot ends the stream with that task.
        end = events[-1]
        kind = end.WhichOneof("payload")
        last = (end.task if kind == "task" else end.status_update).status.message
        assert last.parts[0].text == "go ahead?"
        question = plain(last.parts[1].data.struct_value)
        assert question["approvals"][0]["step_id"] == "say"
        task_id = events[0].task.id
        got = await client.get_task(a2a_pb2.GetTaskRequest(id=task_id))
        assert got.status.state == a2a_pb2.TASK_STATE_INPUT_REQUIRED

        # A bad decision is a field violation; the approval stays pending.
        with pytest.raises(InvalidParamsError) as caught:
            await collect(client.send_message(message({}, task_id=task_id, decision="maybe")))
        assert caught.value.data is not None
        assert caught.value.data["errors"][0]["field"] == "message.metadata.podium.decision"

        # The answer: approve with more input; the stream follows the run to its end.
        events = await collect(client.send_message(message({"more": 2}, task_id=task_id)))
        assert states(events)[-1] == "COMPLETED", states(events)
        run = await get_run(podium.stub, task_id)
        assert run.state == Run.STATE_SUCCEEDED
        assert plain(step_of(run, "say").input) == {"n": 1, "more": 2}  # merged by the approval

        # Reject: the run fails, the task is FAILED.
        events = await collect(client.send_message(message({}, definition="gated")))
        rejected = await collect(
            client.send_message(message({}, task_id=events[0].task.id, decision="reject"))
        )
        assert states(rejected)[-1] == "FAILED", states(rejected)
    finally:
        await client.close()


async def test_create_continue_cancel_resume_and_subscribe(podium: Podium) -> None:
    client, _ = await grpc_client(podium)
    try:
        # create: the run waits (SUBMITTED); the next message starts it.
        events = await collect(
            client.send_message(message({"who": "bo"}, definition="greet", mode="create"))
        )
        assert states(events) == ["SUBMITTED"]
        task_id = events[0].task.id
        assert (await get_run(podium.stub, task_id)).state == Run.STATE_CREATED
        events = await collect(client.send_message(message({"who": "cy"}, task_id=task_id)))
        assert states(events)[-1] == "COMPLETED"

        # CancelTask cancels the run; a finished one is not cancelable.
        events = await collect(client.send_message(message({}, definition="gated")))
        cancelled = await client.cancel_task(a2a_pb2.CancelTaskRequest(id=events[0].task.id))
        assert cancelled.status.state == a2a_pb2.TASK_STATE_CANCELED
        assert (await get_run(podium.stub, cancelled.id)).state == Run.STATE_CANCELLED
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(a2a_pb2.CancelTaskRequest(id=task_id))

        # resume: the cancelled run runs again (its checkpoint asks again).
        events = await collect(
            client.send_message(message({}, task_id=cancelled.id, mode="resume"))
        )
        assert states(events)[-1] == "INPUT_REQUIRED", states(events)

        # SubscribeToTask: the task as it is, then its updates to the end.
        started = await start_run(podium.stub, "greet", input={"who": "dee"}, start=False)
        run_id = started.run.id
        subscription = client.subscribe(a2a_pb2.SubscribeToTaskRequest(id=run_id))
        first = await anext(subscription)
        assert first.task.id == run_id and first.task.status.state == a2a_pb2.TASK_STATE_SUBMITTED
        await podium.stub.ContinueRun(pb.ContinueRunRequest(run_id=run_id))
        rest = await collect(subscription)
        assert states([first, *rest])[-1] == "COMPLETED"
        # A finished task has nothing to subscribe to.
        with pytest.raises(UnsupportedOperationError):
            await collect(client.subscribe(a2a_pb2.SubscribeToTaskRequest(id=run_id)))
    finally:
        await client.close()


async def test_subscribe_on_another_replica_is_lossless(
    podium: Podium, start_server: StartServer, example_agents: ExampleAgents
) -> None:
    # A second replica on the same database: the task is its run, wherever it runs.
    other = await start_server(auth="required", agents=static_agents(example_agents, "echo"))
    client, _ = await grpc_client(podium)
    async with bearer_channel(other.address, podium.key) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            (created,) = await collect(
                client.send_message(message({"who": "hal"}, definition="greet", mode="create"))
            )
            subscription = stub.SubscribeToTask(a2a_pb2.SubscribeToTaskRequest(id=created.task.id))
            first = await subscription.read()
            snapshot = plain(first.task.metadata)["podium"]["last_event_sequence"]
            # Continued on the first replica, followed on the second.
            await collect(client.send_message(message({}, task_id=created.task.id)))
            rest = [response async for response in subscription]
        finally:
            await client.close()
    seen = [
        plain(r.status_update.metadata)["podium"]["sequence"]
        for r in rest
        if r.WhichOneof("payload") == "status_update"
    ]
    log = await podium.stub.ListRunEvents(pb.ListRunEventsRequest(run_id=created.task.id))
    assert seen == [e.sequence for e in log.events if e.sequence > snapshot]
    assert states([first, *rest])[-1] == "COMPLETED"


async def test_an_agent_key_starts_tasks_but_does_not_decide_them(podium: Podium) -> None:
    agent_key = (await podium.server.engine.api_keys.create("default", "agent", "a")).key
    async with bearer_channel(podium.server.address, agent_key) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        started = await stub.SendMessage(message({}, definition="gated"))
        assert started.task.status.state == a2a_pb2.TASK_STATE_INPUT_REQUIRED
        for request in (
            message({}, task_id=started.task.id),
            message({}, task_id=started.task.id, mode="resume"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendMessage(request)
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CancelTask(a2a_pb2.CancelTaskRequest(id=started.task.id))
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    run = await get_run(podium.stub, started.task.id)
    assert run.state == Run.STATE_PAUSED


async def test_task_streams_count_against_the_connections_stream_limit(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(
        agents=static_agents(example_agents, "echo"), max_streams_per_connection=1
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        orchestration = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(orchestration, "greet", [{"id": "s", "agent": "echo"}])
        created = await start_run(orchestration, "greet", start=False)
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        held = stub.SubscribeToTask(a2a_pb2.SubscribeToTaskRequest(id=created.run.id))
        assert (await held.read()).task.status.state == a2a_pb2.TASK_STATE_SUBMITTED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in orchestration.WatchRun(pb.WatchRunRequest(run_id=created.run.id)):
                pass
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        held.cancel()


async def test_jsonrpc_binding(podium: Podium) -> None:
    assert podium.server.a2a_gateway is not None
    url = podium.server.a2a_gateway.url
    headers = {"Authorization": f"Bearer {podium.key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        card = await A2ACardResolver(http, url).get_agent_card()
        assert sorted(skill.id for skill in card.skills) == ["gated", "greet"]
        config = ClientConfig(httpx_client=http, supported_protocol_bindings=["JSONRPC"])
        client = ClientFactory(config).create(card)
        events = await collect(client.send_message(message({"who": "eve"}, definition="greet")))
        assert states(events)[-1] == "COMPLETED", states(events)
        task_id = events[0].task.id
        task = await client.get_task(a2a_pb2.GetTaskRequest(id=task_id))
        run = await get_run(podium.stub, task_id)
        assert output_of(task) == plain(run.output)
        with pytest.raises(TaskNotFoundError):
            await client.get_task(a2a_pb2.GetTaskRequest(id=str(uuid.uuid4())))
        with pytest.raises(InvalidParamsError):
            await collect(client.send_message(message({"who": "x"}, definition="nope")))
        # Non-streaming and blocking: SendMessage returns the finished task.
        blocking = ClientFactory(
            ClientConfig(
                httpx_client=http, streaming=False, supported_protocol_bindings=["JSONRPC"]
            )
        ).create(card)
        (only,) = await collect(blocking.send_message(message({"who": "fay"}, definition="greet")))
        assert only.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
        assert output_of(only.task) == {"say": {"echo": {"who": "fay"}}} or output_of(only.task)

    async with httpx.AsyncClient(timeout=30) as anonymous:
        # Without a key: the public card (no skills), and calls are refused with 401.
        public = (await anonymous.get(f"{url}.well-known/agent-card.json")).json()
        assert public["name"] == "Podium" and "skills" not in public
        assert public["capabilities"]["extendedAgentCard"] is True
        too_large = await anonymous.post(url, content=b"x" * (1024 * 1024 + 1))
        assert too_large.status_code == 413
        refused = await anonymous.post(
            url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "GetTask",
                "params": {"id": str(uuid.uuid4())},
            },
            headers={"A2A-Version": "1.0"},
        )
        assert refused.status_code == 401, refused.text


EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "python" / "a2a_client.py"


async def test_the_documented_example_runs(podium: Podium) -> None:
    assert podium.server.a2a_gateway is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        podium.server.a2a_gateway.url,
        "greet",
        '{"who": "gus"}',
        env={**os.environ, "PODIUM_API_KEY": podium.key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[0] == {"skills": ["gated", "greet"]}
    assert lines[-2]["state"] == "TASK_STATE_COMPLETED" and lines[-2]["podium"]["event"] == (
        "run.completed"
    )
    assert "gus" in json.dumps(lines[-1]["output"])


async def test_a_podium_step_calls_a_podium_definition_over_a2a(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    # Authentication off: Podium's A2A step client sends no key.
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub, "child", [{"id": "inner", "agent": "echo", "input": {"got": "${run.input.n}"}}]
        )
        await stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=agent_resource_pb2.Agent(
                    name="podium-itself",
                    endpoint=server.address,
                    protocol=agent_resource_pb2.Agent.PROTOCOL_A2A,
                    skills=["child"],
                )
            )
        )
        await create_definition(
            stub, "parent", [{"id": "call", "skill": "child", "input": {"n": "${run.input.n}"}}]
        )
        started = await start_run(stub, "parent", input={"n": 7})
        run = await wait_for_run(stub, started.run.id)
        assert run.state == Run.STATE_SUCCEEDED, json_format.MessageToDict(run)
        call = step_of(run, "call")
        # The step's output is the child run's output (the task's one data artifact).
        children = await stub.ListRuns(pb.ListRunsRequest(definition_name="child"))
        (child,) = children.runs
        child_run = await get_run(stub, child.id)
        assert child_run.state == Run.STATE_SUCCEEDED
        assert plain(call.output) == plain(child_run.output)
        assert plain(step_of(child_run, "inner").input) == {"got": 7}
        # The child's context is the step's conversation.
        assert child_run.labels["a2a.context_id"] == call.conversation_id
