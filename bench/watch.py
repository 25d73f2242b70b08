"""Watch benchmark: many concurrent WatchRun streams on active runs, and one stream's
throughput.

Run ``.venv/bin/python bench/watch.py [--database-url URL] [--quick]``; it prints ONE
JSON document on stdout (progress on stderr).

Layout:

- the example agents ``sleeper`` and ``echo`` (``podium.client.examples.agents``) in a
  child process;
- a real ``PodiumServer`` in this process, on a fresh database ``podium_bench_<hex>``
  (migrated at start, dropped at the end);
- the **watchers** in another child process (``bench/harness/watchers.py``), so their
  CPU and memory are not the server's: N streams over a few channels, each checking
  that it received sequences 1..N exactly once and ended after the terminal event.

Parts:

- **lag**: ``--runs`` runs (default 50) of a chain of ``--steps`` sleeper steps, created
  with ``start=false``; ``--watchers-per-run`` streams (default 20, so 1,000) watch each
  from sequence 0; once every stream got its first event the runs are started. Lag is
  client receipt time minus the event's ``time`` (Postgres ``clock_timestamp()`` when
  the event was written, before its commit; same machine, same clock), over every live
  event of every stream. Server RSS before the watchers, with them connected, its peak
  while the runs execute (sampled every 100 ms) and after the streams ended.
- **replay**: one run whose log holds ``--replay-events`` events (default 100,000,
  written with one INSERT), then one stream replays it from 0 to the terminal event:
  events/s through one stream and the server's CPU per event.
- **slow**: ``--slow-streams`` streams (default 50) replay the same large log while the
  client reads one message per millisecond: the server's RSS must not grow with the
  backlog (a watcher holds one page, never a queue).

Figures are only comparable within one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import grpc

from bench.harness.agent import ExampleAgentsProcess
from bench.harness.common import CHANNEL_OPTIONS, DEFAULT_SERVER_URL, progress
from bench.harness.cpu import cpu_seconds, rss_mb
from bench.harness.server import (
    create_database,
    drop_database,
    machine_info,
    podium_server,
    podium_settings,
)
from bench.harness.watchers import ClientProcess, client_main
from podium.orchestration.v1 import definition_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

ALL_PARTS = ("lag", "replay", "slow")


# --------------------------------------------------------------------------- parts


def chain_plan(name: str, steps: int, seconds: float) -> definition_pb2.Definition:
    """s1 -> s2 -> ... of sleeper steps sleeping ``seconds`` each."""
    plan = definition_pb2.Definition(name=name)
    previous = None
    for i in range(1, steps + 1):
        step = plan.steps.add(id=f"s{i}", agent="sleeper")
        step.input.update({"seconds": seconds})
        if previous:
            step.depends_on.append(previous)
        previous = step.id
    return plan


def watch_counters(server: Any) -> dict[str, Any]:
    """The hub's and the watch service's counters."""
    watch = server.engine.watch
    hub = watch.hub
    return {
        "notifications": hub.notifications,
        "fallback_polls": hub.polls,
        "listen_reconnects": hub.reconnects,
        "page_reads": watch.reads,
        "shared_page_reads": watch.shared_reads,
    }


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {k: after[k] - before.get(k, 0) for k in after}


async def sample_rss(stop: asyncio.Event, peak: list[float]) -> None:
    """Keep ``peak[0]`` at the highest RSS seen every 100 ms until ``stop``."""
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def part_lag(
    server: Any, stub: pb_grpc.OrchestrationServiceAsyncStub, args: argparse.Namespace
) -> dict[str, Any]:
    runs, per_run = args.runs, args.watchers_per_run
    progress(
        f"lag: {runs} runs x {args.steps} sleeper steps of {args.step_seconds}s, "
        f"{per_run} watchers each ({runs * per_run} streams)"
    )
    definition = await stub.CreateDefinition(
        pb.CreateDefinitionRequest(
            definition=chain_plan("watch-chain", args.steps, args.step_seconds)
        )
    )
    ref = pb.DefinitionRef(name=definition.definition.name, version=definition.definition.version)
    run_ids = [
        r.run.id
        for r in await asyncio.gather(
            *(stub.StartRun(pb.StartRunRequest(definition=ref, start=False)) for _ in range(runs))
        )
    ]
    gc.collect()
    rss_before = rss_mb()
    counters0 = watch_counters(server)
    streams = [run_id for run_id in run_ids for _ in range(per_run)]
    client = await ClientProcess.start(server.address, streams, channels=args.channels)
    ready = await client.line()
    if "ready" not in ready:
        raise RuntimeError(f"client: {ready}")
    rss_connected = rss_mb()
    progress(f"lag: {len(streams)} streams connected in {ready['ready']}s; starting the runs")
    stop = asyncio.Event()
    peak = [rss_connected]
    sampler = asyncio.create_task(sample_rss(stop, peak))
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(stub.ContinueRun(pb.ContinueRunRequest(run_id=r)) for r in run_ids))
    result = (await client.line())["result"]
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds() - cpu0
    stop.set()
    await sampler
    await client.wait()
    await asyncio.sleep(0.5)  # let the server finish the streams' bookkeeping
    gc.collect()
    hub = server.engine.watch.hub
    return {
        "runs": runs,
        "steps_per_run": args.steps,
        "step_seconds": args.step_seconds,
        "streams": len(streams),
        "channels": args.channels,
        "client": result,
        "event_lag_ms": result["lag_s"],
        "server_rss_mb": {
            "before_watchers": rss_before,
            "watchers_connected": rss_connected,
            "peak_while_runs_execute": peak[0],
            "after_streams_ended": rss_mb(),
            "per_stream_kb_connected": round((rss_connected - rss_before) * 1024 / len(streams), 1),
        },
        "server_cpu_utilization_while_runs_execute": round(cpu / wall, 3),
        "server_counters": delta(watch_counters(server), counters0),
        "watchers_left_registered": hub.run_watchers + hub.org_watchers,
    }


async def build_large_log(
    stub: pb_grpc.OrchestrationServiceAsyncStub, dsn: str, events: int
) -> tuple[str, int]:
    """A created run whose log is run.created + ``events`` step.progress events + a
    terminal run.cancelled, written with one INSERT (a fixture, not the engine's path)."""
    plan = chain_plan("", 1, 0.0)
    run_id = (await stub.StartRun(pb.StartRunRequest(plan=plan, start=False))).run.id
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO orchestration_events (run_id, sequence, organization_id, type,"
                " step_id, attempt, run_state, step_state, payload, created_at)"
                " SELECT r.id, r.last_event_sequence + g,"
                " r.organization_id, CASE WHEN g = $2 + 1 THEN 'run.cancelled'"
                " ELSE 'step.progress' END, 's1', 1, 'created', 'running',"
                " jsonb_build_object('message', 'working', 'fraction', g::float8 / $2),"
                " clock_timestamp()"
                " FROM orchestration_runs r, generate_series(1, $2 + 1) AS g WHERE r.id = $1",
                uuid.UUID(run_id),
                events,
            )
            total = await conn.fetchval(
                "UPDATE orchestration_runs SET last_event_sequence = last_event_sequence + $2 + 1"
                " WHERE id = $1 RETURNING last_event_sequence",
                uuid.UUID(run_id),
                events,
            )
    finally:
        await conn.close()
    return run_id, int(total)


async def part_replay(server: Any, run_id: str, total: int) -> dict[str, Any]:
    progress(f"replay: one stream of {total} events")
    counters0 = watch_counters(server)
    cpu0 = cpu_seconds()
    client = await ClientProcess.start(server.address, [run_id], channels=1)
    ready = await client.line()
    result = (await client.line())["result"] if "ready" in ready else ready["result"]
    cpu = cpu_seconds() - cpu0
    await client.wait()
    received = result["events_received"]
    return {
        "events": total,
        "client": result,
        "events_per_s": round(received / result["wall_s"], 1) if result["wall_s"] else None,
        "server_cpu_us_per_event": round(1e6 * cpu / max(received, 1), 2),
        "server_counters": delta(watch_counters(server), counters0),
    }


async def part_slow(
    server: Any, run_id: str, total: int, streams: int, seconds: float
) -> dict[str, Any]:
    progress(f"slow: {streams} streams of the {total}-event log read 1 message/ms for {seconds}s")
    gc.collect()
    before = rss_mb()
    client = await ClientProcess.start(
        server.address, [run_id] * streams, channels=1, read_delay=0.001
    )
    await client.line()  # ready
    stop = asyncio.Event()
    peak = [before]
    sampler = asyncio.create_task(sample_rss(stop, peak))
    await asyncio.sleep(seconds)
    client_rss = rss_mb(client.ps)
    client.process.kill()
    await client.process.wait()
    stop.set()
    await sampler
    hub = server.engine.watch.hub
    await asyncio.sleep(1.0)
    return {
        "streams": streams,
        "events_in_log": total,
        "client_read_rate_per_stream": "1 message / ms",
        "observed_s": seconds,
        "server_rss_mb": {"before": before, "peak": peak[0], "after_clients_killed": rss_mb()},
        "client_rss_mb": client_rss,
        "watchers_left_registered_1s_after_kill": hub.run_watchers,
    }


# --------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    parts = set(args.parts.split(",")) if args.parts else set(ALL_PARTS)
    out: dict[str, Any] = {
        "benchmark": "podium watch",
        "mode": "quick" if args.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    admin: asyncpg.Connection[Any] = await asyncpg.connect(args.database_url)
    agents = await ExampleAgentsProcess.start()
    dbname: str | None = None
    server: Any = None
    try:
        out["machine"] = await machine_info(admin)
        dbname, dsn = await create_database(admin, args.database_url)
        progress(f"database {dbname}")
        settings = podium_settings(dsn, agents.setting)
        server = podium_server(settings)
        await server.start()
        out["config"] = {
            "poll_interval_seconds": settings.poll_interval_seconds,
            "page_size": server.engine.watch.config.page_size,
            "db_pool_max_size": settings.db_pool_max_size,
            "worker_slots": settings.worker_slots,
        }
        out["server_rss_mb_at_start"] = rss_mb()
        async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub: pb_grpc.OrchestrationServiceAsyncStub = pb_grpc.OrchestrationServiceStub(channel)
            if "lag" in parts:
                out["lag"] = await part_lag(server, stub, args)
            if parts & {"replay", "slow"}:
                progress(f"writing a log of {args.replay_events} events")
                run_id, total = await build_large_log(stub, dsn, args.replay_events)
                if "replay" in parts:
                    out["replay"] = await part_replay(server, run_id, total)
                if "slow" in parts:
                    out["slow"] = await part_slow(
                        server, run_id, total, args.slow_streams, args.slow_seconds
                    )
        out["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if server is not None:
            await server.stop(0)
        await agents.stop()
        if dbname is not None:
            await drop_database(admin, dbname)
        await admin.close()
    out["summary"] = summary(out)
    return out


def summary(out: dict[str, Any]) -> dict[str, Any]:
    """The headline figures."""
    result: dict[str, Any] = {}
    lag = out.get("lag")
    if lag:
        result["streams"] = lag["streams"]
        result["event_lag_p50_ms"] = lag["event_lag_ms"].get("p50_ms")
        result["event_lag_p99_ms"] = lag["event_lag_ms"].get("p99_ms")
        result["events_delivered"] = lag["client"]["events_received"]
        result["anomalies"] = lag["client"]["anomaly_count"] + lag["client"]["error_count"]
        result["server_rss_mb"] = lag["server_rss_mb"]
    replay = out.get("replay")
    if replay:
        result["one_stream_replay_events_per_s"] = replay["events_per_s"]
    slow = out.get("slow")
    if slow:
        result["slow_consumers_server_rss_mb"] = slow["server_rss_mb"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_SERVER_URL,
        help="PostgreSQL server URL of a superuser; a database podium_bench_<hex> is created "
        f"and dropped (default {DEFAULT_SERVER_URL})",
    )
    parser.add_argument("--quick", action="store_true", help="100 streams, smaller logs")
    parser.add_argument("--parts", help=f"comma-separated subset of {','.join(ALL_PARTS)}")
    parser.add_argument("--runs", type=int, help="active runs (default 50; quick 5)")
    parser.add_argument("--watchers-per-run", type=int, default=20)
    parser.add_argument("--steps", type=int, help="sleeper steps per run (default 20; quick 10)")
    parser.add_argument("--step-seconds", type=float, default=0.2)
    parser.add_argument("--channels", type=int, default=10, help="client channels (connections)")
    parser.add_argument("--replay-events", type=int, help="default 100000; quick 20000")
    parser.add_argument("--slow-streams", type=int, help="default 50; quick 10")
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        asyncio.run(client_main())
        return 0
    quick = args.quick
    args.runs = args.runs or (5 if quick else 50)
    args.steps = args.steps or (10 if quick else 20)
    args.replay_events = args.replay_events or (20_000 if quick else 100_000)
    args.slow_streams = args.slow_streams or (10 if quick else 50)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = time.perf_counter()
    out = asyncio.run(main_async(args))
    out["bench_total_s"] = round(time.perf_counter() - started, 1)
    out = {"summary": out.pop("summary"), **out}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
