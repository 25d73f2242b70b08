"""A step whose agent is unreachable waits for it (PODIUM_AGENT_WAIT_SECONDS, within the
attempt's timeout) instead of failing its attempt at once: an agent restart costs no
attempt, and the wait shows as the step's progress."""

from __future__ import annotations

import grpc
import pytest

from podium.client.agent import AgentServer
from podium.client.examples.agents import echo_agent
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1 import run_pb2
from tests.integration.conftest import StartServer
from tests.integration.pg_cluster import free_port
from tests.integration.runs_helpers import (
    all_events,
    create_definition,
    plain,
    start_run,
    step_of,
    wait_for_run,
    wait_until,
)


async def _definition(stub: pb_grpc.OrchestrationServiceAsyncStub) -> None:
    await create_definition(stub, "patient", [{"id": "e", "agent": "echo", "input": {"x": 1}}])


@pytest.mark.timeout(120)
async def test_a_step_waits_for_its_agent_to_come_back(start_server: StartServer) -> None:
    port = free_port()
    server = await start_server(agents=f"echo=127.0.0.1:{port};skills=echo")
    agent = echo_agent()
    serving: AgentServer | None = None
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _definition(stub)
        run_id = (await start_run(stub, "patient")).run.id

        async def waiting_reported() -> bool:
            events = await all_events(stub, run_id)
            return any("waiting for the agent" in e.progress.message for e in events)

        # The agent is not there: the step reports the wait and keeps its attempt.
        await wait_until(waiting_reported, "the wait reported as progress")
        try:
            serving = await agent.serve(f"127.0.0.1:{port}")
            run = await wait_for_run(stub, run_id)
        finally:
            if serving is not None:
                await serving.stop(0)
    assert run.state == run_pb2.Run.STATE_SUCCEEDED
    step = step_of(run, "e")
    assert step.attempt == 1
    assert plain(step.output) == {"echo": {"x": 1}}


async def test_an_agent_that_stays_away_fails_the_attempt_after_the_wait(
    start_server: StartServer,
) -> None:
    port = free_port()
    server = await start_server(agents=f"echo=127.0.0.1:{port};skills=echo", agent_wait_seconds=1.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _definition(stub)
        run = await wait_for_run(stub, (await start_run(stub, "patient")).run.id)
    assert run.state == run_pb2.Run.STATE_FAILED
    error = step_of(run, "e").error
    assert error.code == "AGENT_UNAVAILABLE"
    assert "was not reachable for 1 s" in error.message
