"""Step-output cache benchmark: dispatch overhead of a cache hit vs a miss.

Run ``.venv/bin/python bench/cache.py [--database-url URL] [--quick]``; it prints ONE
JSON document on stdout (progress on stderr). See ``bench/README.md``.

A real ``PodiumServer`` runs in this process on a fresh database, with the no-op agent
of ``bench/harness/agent.py`` in a child process (static agent ``noop``). Every run has one
step ``s`` (``agent: noop``, input ``{"n": "${run.input.n}"}``). Scenarios, each with
distinct inputs ``n`` unless said otherwise:

- ``off``: caching disabled (the engine's path without any cache code: the baseline);
- ``miss``: caching enabled, every input new: lookup (``lead``), agent call, store;
- ``hit_lru``: the inputs of ``miss`` again, on the replica that stored them (its LRU
  holds the outputs: the lookup transfers no output);
- ``hit_table``: the same inputs again with the LRU emptied first (as on another
  replica: the output comes from the ``step_cache`` table).

Each scenario runs twice: ``sequential`` (one run at a time: latency without queueing)
and ``concurrent`` (all runs started at once: throughput and CPU per step).
Figures are only comparable within one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import grpc

from bench.harness.agent import AgentProcess
from bench.harness.common import DEFAULT_SERVER_URL, latency_summary, progress
from bench.harness.cpu import CpuMeter
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

SCENARIOS = ("off", "miss", "hit_lru", "hit_table")


@dataclass(frozen=True)
class Sizes:
    """Runs per scenario and mode."""

    sequential_runs: int
    concurrent_runs: int


FULL = Sizes(sequential_runs=200, concurrent_runs=1000)
QUICK = Sizes(sequential_runs=40, concurrent_runs=200)


def _definition(name: str, caching: bool) -> definition_pb2.Definition:
    definition = definition_pb2.Definition(name=name)
    definition.execution.concurrency.max_parallel = 1
    definition.execution.caching.enabled = caching
    step = definition.steps.add(id="s", agent="noop")
    step.input.update({"n": "${run.input.n}"})
    return definition


async def _start(stub: pb_grpc.OrchestrationServiceAsyncStub, name: str, n: str) -> str:
    request = pb.StartRunRequest(start=True)
    request.definition.name = name
    request.input.update({"n": n})
    return (await stub.StartRun(request)).run.id


async def _wait(conn: asyncpg.Connection[Any], run_ids: list[str]) -> None:
    ids = list(run_ids)
    while True:
        left = await conn.fetchval(
            "SELECT count(*) FROM orchestration_runs WHERE id = ANY($1::uuid[])"
            " AND state NOT IN ('succeeded', 'failed', 'cancelled')",
            ids,
        )
        if left == 0:
            return
        await asyncio.sleep(0.01)


async def _analyse(conn: asyncpg.Connection[Any], run_ids: list[str]) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT run_id, type, extract(epoch FROM created_at)::float8 AS t"
        " FROM orchestration_events WHERE run_id = ANY($1::uuid[]) AND step_id = 's'",
        run_ids,
    )
    times: dict[Any, dict[str, float]] = {}
    for row in rows:
        times.setdefault(row["run_id"], {})[row["type"]] = row["t"]
    queued_to_completed = []
    started_to_completed = []
    for t in times.values():
        if "step.completed" in t:
            queued_to_completed.append(t["step.completed"] - t["step.queued"])
            started_to_completed.append(t["step.completed"] - t["step.started"])
    states = await conn.fetch(
        "SELECT cached, state, count(*) FROM orchestration_steps"
        " WHERE run_id = ANY($1::uuid[]) GROUP BY 1, 2",
        run_ids,
    )
    return {
        "steps": {f"{r['state']}{' cached' if r['cached'] else ''}": r["count"] for r in states},
        "latency": {
            "queued_to_completed": latency_summary(queued_to_completed),
            "started_to_completed": latency_summary(started_to_completed),
        },
    }


async def _scenario(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
    conn: asyncpg.Connection[Any],
    agent: AgentProcess,
    cpu: CpuMeter,
    *,
    name: str,
    inputs: list[str],
    concurrent: bool,
) -> dict[str, Any]:
    await agent.reset()
    before = await cpu.snapshot()
    started = time.perf_counter()
    run_ids: list[str] = []
    if concurrent:
        run_ids = list(await asyncio.gather(*(_start(stub, name, n) for n in inputs)))
        await _wait(conn, run_ids)
    else:
        for n in inputs:
            run_ids.append(await _start(stub, name, n))
            await _wait(conn, run_ids[-1:])
    wall = time.perf_counter() - started
    after = await cpu.snapshot()
    out = await _analyse(conn, run_ids)
    out["runs"] = len(run_ids)
    out["agent_calls"] = len(await agent.receipts())
    out["runs_per_s"] = round(len(run_ids) / wall, 1)
    cpu_delta = CpuMeter.delta(before, after, len(run_ids))
    out["cpu_ms_per_step"] = {
        key.removesuffix("_cpu_ms_per_step"): value
        for key, value in cpu_delta.items()
        if key.endswith("_cpu_ms_per_step")
    }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from podium.server.engine.lru import LRUCache

    sizes = QUICK if args.quick else FULL
    out: dict[str, Any] = {
        "benchmark": "podium step-output cache",
        "mode": "quick" if args.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sizes": asdict(sizes),
    }
    admin: asyncpg.Connection[Any] = await asyncpg.connect(args.database_url)
    agent = await AgentProcess.start()
    dbname: str | None = None
    server: Any = None
    try:
        out["machine"] = await machine_info(admin)
        dbname, dsn = await create_database(admin, args.database_url)
        progress(f"database {dbname}")
        settings = podium_settings(dsn, f"noop={agent.address}")
        server = podium_server(settings)
        await server.start()
        conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
        cpu = CpuMeter(agent, admin, dbname)
        results: dict[str, dict[str, Any]] = {}
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            for name, caching in (("off", False), ("cached", True)):
                await stub.CreateDefinition(
                    pb.CreateDefinitionRequest(definition=_definition(name, caching))
                )
            for mode, count in (
                ("sequential", sizes.sequential_runs),
                ("concurrent", sizes.concurrent_runs),
            ):
                inputs = [f"{mode}-{i}" for i in range(count)]
                for scenario in SCENARIOS:
                    if scenario == "hit_table":
                        # Another replica's view: no in-process copies.
                        engine = server.engine
                        engine.step_cache.lru = LRUCache(settings.cache_max_step_outputs)
                    progress(f"{mode} {scenario}: {count} runs")
                    definition = "off" if scenario == "off" else "cached"
                    results.setdefault(scenario, {})[mode] = await _scenario(
                        stub,
                        conn,
                        agent,
                        cpu,
                        name=definition,
                        inputs=inputs,
                        concurrent=mode == "concurrent",
                    )
        await conn.close()
        out["scenarios"] = results
        out["summary"] = _summary(results)
    finally:
        if server is not None:
            await server.stop(0)
        await agent.stop()
        if dbname is not None:
            await drop_database(admin, dbname)
        await admin.close()
    return out


def _summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Headline figures: per scenario, the sequential p50 from step.started to
    step.completed (the dispatch path: claim commit -> lookup/agent -> completion
    commit), concurrent runs/s and engine CPU per step."""
    out: dict[str, Any] = {}
    for scenario, modes in results.items():
        seq = modes["sequential"]
        con = modes["concurrent"]
        out[scenario] = {
            "sequential_started_to_completed_p50_ms": seq["latency"]["started_to_completed"].get(
                "p50_ms"
            ),
            "sequential_queued_to_completed_p50_ms": seq["latency"]["queued_to_completed"].get(
                "p50_ms"
            ),
            "concurrent_runs_per_s": con["runs_per_s"],
            "concurrent_engine_cpu_ms_per_step": con["cpu_ms_per_step"].get("engine_process"),
            "concurrent_postgres_cpu_ms_per_step": con["cpu_ms_per_step"].get("postgres_backends"),
            "agent_calls": seq["agent_calls"] + con["agent_calls"],
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_SERVER_URL,
        help="PostgreSQL server URL of a superuser; a fresh database is created on it "
        f"and dropped at the end (default {DEFAULT_SERVER_URL})",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = time.perf_counter()
    out = asyncio.run(main_async(args))
    out["bench_total_s"] = round(time.perf_counter() - started, 1)
    out = {"summary": out.pop("summary", {}), **out}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
