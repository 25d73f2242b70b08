"""Many watch streams on one connection: served up to a documented limit, refused
cleanly past it.

gRPC's server drops calls at random once more than 1,000 wait to be started (the
client sees CANCELLED, nothing is logged): a burst of 2,000 WatchRun streams on one
channel lost about 10% before their first event. The server now keeps a larger backlog
(PODIUM_MAX_PENDING_CALLS) and refuses a stream past PODIUM_MAX_STREAMS_PER_CONNECTION
with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.conftest import StartServer, static_agents
from tests.integration.rpc import error_details
from tests.integration.runs_helpers import RunEvent, plan, start_run

LIMIT = 5
BURST = 2000


async def _first_event(call: Any) -> RunEvent:
    response = await asyncio.wait_for(call.read(), 20)
    assert isinstance(response, pb.WatchRunResponse), response
    event: RunEvent = response.event
    return event


async def test_one_stream_past_the_limit_is_refused_with_resource_exhausted(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(
        agents=static_agents(example_agents, "echo"), max_streams_per_connection=LIMIT
    )
    async with (
        grpc.aio.insecure_channel(server.address) as channel,
        # Its own subchannel pool, else both channels share one connection.
        grpc.aio.insecure_channel(
            server.address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as other,
    ):
        stub = pb_grpc.OrchestrationServiceStub(channel)
        # A created run never ends: its streams stay open.
        run = (await start_run(stub, inline=plan([{"id": "a", "agent": "echo"}]), start=False)).run
        request = pb.WatchRunRequest(run_id=run.id)
        calls = [stub.WatchRun(request, timeout=30) for _ in range(LIMIT)]
        for call in calls:
            assert (await _first_event(call)).type == RunEvent.TYPE_RUN_CREATED

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _first_event(stub.WatchRun(request, timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info, _ = error_details(refused.value)
        assert info.reason == "TOO_MANY_STREAMS" and info.metadata["limit"] == str(LIMIT)
        # WatchRuns counts against the same limit.
        org = stub.WatchRuns(pb.WatchRunsRequest(), timeout=30)
        assert await org.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # Another connection has its own limit.
        elsewhere = pb_grpc.OrchestrationServiceStub(other).WatchRun(request, timeout=30)
        assert (await _first_event(elsewhere)).type == RunEvent.TYPE_RUN_CREATED
        elsewhere.cancel()

        # Closing a stream frees its place on the connection.
        calls[0].cancel()
        for _ in range(200):
            again = stub.WatchRun(request, timeout=30)
            try:
                assert (await _first_event(again)).type == RunEvent.TYPE_RUN_CREATED
                break
            except grpc.aio.AioRpcError as refusal:  # the cancel not yet seen by the server
                assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("a closed stream never freed its place")
        again.cancel()
        for call in calls[1:]:
            call.cancel()


async def test_a_burst_of_2000_streams_on_one_connection_is_served(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """Every stream of the burst gets its first event; none is dropped (default settings)."""
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        run = (await start_run(stub, inline=plan([{"id": "a", "agent": "echo"}]), start=False)).run
        calls = [stub.WatchRun(pb.WatchRunRequest(run_id=run.id), timeout=60) for _ in range(BURST)]
        try:
            outcomes = await asyncio.gather(
                *(asyncio.wait_for(call.read(), 60) for call in calls), return_exceptions=True
            )
            failures = [o for o in outcomes if not isinstance(o, pb.WatchRunResponse)]
            assert not failures, (len(failures), failures[:3])
            assert all(
                o.event.sequence == 1 for o in outcomes if isinstance(o, pb.WatchRunResponse)
            )
        finally:
            for call in calls:
                call.cancel()
