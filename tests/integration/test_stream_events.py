"""Agent progress and output chunks relayed as run events, coalesced."""

from __future__ import annotations

from typing import Any

import grpc

from podium.client.agent import Agent, Task
from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1.run_pb2 import Run
from tests.integration.conftest import StartServer, static_agents
from tests.integration.runs_helpers import all_events, event_type, plan, start_run, wait_for_run


async def test_progress_and_chunks_become_events_before_completion(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        inline = plan(
            [{"id": "sum", "agent": "summarizer", "input": {"text": "one two three four"}}]
        )
        run = (await start_run(stub, inline=inline)).run
        run = await wait_for_run(stub, run.id)
        assert run.state == Run.STATE_SUCCEEDED
        events = await all_events(stub, run.id)
    kinds = [event_type(e) for e in events]
    completed = kinds.index("step.completed")
    chunks = [e for e in events if event_type(e) == "step.output_chunk"]
    progress = [e for e in events if event_type(e) == "step.progress"]
    assert chunks and progress
    assert all(kinds.index(event_type(e)) < completed for e in chunks + progress)
    assert "".join(e.output_chunk.text for e in chunks) == "one two three four"
    assert progress[-1].progress.message == "done" and progress[-1].progress.fraction == 1.0
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert all(e.attempt == 1 and e.step_id == "sum" for e in chunks + progress)


async def test_a_chatty_agent_is_coalesced(start_server: StartServer) -> None:
    chatty = Agent("chatty")

    @chatty.task
    async def talk(task: Task) -> dict[str, Any]:
        for i in range(2000):
            await task.output_chunk(f"{i % 10}")
            await task.progress(f"chunk {i}", i / 2000)
        return {"said": 2000}

    agent_server = await chatty.serve()
    try:
        server = await start_server(agents=f"chatty={agent_server.address}")
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            run = (await start_run(stub, inline=plan([{"id": "talk", "agent": "chatty"}]))).run
            run = await wait_for_run(stub, run.id)
            assert run.state == Run.STATE_SUCCEEDED
            events = await all_events(stub, run.id)
    finally:
        await agent_server.stop(0)
    chunks = [e for e in events if event_type(e) == "step.output_chunk"]
    progress = [e for e in events if event_type(e) == "step.progress"]
    # 4,000 agent messages, far fewer events; no character lost.
    assert len(chunks) + len(progress) < 400
    assert "".join(e.output_chunk.text for e in chunks) == "".join(f"{i % 10}" for i in range(2000))
    assert progress[-1].progress.message == "chunk 1999"
