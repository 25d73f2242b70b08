"""Driving runs and measuring them: start N runs of a definition at once, detect their
completion, and turn their event logs, the engine-side timeline and the agent's
receipts into step counts, latencies, CPU, database and WAL figures."""

from __future__ import annotations

import asyncio
import cProfile
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.harness.agent import AgentProcess, Receipts
from bench.harness.common import (
    TERMINAL_EVENTS,
    RunEvent,
    event_time,
    latency_summary,
    progress,
)
from bench.harness.cpu import CpuMeter
from bench.harness.postgres import PgStats, Sampler, wal_lsn
from bench.harness.probes import RepositoryProbe, StepKey, TimelineProbe
from podium.orchestration.v1 import event_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

SCENARIO_TIMEOUT_SECONDS = 600.0


def peak_rate(events: dict[str, list[event_pb2.RunEvent]], window: float) -> float:
    """Most step.completed events in any ``window`` seconds, per second (the
    steady-state rate, without the ramp-up and the tail of a scenario)."""
    times = sorted(
        event_time(e)
        for evs in events.values()
        for e in evs
        if e.type == RunEvent.TYPE_STEP_COMPLETED
    )
    best = 0
    lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return round(best / window, 1)


@dataclass
class Context:
    stub: pb_grpc.OrchestrationServiceAsyncStub
    agent: AgentProcess
    meter: CpuMeter
    probe: RepositoryProbe
    admin: asyncpg.Connection[Any]
    scheduler: Any
    sampler: Sampler
    pgstats: PgStats
    timeline: TimelineProbe
    detect_conn: asyncpg.Connection[Any]
    detect: str = "sql"


async def wait_for_runs_sql(
    conn: asyncpg.Connection[Any], run_ids: Sequence[str], interval: float, limit_s: float
) -> int:
    """Wait until every run is terminal, asking the database directly every
    ``interval`` seconds (keeps the measurement off the engine's event loop: one tiny
    query per poll instead of an RPC the engine has to serve). Returns the polls made."""
    ids = [uuid.UUID(r) for r in run_ids]
    deadline = time.monotonic() + limit_s
    polls = 0
    while True:
        polls += 1
        unfinished = await conn.fetchval(
            "SELECT count(*) FROM orchestration_runs WHERE id = ANY($1::uuid[]) "
            "AND state NOT IN ('succeeded', 'failed', 'cancelled')",
            ids,
        )
        if unfinished == 0:
            return polls
        if time.monotonic() > deadline:
            raise TimeoutError(f"{unfinished} run(s) not finished after {limit_s:.0f}s")
        await asyncio.sleep(interval)


async def fetch_events(
    stub: pb_grpc.OrchestrationServiceAsyncStub, run_ids: Sequence[str]
) -> dict[str, list[event_pb2.RunEvent]]:
    """Every event of the runs, through ListRunEvents (after the measured window)."""
    events: dict[str, list[event_pb2.RunEvent]] = {}
    for run_id in run_ids:
        got: list[event_pb2.RunEvent] = []
        after = 0
        while True:
            response = await stub.ListRunEvents(
                pb.ListRunEventsRequest(run_id=run_id, after_sequence=after, page_size=1000)
            )
            got.extend(response.events)
            if not response.next_after_sequence:
                break
            after = response.next_after_sequence
        events[run_id] = got
    return events


async def wait_for_runs(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
    run_ids: Sequence[str],
    interval: float,
    limit_s: float,
) -> tuple[dict[str, list[event_pb2.RunEvent]], int]:
    """Tail ``ListRunEvents`` of the oldest unfinished run until every run has a
    terminal event; one RPC at a time, sleeping ``interval`` when nothing new is done.
    Returns every run's events and the number of RPCs made."""
    events: dict[str, list[event_pb2.RunEvent]] = {rid: [] for rid in run_ids}
    after = dict.fromkeys(run_ids, 0)
    pending = deque(run_ids)
    polls = 0
    deadline = time.monotonic() + limit_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} run(s) not finished after {limit_s:.0f}s")
        run_id = pending[0]
        response = await stub.ListRunEvents(
            pb.ListRunEventsRequest(run_id=run_id, after_sequence=after[run_id], page_size=1000)
        )
        polls += 1
        if response.events:
            events[run_id].extend(response.events)
            after[run_id] = response.events[-1].sequence
        if any(e.type in TERMINAL_EVENTS for e in response.events):
            pending.popleft()
            continue
        if response.next_after_sequence:
            continue
        await asyncio.sleep(interval)
    return events, polls


