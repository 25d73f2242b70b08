"""Where a sequential step's time goes: W1 of ``bench/sidebyside.py`` cut into segments.

Run ``.venv/bin/python bench/timeline.py [--runs N] [--rounds R] [--baseline PATH]``;
it prints ONE JSON document on stdout (progress on stderr). Podium's server and the
no-op agent run in child processes exactly as in ``sidebyside.py`` (``--baseline``: also
another checkout's server, alternated round by round), each round on a fresh database.
Each round makes ``--runs`` runs of 10 sequential steps one after the other and then
reads, for each, three clocks of this machine: the caller's (before StartRun, when it
returned, when the caller saw the run finished), the times PostgreSQL wrote on the
run's events (``clock_timestamp()`` inside the statements: ``step.queued``,
``step.started``, ``step.completed``...) and the times the agent received each call.

Segments (p50, min and max over every run or step of every round, milliseconds):

- ``start_to_run_created``: StartRun sent -> the run's first event (the call's way in,
  the server's work before its statement, the statement up to its first insert);
- ``first_claim``: ``step.queued`` -> ``step.started`` of the first step (StartRun's
  eager claim, inside its statement);
- ``dispatch``: ``step.started`` -> the agent received the call (the rest of the
  statement, its commit, the rows back to the server, the executor, the call's way out);
- ``agent_to_completed``: the agent received the call -> ``step.completed`` (the agent's
  answer on its way back, the outcome to the completer, the completion statement up to
  the step's update and events);
- ``next_claim``: ``step.completed`` -> the next step's ``step.started`` (the eager
  claim inside the completion statement; in code without eager dispatch, the commit,
  ``NOTIFY``, the claim loop's wake and its claim);
- ``completed_to_caller``: ``run.completed`` -> the caller saw it (the commit, and the
  caller's poll, every 1 ms: half of it on average);
- ``step``: ``step.started`` -> the next step's ``step.started`` (steps 2-10);
- ``run``: the caller's whole run.

Clock timestamps from three processes on one machine: the segments add up (within the
clocks' resolution) and do not depend on the server's instrumentation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench.harness.checkouts import (
    baseline_checkout,
    baseline_python,
    checkout_commit,
    describe_baseline,
)
from bench.harness.common import DEFAULT_SERVER_URL, progress
from bench.harness.server import create_database, drop_database, machine_info
from bench.peers.podium_system import POLL_W1_S, PodiumSystem

STEPS = 10
SEGMENTS = (
    "start_to_run_created",
    "first_claim",
    "dispatch",
    "agent_to_completed",
    "next_claim",
    "completed_to_caller",
    "step",
    "run",
)


def segments(
    caller: tuple[float, float],
    events: Sequence[Any],
    receipts: dict[str, float],
) -> dict[str, list[float]]:
    """One run's segments in ms: ``caller`` = (StartRun sent, run seen finished), epoch
    seconds; ``events`` = rows with ``type``, ``step_id`` and ``t`` (epoch seconds), in
    sequence order; ``receipts`` = the agent's receipt time per step id (first attempt)."""
    at: dict[tuple[str, str | None], float] = {}
    for row in events:
        at.setdefault((row["type"], row["step_id"]), row["t"])
    out: dict[str, list[float]] = {name: [] for name in SEGMENTS}

    def add(name: str, start: float, end: float) -> None:
        out[name].append(1000 * (end - start))

    steps = [f"s{k}" for k in range(1, STEPS + 1)]
    add("start_to_run_created", caller[0], at[("run.created", None)])
    add("first_claim", at[("step.queued", "s1")], at[("step.started", "s1")])
    for k, step in enumerate(steps):
        add("dispatch", at[("step.started", step)], receipts[step])
        add("agent_to_completed", receipts[step], at[("step.completed", step)])
        if k + 1 < len(steps):
            following = at[("step.started", steps[k + 1])]
            add("next_claim", at[("step.completed", step)], following)
            if k > 0:
                add("step", at[("step.started", step)], following)
    add("completed_to_caller", at[("run.completed", None)], caller[1])
    add("run", caller[0], caller[1])
    return out


async def one_round(
    admin: asyncpg.Connection[Any], server_url: str, system: PodiumSystem, runs: int
) -> dict[str, list[float]]:
    name, dsn = await create_database(admin, server_url)
    out: dict[str, list[float]] = {segment: [] for segment in SEGMENTS}
    try:
        await system.start(dsn)
        reader: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
        try:
            await system.warm()
            assert system.agent is not None
            await system.agent.reset()
            callers: list[tuple[str, float, float]] = []
            for _ in range(runs):
                sent = time.time()
                run_id = await system.start_one(STEPS)
                await system.wait([run_id], POLL_W1_S)
                callers.append((run_id, sent, time.time()))
            receipts = await system.agent.receipts()
            for run_id, sent, seen in callers:
                events = await reader.fetch(
                    "SELECT type, step_id, extract(epoch FROM created_at)::float8 AS t"
                    " FROM orchestration_events WHERE run_id = $1 ORDER BY sequence",
                    uuid.UUID(run_id),
                )
                received = {s: t for (r, s, a), t in receipts.items() if r == run_id and a == 1}
                for segment, values in segments((sent, seen), events, received).items():
                    out[segment].extend(values)
        finally:
            await reader.close()
    finally:
        await system.stop()
        await drop_database(admin, name)
    return out


def summary(values: list[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 3),
        "min_ms": round(min(values), 3),
        "max_ms": round(max(values), 3),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    admin: asyncpg.Connection[Any] = await asyncpg.connect(args.database_url)
    systems: dict[str, str] = {"podium": sys.executable}
    if args.baseline is not None:
        systems["podium-baseline"] = str(baseline_python(args.baseline))
    collected: dict[str, dict[str, list[float]]] = {
        name: {segment: [] for segment in SEGMENTS} for name in systems
    }
    try:
        out: dict[str, Any] = {
            "benchmark": "timeline",
            "runs_per_round": args.runs,
            "rounds": args.rounds,
            "checkout": args.checkout,
            "machine": await machine_info(admin),
        }
        if args.baseline is not None:
            out["baseline"] = args.baseline_described
        for r in range(args.rounds):
            for name, python in systems.items():
                progress(f"round {r + 1}/{args.rounds}: {name}")
                system = PodiumSystem(args.port, python=python, name=name)
                figures = await one_round(admin, args.database_url, system, args.runs)
                for segment, values in figures.items():
                    collected[name][segment].extend(values)
    finally:
        await admin.close()
    out["segments"] = {
        name: {segment: summary(values) for segment, values in figures.items()}
        for name, figures in collected.items()
    }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_SERVER_URL)
    parser.add_argument("--runs", type=int, default=30, help="runs per round (default 30)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--port", type=int, default=47900, help="the Podium server's port")
    parser.add_argument(
        "--baseline",
        type=baseline_checkout,
        help="another checkout with its .venv, alternated round by round (as in "
        "bench/sidebyside.py)",
    )
    args = parser.parse_args(argv)
    args.checkout = checkout_commit()
    if args.baseline is not None:
        args.baseline_described = describe_baseline(args.baseline)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = asyncio.run(main_async(args))
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
