"""Engine benchmark: durable steps/s end to end against the gRPC ceiling of this machine.

Run ``.venv/bin/python bench/engine.py [--database-url URL] [--quick] [--profile]``; it
prints ONE JSON document on stdout (progress on stderr). See ``bench/README.md`` for
what each figure means.

Layout of one run:

- a no-op agent (``podium.agent.v1.AgentService``: ExecuteTask yields one ``result``
  with an empty output) runs in a child process (``bench/harness/agent.py``) and records
  ``time.time()`` per ``(run_id, step_id, attempt)`` it receives;
- **baseline**: a bare grpc.aio client in this process calls that agent with N calls in
  flight (the gRPC ceiling of one Python process driving agent calls), plus the same
  loop with client and agent in one process (for reference only: it is easier);
- **engine**: a real ``PodiumServer`` in this process, on a fresh database
  ``podium_bench_<hex>`` (migrated at start, dropped at the end), with the agent as the
  static agent ``noop``; the scenarios start runs through the generated async stub and
  detect completion by tailing ``ListRunEvents`` sparsely;
- **create**: wall time of CreateDefinition / StartRun(start=false) of a 10,000-step plan;
- **profile** (``--profile``): the 100-concurrent-runs scenario again under cProfile.

The scenarios (their sizes, plans and the order they run in) are here; the harness
they run on (agent and server processes, probes, CPU and database accounting, the
baseline, profiling) is ``bench/harness/``.

Figures are only comparable within one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
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

from bench.harness.agent import AgentProcess, serve_agent_main
from bench.harness.baseline import baseline_same_process, baseline_separate
from bench.harness.common import CHANNEL_OPTIONS, DEFAULT_SERVER_URL, progress
from bench.harness.cpu import CpuMeter
from bench.harness.postgres import PgStats, Sampler
from bench.harness.probes import RepositoryProbe, TimelineProbe
from bench.harness.profiling import profile_summary
from bench.harness.runs import Context, run_scenario
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

ALL_PARTS = ("baseline", "a", "b", "c", "d", "create")

# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """How big each part of the benchmark is (full run or ``--quick``)."""

    baseline_seconds: float
    inflight: int
    single_run_repeats: int
    concurrent_runs: tuple[int, int, int]
    fanout_steps: int
    fanout_max_parallel: int
    create_steps: int
    profile_runs: int


FULL = Sizes(
    baseline_seconds=5.0,
    inflight=64,
    single_run_repeats=5,
    concurrent_runs=(1, 10, 100),
    fanout_steps=1000,
    fanout_max_parallel=64,
    create_steps=10_000,
    profile_runs=100,
)
QUICK = Sizes(
    baseline_seconds=1.0,
    inflight=64,
    single_run_repeats=2,
    concurrent_runs=(1, 10, 20),
    fanout_steps=200,
    fanout_max_parallel=64,
    create_steps=1_000,
    profile_runs=20,
)


# --------------------------------------------------------------------------- plans


def fanout_plan(
    name: str,
    *,
    middle: int,
    sink: bool,
    max_parallel: int,
    sink_refs_all: bool = False,
) -> definition_pb2.Definition:
    """1 root -> ``middle`` parallel steps (-> 1 sink), all on agent ``noop``, with
    ``${...}`` data passing: root <- run input, middle <- root output, sink <- outputs."""
    plan = definition_pb2.Definition(name=name)
    plan.execution.concurrency.max_parallel = max_parallel
    root = plan.steps.add(id="root", agent="noop")
    root.input.update({"n": "${run.input.n}"})
    width = len(str(middle))
    ids = [f"s{i:0{width}d}" for i in range(1, middle + 1)]
    for i, step_id in enumerate(ids, start=1):
        step = plan.steps.add(id=step_id, agent="noop", depends_on=["root"])
        step.input.update({"i": i, "upstream": "${steps.root.output}"})
    if sink:
        step = plan.steps.add(id="sink", agent="noop", depends_on=ids)
        if sink_refs_all:
            step.input.update({"parts": [f"${{steps.{s}.output}}" for s in ids]})
        else:
            step.input.update({"root": "${steps.root.output}"})
    return plan


# --------------------------------------------------------------------------- create


async def run_create(
    ctx: Context, steps: int, profiler: cProfile.Profile | None = None
) -> dict[str, Any]:
    """Wall time of CreateDefinition and StartRun(start=false) for a ``steps``-step plan
    (1 root + ``steps - 1`` steps depending on it); ``profiler`` profiles the inline
    StartRun."""
    plan = fanout_plan(f"bench-create-{steps}", middle=steps - 1, sink=False, max_parallel=8)
    progress(f"create: {steps}-step plan ({plan.ByteSize()} bytes)")
    ctx.pgstats.last = None
    out: dict[str, Any] = {"steps": steps, "plan_bytes": plan.ByteSize()}
    db0 = ctx.probe.snapshot()

    started = time.perf_counter()
    created = await ctx.stub.CreateDefinition(pb.CreateDefinitionRequest(definition=plan))
    out["create_definition_s"] = round(time.perf_counter() - started, 3)
    out["create_definition_response_bytes"] = created.ByteSize()

    inline = plan.__class__()
    inline.CopyFrom(plan)
    inline.name = ""
    started = time.perf_counter()
    response = await ctx.stub.StartRun(pb.StartRunRequest(plan=inline, start=False))
    out["start_run_inline_plan_s"] = round(time.perf_counter() - started, 3)
    out["start_run_response_bytes"] = response.ByteSize()
    out["start_run_response_steps"] = len(response.run.steps)

    ref = pb.DefinitionRef(name=created.definition.name, version=created.definition.version)
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        await ctx.stub.StartRun(pb.StartRunRequest(definition=ref, start=False))
        timings.append(round(time.perf_counter() - started, 3))
    out["start_run_saved_definition_s"] = timings  # first, then with the definition cached
    db = RepositoryProbe.delta(db0, ctx.probe.snapshot())
    # Server-side split of the three StartRuns: the create transaction vs reading the run
    # back (with its steps) for the response.
    out["server_side_split"] = {
        "create_transaction_ms_mean": round(
            1000 * db["create"].seconds / max(db["create"].calls, 1), 1
        )
        if "create" in db
        else None,
        "read_back_get_with_steps_ms_each": round(
            1000 * db["get_with_steps"].seconds / max(db["get_with_steps"].calls, 1), 1
        )
        if "get_with_steps" in db
        else None,
    }
    progress(
        f"create: CreateDefinition {out['create_definition_s']}s, StartRun inline "
        f"{out['start_run_inline_plan_s']}s, by ref {timings}"
    )
    if profiler is not None:  # an extra, untimed StartRun under the profiler
        profiler.enable()
        await ctx.stub.StartRun(pb.StartRunRequest(plan=inline, start=False))
        profiler.disable()
    return out


# --------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    parts = set(args.parts.split(",")) if args.parts else set(ALL_PARTS)
    out: dict[str, Any] = {
        "benchmark": "podium engine",
        "mode": "quick" if args.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    admin: asyncpg.Connection[Any] = await asyncpg.connect(args.database_url)
    agent = await AgentProcess.start()
    dbname: str | None = None
    server: Any = None
    stats_conn: asyncpg.Connection[Any] | None = None
    sampler_conn: asyncpg.Connection[Any] | None = None
    try:
        out["machine"] = await machine_info(admin)
        out["sizes"] = asdict(sizes)
        baseline: dict[str, Any] = {}
        out["baseline"] = baseline
        if "baseline" in parts:
            progress(f"baseline: {sizes.inflight} in flight, {sizes.baseline_seconds}s each")
            inflight, seconds = sizes.inflight, sizes.baseline_seconds
            baseline["separate_process"] = {
                "before": await baseline_separate(agent, inflight, seconds)
            }
            baseline["same_process"] = await baseline_same_process(inflight, seconds)
            # 5 messages per call, measured for reference only (no ratio against it).
            baseline["same_process_5_messages"] = await baseline_same_process(inflight, seconds, 5)
            baseline["separate_process_5_messages"] = await baseline_separate(
                agent, inflight, seconds, 5
            )
            progress(
                f"baseline: {baseline['separate_process']['before']['calls_per_s']} calls/s "
                f"(agent in a child process), {baseline['same_process']['calls_per_s']} calls/s "
                "(same process)"
            )

        dbname, dsn = await create_database(admin, args.database_url)
        # Function-level timings (pg_stat_user_functions) for this database only.
        await admin.execute(f"ALTER DATABASE \"{dbname}\" SET track_functions = 'pl'")
        progress(f"database {dbname}")
        settings = podium_settings(
            dsn,
            f"noop={agent.address}",
            default_max_parallel=8,
            worker_slots=args.worker_slots,
            db_pool_max_size=args.db_pool_max_size,
        )
        out["config"] = {
            "worker_slots": settings.worker_slots,
            "claim_batch_size": settings.claim_batch_size,
            "db_pool_max_size": settings.db_pool_max_size,
            "poll_interval_seconds": settings.poll_interval_seconds,
            "completion_detection": (
                "sql: one query on orchestration_runs every 10-20 ms from a separate "
                "connection; the events are read with ListRunEvents after the window"
                if args.detect == "sql"
                else "events: ListRunEvents tail of the oldest unfinished run, one RPC at "
                "a time; sleeps 50 ms (10 ms for a, 100 ms for d) when nothing new"
            ),
            "track_functions": "pl (on the benchmark database)",
        }
        server = podium_server(settings)
        started = time.perf_counter()
        await server.start()
        out["server_start_s"] = round(time.perf_counter() - started, 3)
        engine_obj = server.engine
        scheduler = engine_obj.scheduler
        pool = engine_obj.db.pool
        probe = RepositoryProbe(getattr(scheduler, "_repository", None))
        stats_conn = await asyncpg.connect(dsn)
        sampler_conn = await asyncpg.connect(args.database_url)
        async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub: pb_grpc.OrchestrationServiceAsyncStub = pb_grpc.OrchestrationServiceStub(channel)
            ctx = Context(
                stub=stub,
                agent=agent,
                meter=CpuMeter(agent, admin, dbname),
                probe=probe,
                admin=admin,
                scheduler=scheduler,
                sampler=Sampler(sampler_conn, dbname, scheduler, pool),
                pgstats=PgStats(stats_conn, pool),
                timeline=TimelineProbe(scheduler, engine_obj.agent_client),
                detect_conn=stats_conn,
                detect=args.detect,
            )
            dag10 = await stub.CreateDefinition(
                pb.CreateDefinitionRequest(
                    definition=fanout_plan(
                        "bench-dag10", middle=8, sink=True, max_parallel=8, sink_refs_all=True
                    )
                )
            )
            ref10 = pb.DefinitionRef(name=dag10.definition.name, version=dag10.definition.version)
            fan = await stub.CreateDefinition(
                pb.CreateDefinitionRequest(
                    definition=fanout_plan(
                        "bench-fanout",
                        middle=sizes.fanout_steps - 2,
                        sink=True,
                        max_parallel=sizes.fanout_max_parallel,
                    )
                )
            )
            ref_fan = pb.DefinitionRef(name=fan.definition.name, version=fan.definition.version)
            # Warm-up: channels, prepared statements, definition cache.
            await run_scenario(ctx, "warm-up", ref10, runs=2, steps_per_run=10)

            engine: dict[str, Any] = {}
            out["engine"] = engine
            n1, n10, n100 = sizes.concurrent_runs
            if "a" in parts:
                engine[f"a_{n1}_run_x10"] = await run_scenario(
                    ctx,
                    "a",
                    ref10,
                    runs=n1,
                    steps_per_run=10,
                    repeats=sizes.single_run_repeats,
                    poll_interval=0.01,
                )
            if "b" in parts:
                engine[f"b_{n10}_runs_x10"] = await run_scenario(
                    ctx, "b", ref10, runs=n10, steps_per_run=10
                )
            if "c" in parts:
                engine[f"c_{n100}_runs_x10"] = await run_scenario(
                    ctx, "c", ref10, runs=n100, steps_per_run=10
                )
            if "d" in parts:
                engine[f"d_1_run_x{sizes.fanout_steps}"] = await run_scenario(
                    ctx, "d", ref_fan, runs=1, steps_per_run=sizes.fanout_steps, poll_interval=0.1
                )
            if args.profile:
                profile: dict[str, Any] = {
                    "scenario": f"{sizes.profile_runs} concurrent runs x 10 steps, cProfile "
                    "on this process (engine + driver; the agent is another process)",
                }
                out["profile"] = profile
                for timer_name, timer in (("cpu", time.thread_time), ("wall", time.perf_counter)):
                    profiler = cProfile.Profile(timer)
                    progress(f"profile ({timer_name} timer): {sizes.profile_runs} runs x 10")
                    profiled = await run_scenario(
                        ctx,
                        f"profile-{timer_name}",
                        ref10,
                        runs=sizes.profile_runs,
                        steps_per_run=10,
                        profiler=profiler,
                    )
                    if args.profile_out:
                        profiler.dump_stats(f"{args.profile_out}.{timer_name}.prof")
                    profile[timer_name] = {
                        "timer": "CPU time of the event-loop thread (time.thread_time)"
                        if timer_name == "cpu"
                        else "wall clock (includes time the thread was preempted or blocked)",
                        "steps_per_s_under_profiler": profiled["steps_per_s"],
                        **profile_summary(profiler),
                    }
            if "create" in parts:
                create_profiler = cProfile.Profile(time.thread_time) if args.profile else None
                out["create"] = await run_create(ctx, sizes.create_steps, create_profiler)
                if create_profiler is not None:
                    if args.profile_out:
                        create_profiler.dump_stats(f"{args.profile_out}.create.prof")
                    out.setdefault("profile", {})["create_inline_start_run_cpu"] = {
                        "timer": "CPU time of the event-loop thread (time.thread_time)",
                        **profile_summary(create_profiler),
                    }
        if "baseline" in parts:
            progress("baseline again (machine drift check)")
            separate = baseline["separate_process"]
            separate["after"] = await baseline_separate(
                agent, sizes.inflight, sizes.baseline_seconds
            )
            separate["calls_per_s"] = round(
                (separate["before"]["calls_per_s"] + separate["after"]["calls_per_s"]) / 2, 1
            )
        out["ratios"] = ratios(out)
        out["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if server is not None:
            await server.stop(0)
        await agent.stop()
        for conn in (stats_conn, sampler_conn):
            if conn is not None:
                await conn.close()
        if dbname is not None:
            await drop_database(admin, dbname)
        await admin.close()
    return out


def summary(out: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of the document, in one place."""
    base = out.get("baseline", {})
    ratio = out.get("ratios", {})
    engine = {}
    for name, s in out.get("engine", {}).items():
        lat = s["latency"]
        engine[name] = {
            "steps_per_s": s["steps_per_s"],
            "peak_steps_per_s_500ms_window": s["peak_steps_per_s_500ms_window"],
            "ratio_vs_separate_process_baseline": ratio.get("vs_separate_process_baseline", {}).get(
                name
            ),
            "queued_to_agent_p50_p99_ms": [
                lat["queued_to_agent"].get("p50_ms"),
                lat["queued_to_agent"].get("p99_ms"),
            ],
            "queued_to_completed_p50_p99_ms": [
                lat["queued_to_completed"].get("p50_ms"),
                lat["queued_to_completed"].get("p99_ms"),
            ],
            "cpu_ms_per_step_engine_agent_postgres": [
                s["cpu"]["engine_process_cpu_ms_per_step"],
                s["cpu"]["agent_process_cpu_ms_per_step"],
                s["cpu"]["postgres_backends_cpu_ms_per_step"],
            ],
        }
    create = out.get("create", {})
    return {
        "baseline_calls_per_s": {k: v.get("calls_per_s") for k, v in base.items()},
        "engine": engine,
        "create": {
            k: create.get(k)
            for k in (
                "steps",
                "create_definition_s",
                "start_run_inline_plan_s",
                "start_run_saved_definition_s",
            )
        },
    }