def analyse_runs(
    events: dict[str, list[event_pb2.RunEvent]],
    receipts: Receipts,
    timeline: tuple[dict[StepKey, float], dict[StepKey, float], dict[StepKey, float]],
) -> dict[str, Any]:
    """Step counts and latencies from the event logs, the engine-side timeline and the
    agent's receipts (all ``time.time()`` on this machine; event times are Postgres
    ``now()``, the start of the transaction that wrote them)."""
    claim_returned, call_started, call_returned = timeline
    series: dict[str, list[float]] = {
        name: []
        for name in (
            "queued_to_agent",
            "queued_to_completed",
            "1_queued_to_claim_txn_start",
            "2_claim_txn_start_to_claim_returned",
            "3_claim_returned_to_agent_call",
            "4_agent_call_to_agent_receipt",
            "5_agent_receipt_to_call_returned",
            "6_call_returned_to_completion_txn_start",
        )
    }
    completed = failed_runs = succeeded_runs = missing_receipts = 0

    def add(name: str, start: float | None, end: float | None) -> None:
        if start is not None and end is not None:
            series[name].append(end - start)

    for run_id, run_events in events.items():
        queued: dict[str, float] = {}
        started: dict[str, tuple[float, int]] = {}
        for event in run_events:
            t = event_time(event)
            kind = event.type
            if kind == RunEvent.TYPE_STEP_QUEUED:
                queued.setdefault(event.step_id, t)
            elif kind == RunEvent.TYPE_STEP_STARTED:
                started.setdefault(event.step_id, (t, event.attempt))
            elif kind == RunEvent.TYPE_STEP_COMPLETED:
                completed += 1
                add("queued_to_completed", queued.get(event.step_id), t)
                key = (run_id, event.step_id, event.attempt)
                add("6_call_returned_to_completion_txn_start", call_returned.get(key), t)
            elif kind in TERMINAL_EVENTS:
                if kind == RunEvent.TYPE_RUN_COMPLETED:
                    succeeded_runs += 1
                else:
                    failed_runs += 1
        for step_id, (t_started, attempt) in started.items():
            key = (run_id, step_id, attempt)
            q = queued.get(step_id)
            receipt = receipts.get(key)
            missing_receipts += receipt is None
            add("queued_to_agent", q, receipt)
            add("1_queued_to_claim_txn_start", q, t_started)
            add("2_claim_txn_start_to_claim_returned", t_started, claim_returned.get(key))
            add("3_claim_returned_to_agent_call", claim_returned.get(key), call_started.get(key))
            add("4_agent_call_to_agent_receipt", call_started.get(key), receipt)
            add("5_agent_receipt_to_call_returned", receipt, call_returned.get(key))
    latency = {name: latency_summary(values) for name, values in series.items()}
    return {
        "steps_completed": completed,
        "runs_succeeded": succeeded_runs,
        "runs_failed_or_cancelled": failed_runs,
        "missing_agent_receipts": missing_receipts,
        "latency": {
            "queued_to_agent": latency.pop("queued_to_agent"),
            "queued_to_completed": latency.pop("queued_to_completed"),
            "breakdown": latency,
        },
    }


