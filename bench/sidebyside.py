"""Side-by-side benchmark: Podium against DBOS, LangGraph and two ceilings, one script,
one PostgreSQL, interleaved rounds.

``make bench`` (or ``.venv-bench/bin/python bench/sidebyside.py [options]``) prints one
JSON document on stdout and a table on stderr. See ``bench/README.md``.

Workloads (the same on every system; Podium's steps call the no-op agent in another
process, the others' steps are in-process functions):

- W1: one run of 10 sequential steps, end to end (start -> the caller knows it
  finished), p50 over 20 runs one after the other;
- W2: 100 runs of 10 sequential steps started at once: steps/s;
- W3: one run of 1,000 parallel steps and a join: wall time.

Every system gets 100 steps in flight and a pool of 10 connections, its own fresh
database (``<prefix><system>_<hex>``, dropped at the end) per round, and is started
before its workloads and stopped after them, so that no idle system runs beside
another. The order of the systems rotates from round to round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench.harness.checkouts import (
    baseline_checkout,
    baseline_python,
    checkout_commit,
    describe_baseline,
)
from bench.harness.common import DEFAULT_SERVER_URL, percentile, progress
from bench.peers import common
from bench.peers.budget import INFLIGHT, POOL_SIZE
from bench.peers.common import (
    SETTLE_S,
    Meter,
    Sizes,
    System,
    window_figures,
)

SYSTEMS = ("podium", "dbos", "langgraph", "queue", "grpc")
# Not in the default list: Podium with one WatchRuns stream, on a database without
# statistics (bench/peers/podium_system.py); Podium at another checkout (--baseline).
EXTRA_SYSTEMS = ("podium-watch", "podium-baseline")
WORKLOADS = ("w1", "w2", "w3")
QUICK = Sizes(w1_steps=10, w1_repeats=5, w2_runs=20, w2_steps=10, w3_width=200)


def make_system(name: str, port_base: int, baseline: Path | None = None) -> System:
    if name == "podium":
        from bench.peers.podium_system import PodiumSystem

        return PodiumSystem(port_base)
    if name == "podium-watch":
        from bench.peers.podium_system import PodiumSystem

        return PodiumSystem(port_base, watch=True)
    if name == "podium-baseline":
        from bench.peers.podium_system import PodiumSystem

        assert baseline is not None
        return PodiumSystem(port_base, python=str(baseline_python(baseline)), name=name)
    if name == "queue":
        from bench.peers.queue_system import QueueSystem

        return QueueSystem()
    if name == "dbos":
        from bench.peers.dbos_system import DbosSystem

        return DbosSystem()
    if name == "langgraph":
        from bench.peers.langgraph_system import LangGraphSystem

        return LangGraphSystem()
    raise ValueError(f"unknown system {name!r}")


async def run_workload(system: System, meter: Meter, workload: str, sizes: Sizes) -> dict[str, Any]:
    steps = sizes.steps(workload)
    before = await meter.before()
    t0 = time.perf_counter()
    latencies: list[float] = []
    if workload == "w1":
        latencies = await system.w1(sizes.w1_steps, sizes.w1_repeats)
    elif workload == "w2":
        await system.w2(sizes.w2_runs, sizes.w2_steps)
    else:
        await system.w3(sizes.w3_width)
    wall = time.perf_counter() - t0
    after = await meter.after()
    out = window_figures(before, after, steps, wall)
    out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    if latencies:
        p50 = percentile(latencies, 50)
        out["p50_ms"] = round(1000 * p50, 2)
        out["p50_ms_per_step"] = round(1000 * p50 / sizes.w1_steps, 3)
        out["min_ms"] = round(1000 * min(latencies), 2)
        out["max_ms"] = round(1000 * max(latencies), 2)
    return out


async def run_system(
    name: str, args: argparse.Namespace, admin: asyncpg.Connection[Any], sizes: Sizes
) -> dict[str, Any]:
    if name == "grpc":
        from bench.peers.grpc_ceiling import measure

        progress("grpc ceiling")
        return {"ceiling": await measure(args.grpc_seconds)}
    dbname = f"{args.db_prefix}{name}_{secrets.token_hex(3)}"
    await admin.execute(f'CREATE DATABASE "{dbname}" TEMPLATE template0')
    dsn = urlunsplit(urlsplit(args.database_url)._replace(path="/" + dbname))
    system = make_system(name, args.port_base, args.baseline)
    out: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        await system.start(dsn)
        await system.warm()
        out["start_and_warm_s"] = round(time.perf_counter() - started, 2)
        meter = Meter(admin, dbname, system)
        out["idle_commits_per_s"] = round(await meter.calibrate(), 2)
        for workload in args.workloads:
            progress(f"{name} {workload}")
            out[workload] = await run_workload(system, meter, workload, sizes)
            progress(f"{name} {workload}: {brief(workload, out[workload])}")
        if hasattr(system, "watched_events"):
            out["watched_events"] = system.watched_events
    finally:
        await system.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return out


def brief(workload: str, figures: dict[str, Any]) -> str:
    if workload == "w1":
        return f"p50 {figures['p50_ms']} ms"
    if workload == "w2":
        return f"{figures['steps_per_s']} steps/s"
    return f"{figures['wall_s']} s"


async def machine(admin: asyncpg.Connection[Any]) -> dict[str, Any]:
    settings = {
        r["name"]: r["setting"]
        for r in await admin.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            [
                "fsync",
                "synchronous_commit",
                "wal_sync_method",
                "full_page_writes",
                "shared_buffers",
                "max_connections",
            ],
        )
    }
    versions: dict[str, str | None] = {}
    for package in (
        "grpcio",
        "asyncpg",
        "dbos",
        "langgraph",
        "langgraph-checkpoint-postgres",
        "psycopg",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "postgres": await admin.fetchval("SHOW server_version"),
        "postgres_settings": settings,
        "versions": versions,
    }


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per system and figure: the median over the rounds and the min-max."""
    values: dict[str, dict[str, list[float]]] = {}

    def walk(system: str, prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(system, path + ".", value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                values.setdefault(system, {}).setdefault(path, []).append(float(value))

    for one in rounds:
        for system, figures in one.items():
            walk(system, "", figures)
    return {
        system: {
            path: {
                "median": round(statistics.median(v), 3),
                "min": round(min(v), 3),
                "max": round(max(v), 3),
            }
            for path, v in figures.items()
        }
        for system, figures in values.items()
    }


def rows(sizes: Sizes) -> list[tuple[str, str | tuple[str, str]]]:
    """The table's rows: a label and the figure(s) of the summary."""
    return [
        (f"W1 p50 ms (one run, {sizes.w1_steps} sequential steps)", "w1.p50_ms"),
        ("W1 p50 ms per step", "w1.p50_ms_per_step"),
        (f"W2 steps/s ({sizes.w2_runs} runs x {sizes.w2_steps} steps at once)", "w2.steps_per_s"),
        (f"W3 wall s (one run, {sizes.w3_width:,} parallel steps + join)", "w3.wall_s"),
        ("W2 CPU ms/step, own processes", "w2.cpu_ms_per_step_own_processes"),
        ("W2 CPU ms/step, Postgres", "w2.cpu_ms_per_step.postgres"),
        ("W2 CPU ms/step, Podium server", "w2.cpu_ms_per_step.server"),
        ("W2 CPU ms/step, Podium agent", "w2.cpu_ms_per_step.agent"),
        ("W2 CPU ms/step, driver process", "w2.cpu_ms_per_step.driver"),
        (
            "W3 CPU ms/step, own / Postgres",
            ("w3.cpu_ms_per_step_own_processes", "w3.cpu_ms_per_step.postgres"),
        ),
        ("W1 commits per step", "w1.commits_per_step"),
        ("W2 commits per step", "w2.commits_per_step"),
        ("W3 commits per step", "w3.commits_per_step"),
    ]


def _cell(figures: dict[str, Any], key: str) -> str:
    f = figures.get(key)
    if f is None:
        return ""
    if f["min"] == f["max"]:
        return f"{f['median']:g}"
    return f"{f['median']:g} ({f['min']:g}-{f['max']:g})"


def table(summary: dict[str, Any], systems: Sequence[str], sizes: Sizes) -> str:
    """A Markdown table: median (min-max) over the rounds."""
    columns = [s for s in systems if s != "grpc"]
    lines = [
        "| figure | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for label, key in rows(sizes):
        keys = key if isinstance(key, tuple) else (key,)
        cells = [" / ".join(_cell(summary.get(s, {}), k) for k in keys) for s in columns]
        if any(c.strip(" /") for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "grpc" in summary:
        g = summary["grpc"]
        lines.append("")
        lines.append(
            "gRPC ceiling (one-message call to a no-op agent in another process): p50 "
            f"{_cell(g, 'ceiling.one_at_a_time_p50_ms')} ms one at a time back to back, "
            f"{_cell(g, 'ceiling.after_idle_p50_ms')} ms each after "
            f"{_cell(g, 'ceiling.after_idle_ms')} ms idle, "
            f"{_cell(g, 'ceiling.calls_per_s_64_in_flight')} calls/s with 64 in flight."
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else Sizes()
    if args.w1_steps:
        sizes = Sizes(args.w1_steps, 2, sizes.w2_runs, sizes.w2_steps, sizes.w3_width)
    admin: asyncpg.Connection[Any] = await asyncpg.connect(args.database_url)
    out: dict[str, Any] = {
        "benchmark": "side by side",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sizes": sizes.__dict__,
        "budget": {"steps_in_flight": INFLIGHT, "pool_connections": POOL_SIZE},
        "systems": list(args.systems),
        "workloads": list(args.workloads),
        "checkout": args.checkout,
    }
    if args.baseline is not None:
        out["baseline"] = args.baseline_described
    try:
        out["machine"] = await machine(admin)
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = list(args.systems[r % len(args.systems) :]) + list(
                args.systems[: r % len(args.systems)]
            )
            progress(f"round {r + 1}/{args.rounds}: {', '.join(order)}")
            this: dict[str, Any] = {}
            for name in order:
                this[name] = await run_system(name, args, admin, sizes)
            rounds.append(this)
        out["rounds"] = rounds
        out["summary"] = aggregate(rounds)
        out["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        await admin.close()
    out["table"] = table(out["summary"], args.systems, sizes)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_SERVER_URL,
        help="PostgreSQL server URL of a superuser; each system gets a fresh database on it "
        f"per round, dropped after (default {DEFAULT_SERVER_URL})",
    )
    parser.add_argument("--db-prefix", default="bench_side_", help="prefix of those databases")
    parser.add_argument(
        "--port-base", type=int, default=47800, help="the Podium server listens on this port"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"subset of {','.join(SYSTEMS + EXTRA_SYSTEMS)} (default: all but the last)",
    )
    parser.add_argument(
        "--baseline",
        type=baseline_checkout,
        help="another checkout of Podium (e.g. `git worktree add ../base REV`, then `make "
        ".venv/.installed` there), measured in the same rounds as system podium-baseline, "
        "added to --systems: before and after a change in one run",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--w1-steps", type=int, help=argparse.SUPPRESS)  # the smoke test
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=SETTLE_S,
        help="wait before reading the commits after a window (PostgreSQL publishes an idle "
        f"backend's statistics up to 10 s late; default {SETTLE_S}; less undercounts)",
    )
    parser.add_argument(
        "--grpc-seconds", type=float, default=3.0, help="seconds per gRPC ceiling measurement"
    )
    args = parser.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.checkout = checkout_commit()
    if args.baseline is not None:
        if "podium-baseline" not in args.systems:
            args.systems.append("podium-baseline")
        args.baseline_described = describe_baseline(args.baseline)
    elif "podium-baseline" in args.systems:
        parser.error("system podium-baseline needs --baseline PATH")
    for s in args.systems:
        if s not in SYSTEMS + EXTRA_SYSTEMS:
            parser.error(f"unknown system {s!r}")
    for w in args.workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.SETTLE_S = args.settle_seconds
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out = asyncio.run(main_async(args))
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    print(out["table"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