def ratios(out: dict[str, Any]) -> dict[str, Any]:
    """Engine steps/s over the separate-process baseline's calls/s, per scenario: the
    hardest baseline (one message per call, the agent in another process, as for the
    engine). No ratio against the same-process or 5-message layouts: they are easier
    on this machine and would flatter the engine."""
    result: dict[str, Any] = {}
    calls = out.get("baseline", {}).get("separate_process", {}).get("calls_per_s")
    if calls:
        result["vs_separate_process_baseline"] = {
            name: round(s["steps_per_s"] / calls, 3) for name, s in out.get("engine", {}).items()
        }
    result["baseline_used"] = (
        "separate_process: mean of the runs before and after the engine scenarios"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_SERVER_URL,
        help="PostgreSQL server URL of a superuser; a fresh database is created on it "
        f"and dropped at the end (default {DEFAULT_SERVER_URL})",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run < 30 s")
    parser.add_argument(
        "--profile", action="store_true", help="also run the 100-runs scenario under cProfile"
    )
    parser.add_argument(
        "--profile-out",
        help="write the raw cProfile stats to PREFIX.cpu.prof, PREFIX.wall.prof and "
        "PREFIX.create.prof (open with pstats or snakeviz)",
        metavar="PREFIX",
    )
    parser.add_argument(
        "--parts",
        help=f"comma-separated subset of {','.join(ALL_PARTS)} (default: all)",
    )
    parser.add_argument(
        "--detect",
        choices=("sql", "events"),
        default="sql",
        help="how run completion is detected: a tiny SQL poll on a separate connection "
        "(default; least load on the engine) or tailing ListRunEvents through the API",
    )
    parser.add_argument("--worker-slots", type=int, default=100, help="PODIUM_WORKER_SLOTS")
    parser.add_argument("--db-pool-max-size", type=int, default=10, help="PODIUM_DB_POOL_MAX_SIZE")
    parser.add_argument("--serve-agent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_agent:
        asyncio.run(serve_agent_main())
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = time.perf_counter()
    out = asyncio.run(main_async(args))
    out["bench_total_s"] = round(time.perf_counter() - started, 1)
    out = {"summary": summary(out), **out}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
