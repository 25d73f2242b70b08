"""Podium behind a real PgBouncer in transaction pooling mode.

``PODIUM_DATABASE_POOL_MODE=transaction`` turns off named prepared statements on the
pooled URL, and ``PODIUM_DATABASE_DIRECT_URL`` carries what needs a session of its own
(LISTEN, the migrator's advisory lock). Without them the same setup answered INTERNAL
for most StartRuns (``prepared statement "__asyncpg_stmt_..." does not exist``), lost
its LISTEN connections and kept a second replica from ever serving.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1 import run_pb2
from podium.server.app import PodiumServer
from tests.integration.conftest import StartServer, static_agents
from tests.integration.pgbouncer import pgbouncer, pgbouncer_binary
from tests.integration.runs_helpers import (
    all_events,
    create_definition,
    event_summary,
    start_run,
    wait_for_run,
)

RUNS = 40


@pytest.fixture(autouse=True)
def _needs_pgbouncer() -> None:
    pgbouncer_binary()


async def _serve(start_server: StartServer, pooled: str, direct: str, agents: str) -> PodiumServer:
    return await start_server(
        database_url=pooled,
        database_direct_url=direct,
        database_pool_mode="transaction",
        agents=agents,
    )


@pytest.mark.timeout(180)
async def test_two_replicas_behind_a_transaction_pooler_run_everything(
    database_url: str, start_server: StartServer, example_agents: ExampleAgents
) -> None:
    agents = static_agents(example_agents, "echo")
    with pgbouncer(database_url, pool_mode="transaction", pool_size=8) as pooled:
        # Both replicas migrate (the second waits on the migrator's session lock, which
        # a pooled connection would have kept after the migrator returned it).
        servers = [await _serve(start_server, pooled, database_url, agents) for _ in range(2)]
        assert all(server.engine.watch.hub.listening for server in servers)
        async with (
            grpc.aio.insecure_channel(servers[0].address) as first,
            grpc.aio.insecure_channel(servers[1].address) as second,
        ):
            stubs = [pb_grpc.OrchestrationServiceStub(ch) for ch in (first, second)]
            await create_definition(
                stubs[0],
                "pooled",
                [
                    {"id": "a", "agent": "echo", "input": {"i": "${run.input.i}"}},
                    {"id": "b", "agent": "echo", "depends_on": ["a"], "input": {"x": 1}},
                    {"id": "c", "agent": "echo", "depends_on": ["b"], "input": {"x": 2}},
                ],
            )
            started = await asyncio.gather(
                *(start_run(stubs[i % 2], "pooled", input={"i": i}) for i in range(RUNS))
            )
            runs = await asyncio.gather(
                *(wait_for_run(stubs[i % 2], s.run.id) for i, s in enumerate(started))
            )
            assert [run.state for run in runs] == [run_pb2.Run.STATE_SUCCEEDED] * RUNS
            # The event log reads back whole through the pooler, from either replica.
            events = await all_events(stubs[1], runs[0].id)
            assert [t for t, step in event_summary(events) if step == "c"][-1] == ("step.completed")
            assert example_agents["echo"].stats.calls == 3 * RUNS
        for server in servers:  # before PgBouncer goes
            await server.stop(0)