async def run_scenario(
    ctx: Context,
    name: str,
    ref: pb.DefinitionRef,
    *,
    runs: int,
    steps_per_run: int,
    repeats: int = 1,
    poll_interval: float = 0.05,
    profiler: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """Start ``runs`` runs of ``ref`` at once (``repeats`` times, one after the other)
    and measure them from the first StartRun to the last terminal event."""
    walls: list[float] = []
    all_events: dict[str, list[event_pb2.RunEvent]] = {}
    receipts: Receipts = {}
    polls = 0
    start_run_s: list[float] = []
    await ctx.agent.reset()
    ctx.timeline.take()
    stats0 = ctx.pgstats.last or await ctx.pgstats.snapshot()
    cpu0 = await ctx.meter.snapshot()
    db0 = ctx.probe.snapshot()
    wal0 = await wal_lsn(ctx.admin)
    claimed0 = getattr(ctx.scheduler, "claimed_total", 0)
    ctx.sampler.start()
    for repeat in range(repeats):
        progress(f"{name}: {runs} run(s) x {steps_per_run} steps (repeat {repeat + 1}/{repeats})")
        request = pb.StartRunRequest(definition=ref, start=True)
        request.input.update({"n": repeat})
        if profiler is not None:
            profiler.enable()
        t0 = time.time()
        responses = await asyncio.gather(*(ctx.stub.StartRun(request) for _ in range(runs)))
        start_run_s.append(time.time() - t0)
        run_ids = [r.run.id for r in responses]
        if ctx.detect == "sql":
            n = await wait_for_runs_sql(
                ctx.detect_conn, run_ids, min(poll_interval, 0.02), SCENARIO_TIMEOUT_SECONDS
            )
            if profiler is not None:
                profiler.disable()
            events = await fetch_events(ctx.stub, run_ids)
        else:
            events, n = await wait_for_runs(
                ctx.stub, run_ids, poll_interval, limit_s=SCENARIO_TIMEOUT_SECONDS
            )
            if profiler is not None:
                profiler.disable()
        polls += n
        receipts.update(await ctx.agent.receipts())
        all_events.update(events)
        last_end = max(event_time(e) for evs in events.values() for e in evs)
        walls.append(last_end - t0)
    cpu1 = await ctx.meter.snapshot()
    sampled = await ctx.sampler.stop()
    db = RepositoryProbe.delta(db0, ctx.probe.snapshot())
    wal_bytes = await ctx.admin.fetchval(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", wal0
    )
    figures = analyse_runs(all_events, receipts, ctx.timeline.take())
    steps = figures["steps_completed"]
    stats1 = ctx.pgstats.last = await ctx.pgstats.snapshot()
    expected = runs * steps_per_run * repeats
    total_wall = sum(walls)
    result: dict[str, Any] = {
        "runs": runs,
        "steps_per_run": steps_per_run,
        "repeats": repeats,
        "steps_expected": expected,
        **figures,
        "wall_s": round(total_wall, 3),
        "wall_s_per_repeat": [round(w, 3) for w in walls],
        "steps_per_s": round(steps / total_wall, 1) if total_wall > 0 else 0,
        "peak_steps_per_s_500ms_window": peak_rate(all_events, 0.5) if total_wall >= 1.0 else None,
        "start_runs_returned_after_s": [round(s, 3) for s in start_run_s],
        "completion_polls": polls,
        "cpu": CpuMeter.delta(cpu0, cpu1, max(steps, 1)),
        "db_calls": {k: v.summary(max(steps, 1)) for k, v in db.items() if v.calls},
        "wal_bytes_per_step_server_wide": round(float(wal_bytes) / max(steps, 1), 1),
        "steps_claimed": getattr(ctx.scheduler, "claimed_total", 0) - claimed0,
        "sampled": sampled,
        "postgres": PgStats.delta(stats0, stats1, steps),
    }
    if steps != expected or figures["runs_failed_or_cancelled"]:
        result["error"] = f"expected {expected} completed steps, got {steps}"
    progress(
        f"{name}: {steps} steps in {total_wall:.2f}s = {result['steps_per_s']} steps/s; "
        f"queued->agent p50 {figures['latency']['queued_to_agent'].get('p50_ms')} ms, "
        f"p99 {figures['latency']['queued_to_agent'].get('p99_ms')} ms"
    )
    return result
