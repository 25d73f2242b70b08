"""The chaos suite: one fault per scenario while two replicas run a stream of runs, each
on a PostgreSQL of its own. For every scenario: 0 runs lost or stuck, 0 steps completed
twice, 0 event-log gaps (steps may be *executed* again after a fault: at least once is
the contract, and the agent's own log counts those re-executions). The stall column is
the longest time without any step completing, from the fault to the end.

``PODIUM_CHAOS_RUNS`` runs per scenario (20 in ``make test``; ``make chaos`` runs 200
and prints the table).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest

from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.chaos.conftest import OUTCOMES
from tests.chaos.harness import LEASE_SECONDS, World, world
from tests.integration.pg_cluster import bin_dir
from tests.integration.pgbouncer import pgbouncer_binary
from tests.integration.runs_helpers import start_run

RUNS = int(os.environ.get("PODIUM_CHAOS_RUNS", "20"))
START_SECONDS = max(3.0, RUNS / 50)


async def _replica_kill9(w: World) -> None:
    await asyncio.to_thread(w.replicas[1].kill)
    await asyncio.sleep(1.0)
    await w.restart_replica(1)


async def _postgres_crash(w: World) -> None:
    await asyncio.to_thread(w.primary.crash)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(w.primary.start)


async def _agent_kill9(w: World) -> None:
    w.worker.kill()  # its supervisor starts it again half a second later


async def _replica_sigstop(w: World) -> None:
    os.kill(w.replicas[1].pid, signal.SIGSTOP)
    await asyncio.sleep(LEASE_SECONDS * 2)
    os.kill(w.replicas[1].pid, signal.SIGCONT)


async def _pgbouncer_restart(w: World) -> None:
    assert w.bouncer is not None
    w.bouncer.kill()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(w.bouncer.start)


async def _primary_failover(w: World) -> None:
    assert w.standby is not None
    await asyncio.to_thread(w.primary.crash)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(w.standby.promote)


async def _poison_step(w: World) -> None:
    async with grpc.aio.insecure_channel(w.replicas[0].address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        w.poison_run = (await start_run(stub, "poison", request_id="poison")).run.id


Fault = Callable[[World], Awaitable[None]]
SCENARIOS: dict[str, tuple[Fault, dict[str, bool]]] = {
    "replica_kill9": (_replica_kill9, {}),
    "postgres_crash": (_postgres_crash, {}),
    "agent_kill9": (_agent_kill9, {}),
    "replica_sigstop": (_replica_sigstop, {}),
    "pgbouncer_restart": (_pgbouncer_restart, {"bouncer": True}),
    "primary_failover": (_primary_failover, {"standby": True}),
    "poison_step": (_poison_step, {"poison": True}),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_chaos(scenario: str) -> None:
    bin_dir()
    fault, options = SCENARIOS[scenario]
    if options.get("bouncer"):
        pgbouncer_binary()
    async with world(scenario, **options) as w:
        starting = asyncio.create_task(w.start_runs(RUNS, over_seconds=START_SECONDS))
        await asyncio.sleep(START_SECONDS / 3)
        fault_at = time.time()
        await fault(w)
        await starting
        await w.wait_finished(RUNS + (1 if options.get("poison") else 0), within=120)
        outcome = await w.outcome(scenario, fault_at)
    OUTCOMES.append(outcome)
    assert outcome.ok(), outcome
