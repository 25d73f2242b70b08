"""A primary failover while runs are in flight: a real primary streaming synchronously
to a real standby (``pg_basebackup``), Podium on a multi-host URL with
``target_session_attrs=read-write``; the primary crashes, the standby is promoted, and
every run finishes with nothing lost and nothing completed twice."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1 import run_pb2
from tests.integration.conftest import StartServer, static_agents
from tests.integration.pg_cluster import Cluster, bin_dir, workdir
from tests.integration.runs_helpers import create_definition, get_run, start_run

RUNS = 24
STEPS = ("a", "b", "c")
TERMINAL = (run_pb2.Run.STATE_SUCCEEDED, run_pb2.Run.STATE_FAILED, run_pb2.Run.STATE_CANCELLED)


@dataclass
class Pair:
    primary: Cluster
    standby: Cluster

    def url(self, database: str) -> str:
        """Both hosts; only a read-write server is accepted."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"


@pytest.fixture
def pair() -> Iterator[Pair]:
    bin_dir()
    root = workdir("podium-failover-")
    primary = Cluster.primary(root)
    # Synchronous: a commit returns once the standby has it, so a promoted standby
    # holds every commit Podium saw succeed.
    primary.configure(synchronous_standby_names="*")
    standby: Cluster | None = None
    try:
        primary.start()
        standby = primary.standby(root)
        # The copy inherits the primary's settings; once promoted it has no standby.
        standby.configure(synchronous_standby_names="")
        standby.start()
        yield Pair(primary, standby)
    finally:
        for cluster in (standby, primary):
            if cluster is not None:
                cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _get(stub: pb_grpc.OrchestrationServiceAsyncStub, run_id: str) -> run_pb2.Run | None:
    """GetRun, or None while the database is away (UNAVAILABLE)."""
    try:
        return await get_run(stub, run_id)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return None


@pytest.mark.timeout(240)
async def test_runs_survive_a_primary_failover(
    pair: Pair, start_server: StartServer, example_agents: ExampleAgents
) -> None:
    admin = await asyncpg.connect(pair.primary.url())
    await admin.execute("CREATE DATABASE podium")
    await admin.close()
    url = pair.url("podium")
    server = await start_server(
        database_url=url, agents=static_agents(example_agents, "sleeper", "echo")
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub,
            "failover",
            [
                {"id": "a", "agent": "sleeper", "input": {"seconds": 0.4}},
                {"id": "b", "agent": "echo", "depends_on": ["a"], "input": {"i": "${run.input.i}"}},
                {"id": "c", "agent": "sleeper", "depends_on": ["b"], "input": {"seconds": 0.4}},
            ],
        )
        # Runs start before, during and after the outage (a StartRun refused while the
        # database is away is retried with its request_id: one run each), so the crash
        # finds runs done, mid-step and queued.
        ids: list[str] = []
        half_started = asyncio.Event()

        async def start_all() -> None:
            for i in range(RUNS):
                while True:
                    try:
                        response = await start_run(
                            stub, "failover", input={"i": i}, request_id=f"failover-{i}"
                        )
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                        await asyncio.sleep(0.2)
                ids.append(response.run.id)
                if len(ids) == RUNS // 2:
                    half_started.set()
                await asyncio.sleep(0.1)

        starting = asyncio.create_task(start_all())
        await half_started.wait()
        at_crash = [run_pb2.Run.State.Name((await get_run(stub, r)).state) for r in ids]
        pair.primary.crash()
        crashed = time.monotonic()
        await asyncio.sleep(1.0)  # operators (or Patroni) take a moment to decide
        pair.standby.promote()
        promoted = time.monotonic()
        await starting
        assert len(set(ids)) == RUNS

        finished: dict[str, run_pb2.Run] = {}
        deadline = time.monotonic() + 120
        while len(finished) < RUNS and time.monotonic() < deadline:
            for run_id in ids:
                if run_id not in finished:
                    run = await _get(stub, run_id)
                    if run is not None and run.state in TERMINAL:
                        finished[run_id] = run
            await asyncio.sleep(0.1)
        recovered = time.monotonic()
    states = {run_id: run_pb2.Run.State.Name(run.state) for run_id, run in finished.items()}
    assert len(finished) == RUNS, f"runs not finished 120 s after the promotion: {states}"
    assert set(states.values()) == {"STATE_SUCCEEDED"}, states

    conn = await asyncpg.connect(pair.standby.url("podium"))
    try:
        # Nothing completed twice, nothing lost: one step.completed per step; each run's
        # event log has no gap.
        completed = await conn.fetch(
            "SELECT run_id::text, step_id, count(*) AS n FROM orchestration_events"
            " WHERE type = 'step.completed' GROUP BY 1, 2"
        )
        assert sorted((r["run_id"], r["step_id"], r["n"]) for r in completed) == sorted(
            (run_id, step, 1) for run_id in ids for step in STEPS
        )
        gaps = await conn.fetchval(
            "SELECT count(*) FROM (SELECT run_id, max(sequence) AS top, count(*) AS n"
            " FROM orchestration_events GROUP BY run_id) s WHERE top <> n"
        )
        assert gaps == 0
    finally:
        await conn.close()
    print(
        f"\nfailover: runs at the crash {dict(Counter(at_crash))};"
        f" promoted {promoted - crashed:.1f} s after the crash; all {RUNS} runs"
        f" finished {recovered - promoted:.1f} s after the promotion"
    )
