"""The hot path's cost per step, in units the machine's load does not change.

Run ``.venv/bin/python bench/hotpath.py [--database-url URL] [--runs N]``; it prints
ONE JSON document on stdout (progress on stderr). Wall-clock figures on a shared machine
move by 2x from one run to the next; these do not (much):

- ``commits_per_step``: ``xact_commit`` of the benchmark database (``pg_stat_database``)
  over the workload, per completed step. Nothing else uses the database: completion is
  detected in process (the scheduler's ``completed_total``), not by polling it. Backends
  publish their counters when idle at most once a second, so before each reading the
  script waits 1.1 s and has every pooled connection run ``SELECT 1`` (those commits are
  subtracted); the engine's timers (sweep, leases: ~3 commits/s) are included.
- ``round_trips_per_step``: statements the engine's asyncpg connections sent (each
  ``execute`` / ``fetch*`` call and each ``BEGIN`` / ``COMMIT`` is one round trip).
- ``engine_cpu_ms_per_step`` / ``postgres_cpu_ms_per_step``: CPU time of this process
  (server and driver) and of the database's backends, per step (the CPU clock ticks
  every 10 ms: use enough steps).

Workloads (each on the no-op agent in a child process, as in ``bench/engine.py``):
``chain``: runs of 10 sequential steps, one run at a time (the W1 shape);
``fanout``: one run of 1 -> 200 -> 1 steps with ``max_parallel`` 64;
``many``: 50 runs of 10 sequential steps started at once (the W2 shape).

``--held N``: before the workloads, N + 1 runs of another share (priority 1, one step
on agent ``held``, the example ``sleeper`` agent in a child process, registered with
``max=1``): the first sleeps for the whole benchmark, the other N stay queued behind
its agent's limit, as another team's backlog would on a shared deployment. The
workloads then show what those waiting runs cost everyone else's steps. ``--slots``
sets the replica's worker slots (100): with 16, ``many`` keeps them all busy, so the
eager claims take turns with other shares (the claim over every run).

The script imports Podium from the interpreter running it, so the same file measures
another checkout: ``/path/to/other/.venv/bin/python bench/hotpath.py``. ``--uvloop``
runs the server on uvloop, as ``podium serve`` does by default (``PODIUM_EVENT_LOOP``;
without the flag, on asyncio's loop, which every checkout has).

Commits and round trips: every engine statement is one autocommit transaction, so
commits per step are the round trips per step plus the replica's timers; a reading of
``commits_per_step`` well above ``round_trips_per_step`` is stats lag (rerun).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import grpc

from bench.harness.agent import AgentProcess, ExampleAgentsProcess
from bench.harness.common import CHANNEL_OPTIONS, DEFAULT_SERVER_URL, progress
from bench.harness.cpu import CpuMeter
from bench.harness.postgres import PgStats
from bench.harness.server import (
    create_database,
    drop_database,
    machine_info,
    podium_server,
    podium_settings,
)
from podium.orchestration.v1 import definition_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc


class RoundTrips:
    """Counts the statements asyncpg connections send (one round trip each)."""

    def __init__(self) -> None:
        self.count = 0
        cls = asyncpg.connection.Connection
        for name in ("execute", "_execute", "_executemany"):
            original = getattr(cls, name)
            setattr(cls, name, self._wrap(original))

    def _wrap(self, original: Any) -> Any:
        async def wrapped(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(conn, *args, **kwargs)

        return wrapped


def chain_plan(name: str, steps: int) -> definition_pb2.Definition:
    plan = definition_pb2.Definition(name=name)
    plan.execution.concurrency.max_parallel = 8
    previous = None
    for i in range(steps):
        step = plan.steps.add(id=f"s{i}", agent="noop")
        if previous is None:
            step.input.update({"n": "${run.input.n}"})
        else:
            step.depends_on.append(previous)
            step.input.update({"prev": f"${{steps.{previous}.output}}"})
        previous = step.id
    return plan


def fanout_plan(name: str, middle: int, max_parallel: int) -> definition_pb2.Definition:
    plan = definition_pb2.Definition(name=name)
    plan.execution.concurrency.max_parallel = max_parallel
    plan.steps.add(id="root", agent="noop").input.update({"n": "${run.input.n}"})
    ids = [f"m{i}" for i in range(middle)]
    for step_id in ids:
        plan.steps.add(id=step_id, agent="noop", depends_on=["root"])
    plan.steps.add(id="sink", agent="noop", depends_on=ids)
    return plan


def held_plan(name: str) -> definition_pb2.Definition:
    """One step on agent ``held`` that sleeps an hour, at priority 1 (its own share)."""
    plan = definition_pb2.Definition(name=name)
    plan.execution.priority = 1
    plan.steps.add(id="wait", agent="held").input.update({"seconds": 3600})
    return plan


async def hold(stub: Any, ref: Any, queued: int, scheduler: Any) -> None:
    """Start ``queued`` + 1 runs of ``ref``: one runs (the agent's only slot), the rest
    stay queued behind it."""
    request = pb.StartRunRequest(definition=ref, start=True)
    for _ in range(queued + 1):
        await stub.StartRun(request)
    deadline = time.monotonic() + 60
    while scheduler.active_steps < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the held agent's first step did not start")
        await asyncio.sleep(0.01)
    progress(f"held: {queued} run(s) queued behind agent held's max_concurrency 1")


async def wait_completed(scheduler: Any, target: int, limit_seconds: float = 300.0) -> None:
    deadline = time.monotonic() + limit_seconds
    while scheduler.completed_total < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{scheduler.completed_total} of {target} steps completed")
        await asyncio.sleep(0.001)


async def commits(admin: asyncpg.Connection[Any], dbname: str, pool: Any) -> int:
    """``xact_commit`` of ``dbname`` once every pooled backend published its counters,
    minus the commits this costs."""
    await asyncio.sleep(1.1)
    held = [await pool.acquire() for _ in range(pool.get_size())]
    try:
        for conn in held:
            await conn.fetchval("SELECT 1")
    finally:
        for conn in held:
            await pool.release(conn)
    await asyncio.sleep(0.3)
    count = await admin.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", dbname
    )
    return int(count) - len(held)


async def measure(
    name: str,
    stub: Any,
    ref: Any,
    runs: int,
    steps_per_run: int,
    *,
    at_once: bool,
    scheduler: Any,
    meter: CpuMeter,
    pgstats: PgStats,
    trips: RoundTrips,
    admin: asyncpg.Connection[Any],
    dbname: str,
    pool: Any,
) -> dict[str, Any]:
    steps = runs * steps_per_run
    progress(f"{name}: {runs} run(s) x {steps_per_run} steps")
    stats0 = await pgstats.snapshot()
    commits0 = await commits(admin, dbname, pool)
    cpu0 = await meter.snapshot()
    trips0 = trips.count
    started = time.perf_counter()
    base = scheduler.completed_total
    request = pb.StartRunRequest(definition=ref, start=True)
    request.input.update({"n": 1})
    if at_once:
        await asyncio.gather(*(stub.StartRun(request) for _ in range(runs)))
        await wait_completed(scheduler, base + steps)
    else:
        for i in range(runs):
            await stub.StartRun(request)
            await wait_completed(scheduler, base + (i + 1) * steps_per_run)
    wall = time.perf_counter() - started
    round_trips = trips.count - trips0
    cpu = CpuMeter.delta(cpu0, await meter.snapshot(), steps)
    committed = await commits(admin, dbname, pool) - commits0
    stats = PgStats.delta(stats0, await pgstats.snapshot(), steps)
    out = {
        "steps": steps,
        "commits_per_step": round(committed / steps, 3),
        "round_trips_per_step": round(round_trips / steps, 3),
        "engine_cpu_ms_per_step": cpu["engine_process_cpu_ms_per_step"],
        "postgres_cpu_ms_per_step": cpu["postgres_backends_cpu_ms_per_step"],
        "agent_cpu_ms_per_step": cpu["agent_process_cpu_ms_per_step"],
        "rows_fetched_per_step": stats["rows_fetched_per_step"],
        "buffer_hits_per_step": stats["buffer_hits_per_step"],
        "wall_ms_per_step_load_dependent": round(1000 * wall / steps, 3),
        "functions": {k: v["calls_per_step"] for k, v in stats["functions"].items()},
    }
    progress(f"{name}: {json.dumps({k: v for k, v in out.items() if k != 'functions'})}")
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_SERVER_URL)
    parser.add_argument("--runs", type=int, default=30, help="chain runs (one at a time)")
    parser.add_argument("--parts", default="chain,fanout,many")
    parser.add_argument(
        "--held", type=int, default=0, help="runs of another share queued behind a limit"
    )
    parser.add_argument(
        "--slots", type=int, default=100, help="the replica's worker slots (fewer: contended)"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    trips = RoundTrips()
    admin = await asyncpg.connect(args.database_url)
    agent = await AgentProcess.start()
    sleeper = await ExampleAgentsProcess.start() if args.held > 0 else None
    agents = f"noop={agent.address}"
    if sleeper is not None:
        agents += f",held={sleeper.addresses['sleeper']};max=1"
    out: dict[str, Any] = {"machine": await machine_info(admin), "held": args.held}
    dbname, dsn = await create_database(admin, args.database_url)
    await admin.execute(f"ALTER DATABASE \"{dbname}\" SET track_functions = 'pl'")
    server = podium_server(
        podium_settings(dsn, agents, default_max_parallel=8, worker_slots=args.slots)
    )
    try:
        await server.start()
        scheduler = server.engine.scheduler
        stats_conn = await asyncpg.connect(dsn)
        pgstats = PgStats(stats_conn, server.engine.db.pool)
        meter = CpuMeter(agent, admin, dbname)
        async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)

            async def define(plan: definition_pb2.Definition) -> pb.DefinitionRef:
                made = await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=plan))
                return pb.DefinitionRef(name=made.definition.name, version=made.definition.version)

            chain = await define(chain_plan("hot-chain", 10))
            fan = await define(fanout_plan("hot-fanout", 200, 64))
            common = {
                "scheduler": scheduler,
                "meter": meter,
                "pgstats": pgstats,
                "trips": trips,
                "admin": admin,
                "dbname": dbname,
                "pool": server.engine.db.pool,
            }
            if args.held > 0:
                await hold(stub, await define(held_plan("hot-held")), args.held, scheduler)
            await measure("warm-up", stub, chain, 3, 10, at_once=False, **common)
            results: dict[str, Any] = {}
            if "chain" in parts:
                results["chain"] = await measure(
                    "chain", stub, chain, args.runs, 10, at_once=False, **common
                )
            if "fanout" in parts:
                results["fanout"] = await measure(
                    "fanout", stub, fan, 1, 202, at_once=True, **common
                )
            if "many" in parts:
                results["many"] = await measure("many", stub, chain, 50, 10, at_once=True, **common)
            out["results"] = results
        await stats_conn.close()
    finally:
        await server.stop()
        await agent.stop()
        if sleeper is not None:
            await sleeper.stop()
        await drop_database(admin, dbname)
        await admin.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    if "--uvloop" in sys.argv:  # the server's event loop on uvloop
        sys.argv.remove("--uvloop")
        importlib.import_module("uvloop").install()
    asyncio.run(main())
