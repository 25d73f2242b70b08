"""Engine benchmark: durable steps/s end to end against the gRPC ceiling of this machine.

Run ``.venv/bin/python bench/engine.py [--database-url URL] [--quick] [--profile]``; it
prints ONE JSON document on stdout (progress on stderr). See ``bench/README.md`` for
what each figure means.

Layout of one run:

- a no-op agent (``podium.agent.v1.AgentService``: ExecuteTask yields one ``result``
  with an empty output) runs in a child process (``--serve-agent``) and records
  ``time.time()`` per ``(run_id, step_id, attempt)`` it receives;
- **baseline**: a bare grpc.aio client in this process calls that agent with N calls in
  flight (the gRPC ceiling of one Python process driving agent calls), plus the same
  loop with client and agent in one process (the figure DESIGN.md quotes);
- **engine**: a real ``PodiumServer`` in this process, on a fresh database
  ``podium_bench_<hex>`` (migrated at start, dropped at the end), with the agent as the
  static agent ``noop``; the scenarios start runs through the generated async stub and
  detect completion by tailing ``ListRunEvents`` sparsely;
- **create**: wall time of CreateDefinition / StartRun(start=false) of a 10,000-step plan;
- **profile** (``--profile``): the 100-concurrent-runs scenario again under cProfile.

Figures are only comparable within one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import logging
import math
import os
import platform
import pstats
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import psutil
from google.protobuf import struct_pb2

from podium.agent.v1 import agent_pb2, agent_pb2_grpc
from podium.orchestration.v1 import definition_pb2, event_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

THIS_FILE = str(Path(__file__).resolve())
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
RunEvent = event_pb2.RunEvent
TERMINAL_EVENTS = frozenset(
    {RunEvent.TYPE_RUN_COMPLETED, RunEvent.TYPE_RUN_FAILED, RunEvent.TYPE_RUN_CANCELLED}
)
SCENARIO_TIMEOUT_SECONDS = 600.0
ALL_PARTS = ("baseline", "a", "b", "c", "d", "create")

Receipts = dict[tuple[str, str, int], float]


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the JSON document)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


# --------------------------------------------------------------------------- no-op agent


class NoopAgent(agent_pb2_grpc.AgentServiceServicer):
    """ExecuteTask yields one ``result`` with an empty output; records receipt times."""

    def __init__(self) -> None:
        self.receipts: Receipts = {}
        self._response = agent_pb2.ExecuteTaskResponse(
            result=agent_pb2.TaskResult(output=struct_pb2.Struct())
        )
        self._progress = agent_pb2.ExecuteTaskResponse(
            progress=agent_pb2.Progress(message="working", fraction=0.5)
        )

    async def ExecuteTask(
        self, request: agent_pb2.ExecuteTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        self.receipts[(request.run_id, request.step_id, request.attempt)] = time.time()
        if request.labels:  # baseline variant: N-1 progress messages before the result
            for _ in range(int(request.labels.get("bench_messages", "1")) - 1):
                yield self._progress
        yield self._response

    async def GetAgentCard(
        self, request: agent_pb2.GetAgentCardRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.GetAgentCardResponse:
        return agent_pb2.GetAgentCardResponse(
            card=agent_pb2.AgentCard(name="noop", version="1", protocol_version="podium.agent.v1")
        )


async def start_agent_server(agent: NoopAgent) -> tuple[grpc.aio.Server, int]:
    """Serve ``agent`` on 127.0.0.1 (a free port)."""
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _write_receipts(path: str, receipts: Receipts) -> None:
    rows = [[r, s, a, t] for (r, s, a), t in receipts.items()]
    Path(path).write_text(json.dumps(rows))


def _read_receipts(path: str) -> Receipts:
    rows = json.loads(Path(path).read_text())
    return {(r, s, int(a)): float(t) for r, s, a, t in rows}


async def serve_agent_main() -> None:
    """Child process: serve the no-op agent; commands on stdin, replies on stdout.

    ``reset`` clears the receipts; ``dump PATH`` writes them as JSON to PATH and clears
    them. EOF on stdin stops the agent.
    """
    agent = NoopAgent()
    server, port = await start_agent_server(agent)
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command, _, argument = line.decode().strip().partition(" ")
        if command == "dump":
            _write_receipts(argument, agent.receipts)
            agent.receipts.clear()
        elif command == "reset":
            agent.receipts.clear()
        print(f"OK {command}", flush=True)
    await server.stop(0)


class AgentProcess:
    """The no-op agent in a child process (so its CPU is not the engine's)."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self._ps = psutil.Process(process.pid)

    @classmethod
    async def start(cls) -> AgentProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            THIS_FILE,
            "--serve-agent",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"the agent process did not start: {line!r}")
        return cls(process, int(line.split()[1]))

    async def _command(self, text: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()
        reply = await asyncio.wait_for(self.process.stdout.readline(), timeout=60)
        if not reply.startswith(b"OK"):
            raise RuntimeError(f"agent process: unexpected reply {reply!r}")

    async def reset(self) -> None:
        await self._command("reset")

    async def receipts(self) -> Receipts:
        """Receipt times since the last reset/dump (and clear them)."""
        with tempfile.TemporaryDirectory(prefix="podium-bench-") as tmp:
            path = os.path.join(tmp, "receipts.json")
            await self._command(f"dump {path}")
            return _read_receipts(path)

    def cpu_seconds(self) -> float:
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# --------------------------------------------------------------------------- baseline


def baseline_request(messages: int = 1) -> agent_pb2.ExecuteTaskRequest:
    """A request shaped like the engine's (ids, a small resolved input, labels)."""
    request = agent_pb2.ExecuteTaskRequest(
        task_id=str(uuid.uuid4()),
        run_id=str(uuid.uuid4()),
        step_id="p1",
        attempt=1,
        conversation_id=str(uuid.uuid4()),
        organization_id="default",
        definition_name="bench-dag10",
        definition_version=1,
    )
    request.input.update({"i": 1, "upstream": {}})
    if messages > 1:
        request.labels["bench_messages"] = str(messages)
    return request


async def call_loop(
    address: str, inflight: int, seconds: float, messages: int = 1
) -> dict[str, Any]:
    """``inflight`` workers calling ExecuteTask back to back for ``seconds`` (after a
    short warm-up), each call streaming ``messages`` messages; returns calls/s and this
    process's CPU per call."""
    request = baseline_request(messages)
    me = psutil.Process()
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub: agent_pb2_grpc.AgentServiceAsyncStub = agent_pb2_grpc.AgentServiceStub(channel)
        count = 0

        async def worker(deadline: float, counted: bool) -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                call = stub.ExecuteTask(request, timeout=30)
                while True:
                    message = await call.read()
                    if not isinstance(message, agent_pb2.ExecuteTaskResponse):
                        break  # grpc.aio.EOF
                if counted:
                    count += 1

        warmup = time.perf_counter() + min(1.0, seconds / 2)
        await asyncio.gather(*(worker(warmup, False) for _ in range(inflight)))
        cpu0 = me.cpu_times()
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(worker(deadline, True) for _ in range(inflight)))
        elapsed = time.perf_counter() - started
        cpu1 = me.cpu_times()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {
        "calls_per_s": round(count / elapsed, 1),
        "calls": count,
        "seconds": round(elapsed, 3),
        "inflight": inflight,
        "bench_process_cpu_ms_per_call": round(1000 * cpu / max(count, 1), 4),
        "bench_process_cpu_utilization": round(cpu / elapsed, 3),
    }


async def baseline_separate(agent: AgentProcess, sizes: Sizes, messages: int = 1) -> dict[str, Any]:
    """Client here, no-op agent in the child process."""
    agent_cpu0 = agent.cpu_seconds()
    result = await call_loop(agent.address, sizes.inflight, sizes.baseline_seconds, messages)
    agent_cpu = agent.cpu_seconds() - agent_cpu0
    # The agent's CPU includes the warm-up; scale by the counted share of the calls.
    result["layout"] = "client in this process, agent in a child process"
    result["agent_process_cpu_utilization_incl_warmup"] = round(
        agent_cpu / (result["seconds"] + min(1.0, sizes.baseline_seconds / 2)), 3
    )
    await agent.reset()
    return result


async def baseline_same_process(sizes: Sizes, messages: int = 1) -> dict[str, Any]:
    """Client and no-op agent in this process, one event loop."""
    agent = NoopAgent()
    server, port = await start_agent_server(agent)
    try:
        result = await call_loop(
            f"127.0.0.1:{port}", sizes.inflight, sizes.baseline_seconds, messages
        )
    finally:
        await server.stop(0)
    result["layout"] = "client and agent in this process (one event loop)"
    result.pop("bench_process_cpu_ms_per_call")
    return result


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


# --------------------------------------------------------------------------- measurement helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0}
    return {
        "n": len(seconds),
        "p50_ms": round(1000 * percentile(seconds, 50), 2),
        "p90_ms": round(1000 * percentile(seconds, 90), 2),
        "p99_ms": round(1000 * percentile(seconds, 99), 2),
        "max_ms": round(1000 * max(seconds), 2),
        "mean_ms": round(1000 * sum(seconds) / len(seconds), 2),
    }


def event_time(event: event_pb2.RunEvent) -> float:
    return event.time.seconds + event.time.nanos * 1e-9


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
class CallStats:
    """Count, rows and time of one repository method (the engine's DB round trips)."""

    calls: int = 0
    empty: int = 0
    rows: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0

    def record(self, rows: int, seconds: float) -> None:
        self.calls += 1
        self.rows += rows
        self.empty += rows == 0
        self.seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)

    def summary(self, steps: int) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "empty_calls": self.empty,
            "rows": self.rows,
            "rows_per_call": round(self.rows / self.calls, 2) if self.calls else 0,
            "mean_ms": round(1000 * self.seconds / self.calls, 3) if self.calls else 0,
            "max_ms": round(1000 * self.max_seconds, 3),
            "total_s": round(self.seconds, 3),
            "calls_per_step": round(self.calls / steps, 4) if steps else 0,
        }


class RepositoryProbe:
    """Times the engine's transactional calls by wrapping the scheduler's repository
    instance (bench-only instrumentation; the server code is unchanged)."""

    def __init__(self, repository: Any) -> None:
        self.stats: dict[str, CallStats] = {}
        self.available = repository is not None
        if repository is None:
            return
        for name, count_rows in (
            ("claim", len),
            ("complete", None),
            ("create", None),
            ("get_with_steps", None),
            ("list_events", len),
            ("get", None),
        ):
            original = getattr(repository, name, None)
            if original is not None:
                setattr(repository, name, self._wrap(name, original, count_rows))

    def _wrap(
        self,
        name: str,
        original: Callable[..., Awaitable[Any]],
        count_rows: Callable[[Any], int] | None,
    ) -> Callable[..., Awaitable[Any]]:
        stats = self.stats.setdefault(name, CallStats())

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = await original(*args, **kwargs)
            if name == "complete":
                rows = len(args[0]) if args else len(kwargs.get("outcomes", ()))
            elif count_rows is not None:
                rows = count_rows(result)
            else:
                rows = 1
            stats.record(rows, time.perf_counter() - started)
            return result

        return wrapped

    def snapshot(self) -> dict[str, CallStats]:
        return {name: CallStats(**asdict(s)) for name, s in self.stats.items()}

    @staticmethod
    def delta(before: dict[str, CallStats], after: dict[str, CallStats]) -> dict[str, CallStats]:
        out = {}
        for name, a in after.items():
            b = before.get(name, CallStats())
            out[name] = CallStats(
                calls=a.calls - b.calls,
                empty=a.empty - b.empty,
                rows=a.rows - b.rows,
                seconds=a.seconds - b.seconds,
                max_seconds=a.max_seconds,  # max over the whole benchmark so far
            )
        return out


StepKey = tuple[str, str, int]


class TimelineProbe:
    """Engine-side timestamps per step attempt (``time.time()``, the clock of the event
    times and the agent's receipts): when the claim that leased it returned, when the
    scheduler called the agent and when that call returned. Wraps the scheduler's
    repository ``claim`` and the engine's ``AgentClient.execute`` (bench only)."""

    def __init__(self, scheduler: Any, agent_client: Any) -> None:
        self.claim_returned: dict[StepKey, float] = {}
        self.call_started: dict[StepKey, float] = {}
        self.call_returned: dict[StepKey, float] = {}
        repository = getattr(scheduler, "_repository", None)
        claim = getattr(repository, "claim", None)
        if claim is not None:

            async def timed_claim(*args: Any, **kwargs: Any) -> Any:
                rows = await claim(*args, **kwargs)
                now = time.time()
                for row in rows:
                    self.claim_returned[(str(row.run_id), row.step_id, row.attempt)] = now
                return rows

            setattr(repository, "claim", timed_claim)  # noqa: B010
        execute = getattr(agent_client, "execute", None)
        if execute is not None:

            async def timed_execute(endpoint: str, request: Any, **kwargs: Any) -> Any:
                key = (request.run_id, request.step_id, request.attempt)
                self.call_started[key] = time.time()
                try:
                    return await execute(endpoint, request, **kwargs)
                finally:
                    self.call_returned[key] = time.time()

            setattr(agent_client, "execute", timed_execute)  # noqa: B010

    def take(self) -> tuple[dict[StepKey, float], dict[StepKey, float], dict[StepKey, float]]:
        """The timestamps recorded since the last call (and forget them)."""
        out = (self.claim_returned, self.call_started, self.call_returned)
        self.claim_returned, self.call_started, self.call_returned = {}, {}, {}
        return out


@dataclass
class CpuSnapshot:
    wall: float
    bench: float
    loop_thread: float
    agent: float
    backends: dict[int, float] = field(default_factory=dict)


class CpuMeter:
    """CPU seconds of this process, the agent process and the database's backends."""

    def __init__(self, agent: AgentProcess, admin: asyncpg.Connection[Any], dbname: str) -> None:
        self._agent = agent
        self._admin = admin
        self._dbname = dbname
        self._me = psutil.Process()

    async def snapshot(self) -> CpuSnapshot:
        times = self._me.cpu_times()
        loop_tid = threading.get_native_id()
        loop_thread = sum(
            t.user_time + t.system_time for t in self._me.threads() if t.id == loop_tid
        )
        backends: dict[int, float] = {}
        pids = await self._admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self._dbname
        )
        for row in pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(row["pid"]).cpu_times()
                backends[row["pid"]] = t.user + t.system
        return CpuSnapshot(
            wall=time.time(),
            bench=times.user + times.system,
            loop_thread=loop_thread,
            agent=self._agent.cpu_seconds(),
            backends=backends,
        )

    @staticmethod
    def delta(before: CpuSnapshot, after: CpuSnapshot, steps: int) -> dict[str, Any]:
        wall = after.wall - before.wall
        pg = sum(t - before.backends.get(pid, 0.0) for pid, t in after.backends.items())
        seconds = {
            "engine_process": after.bench - before.bench,
            "engine_event_loop_thread": after.loop_thread - before.loop_thread,
            "agent_process": after.agent - before.agent,
            "postgres_backends": pg,
        }
        out: dict[str, Any] = {"window_s": round(wall, 3)}
        for key, value in seconds.items():
            out[f"{key}_cpu_s"] = round(value, 3)
            out[f"{key}_utilization"] = round(value / wall, 3) if wall > 0 else 0
            out[f"{key}_cpu_ms_per_step"] = round(1000 * value / steps, 4) if steps else 0
        total = sum(v for k, v in seconds.items() if k != "engine_event_loop_thread")
        out["total_cpu_utilization_of_all_cores"] = round(total / (wall * (os.cpu_count() or 1)), 3)
        return out


# --------------------------------------------------------------------------- postgres side

_QUERY_KINDS: tuple[tuple[str, str], ...] = (
    ("podium_claim_steps", "claim"),
    ("podium_complete_step", "complete"),
    ("podium_requeue_expired", "leases"),
    ("lease_expires_at", "leases"),
    ("INSERT INTO orchestration_runs", "create run"),
    ("INSERT INTO orchestration_steps", "create run"),
    ("podium_emit_event", "create run"),
    ("podium_start_run", "create run"),
    ("FROM orchestration_events", "read events"),
    ("FROM orchestration_steps", "read run"),
    ("FROM step_attempts", "read run"),
    ("FROM deliverables", "read run"),
    ("FROM orchestration_runs", "read run"),
    ("FROM orchestration_definitions", "definitions"),
)


def _query_kind(query: str) -> str:
    head = query.lstrip()[:6].upper()
    if head.startswith(("COMMIT", "BEGIN")):
        return f"{head.rstrip(';').strip()} (any transaction)"
    for needle, kind in _QUERY_KINDS:
        if needle in query:
            return kind
    return "other"


class Sampler:
    """Samples, every ``interval`` seconds while a scenario runs: what the database's
    backends are doing (``pg_stat_activity``: on CPU, waiting on a lock, on WAL I/O,
    idle in transaction), how busy the engine's pool is, and the scheduler's in-flight
    steps and completion queue."""

    def __init__(
        self,
        admin: asyncpg.Connection[Any],
        dbname: str,
        scheduler: Any,
        pool: Any,
        interval: float = 0.02,
    ) -> None:
        self._admin = admin
        self._dbname = dbname
        self._scheduler = scheduler
        self._pool = pool
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._reset()

    def _reset(self) -> None:
        self.samples = 0
        self.activity: dict[str, float] = {}
        self.by_kind: dict[str, dict[str, float]] = {}
        self.inflight: list[int] = []
        self.completion_queue: list[int] = []
        self.pool_in_use: list[int] = []
        self.pool_exhausted = 0

    async def _sample(self) -> None:
        rows = await self._admin.fetch(
            "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity "
            "WHERE datname = $1 AND backend_type = 'client backend'",
            self._dbname,
        )
        self.samples += 1
        for row in rows:
            state = row["state"] or ""
            if state == "idle":
                continue
            if state.startswith("idle in transaction"):
                what = "idle in transaction (waiting for the engine)"
            elif row["wait_event_type"] is None:
                what = "active: on CPU"
            else:
                what = f"active: waiting {row['wait_event_type']}:{row['wait_event']}"
            self.activity[what] = self.activity.get(what, 0) + 1
            kind = self.by_kind.setdefault(_query_kind(row["query"] or ""), {})
            kind[what] = kind.get(what, 0) + 1
        completions = getattr(self._scheduler, "_completions", None)
        self.inflight.append(getattr(self._scheduler, "active_steps", 0))
        self.completion_queue.append(completions.qsize() if completions is not None else 0)
        if self._pool is not None:
            in_use = self._pool.get_size() - self._pool.get_idle_size()
            self.pool_in_use.append(in_use)
            self.pool_exhausted += in_use >= self._pool.get_max_size()

    async def _loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(asyncpg.PostgresError):
                await self._sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval)

    def start(self) -> None:
        self._reset()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stopping))

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
        n = max(self.samples, 1)

        def mean(values: list[int]) -> float:
            return round(sum(values) / len(values), 2) if values else 0.0

        slots = getattr(getattr(self._scheduler, "config", None), "slots", 0)
        return {
            "samples": self.samples,
            "interval_s": self._interval,
            "db_backends_mean_by_activity": {
                k: round(v / n, 3) for k, v in sorted(self.activity.items(), key=lambda kv: -kv[1])
            },
            "db_backends_mean_by_query": {
                kind: {k: round(v / n, 3) for k, v in sorted(acts.items(), key=lambda kv: -kv[1])}
                for kind, acts in sorted(self.by_kind.items())
            },
            "engine_inflight_steps_mean": mean(self.inflight),
            "engine_inflight_steps_max": max(self.inflight, default=0),
            "engine_slots": slots,
            "share_of_samples_at_slot_limit": round(
                sum(1 for x in self.inflight if slots and x >= slots) / n, 3
            ),
            "completion_queue_mean": mean(self.completion_queue),
            "completion_queue_max": max(self.completion_queue, default=0),
            "pool_in_use_mean": mean(self.pool_in_use),
            "share_of_samples_pool_exhausted": round(self.pool_exhausted / n, 3),
        }


_STATS_QUERY = """
SELECT json_build_object(
  'db', (SELECT row_to_json(d) FROM (
          SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted,
                 tup_updated, blks_hit, blks_read, deadlocks
            FROM pg_stat_database WHERE datname = current_database()) d),
  'functions', (SELECT json_object_agg(funcname, json_build_object(
                  'calls', calls, 'total_ms', total_time, 'self_ms', self_time))
                  FROM pg_stat_user_functions),
  'tables', (SELECT json_object_agg(relname, json_build_object(
               'n_tup_ins', n_tup_ins, 'n_tup_upd', n_tup_upd, 'n_tup_hot_upd', n_tup_hot_upd,
               'seq_scan', seq_scan, 'seq_tup_read', seq_tup_read, 'idx_scan', idx_scan,
               'idx_tup_fetch', idx_tup_fetch))
               FROM pg_stat_user_tables
              WHERE relname IN ('orchestration_runs', 'orchestration_steps',
                                'orchestration_events', 'step_attempts')))::text
"""


def _diff(after: Any, before: Any) -> Any:
    if isinstance(after, dict):
        b = before if isinstance(before, dict) else {}
        return {k: _diff(v, b.get(k)) for k, v in after.items()}
    if isinstance(after, int | float) and not isinstance(after, bool):
        return after - (before if isinstance(before, int | float) else 0)
    return after


class PgStats:
    """Cumulative statistics of the benchmark database (``pg_stat_database``,
    ``pg_stat_user_functions`` with ``track_functions = 'pl'`` set on the database,
    ``pg_stat_user_tables``). Backends publish their counters at most once a second, so
    :meth:`snapshot` first waits a second and has every pooled connection run a query."""

    def __init__(self, conn: asyncpg.Connection[Any], pool: Any) -> None:
        self._conn = conn
        self._pool = pool
        self.last: dict[str, Any] | None = None
        """The snapshot taken at the end of the last scenario, while nothing ran since."""

    async def _flush(self) -> None:
        await asyncio.sleep(1.1)
        if self._pool is None:
            return
        count = self._pool.get_size()
        held: list[Any] = []
        try:
            for _ in range(count):
                held.append(await asyncio.wait_for(self._pool.acquire(), timeout=5))
            for conn in held:
                await conn.fetchval("SELECT 1")
        except TimeoutError:
            pass
        finally:
            for conn in held:
                await self._pool.release(conn)

    async def snapshot(self) -> dict[str, Any]:
        await self._flush()
        data: dict[str, Any] = json.loads(await self._conn.fetchval(_STATS_QUERY))
        return data

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any], steps: int) -> dict[str, Any]:
        d = _diff(after, before)
        steps = max(steps, 1)
        db = d.get("db") or {}
        functions = {
            name: {
                "calls_per_step": round(f["calls"] / steps, 3),
                "total_ms_per_step": round(f["total_ms"] / steps, 4),
                "self_ms_per_step": round(f["self_ms"] / steps, 4),
                "mean_ms_per_call": round(f["total_ms"] / f["calls"], 3) if f["calls"] else 0,
            }
            for name, f in (d.get("functions") or {}).items()
            if f.get("calls")
        }
        tables = {
            name: {k: round(v / steps, 2) for k, v in t.items()}
            for name, t in (d.get("tables") or {}).items()
        }
        return {
            "commits_per_step": round(db.get("xact_commit", 0) / steps, 3),
            "rollbacks": db.get("xact_rollback", 0),
            "deadlocks": db.get("deadlocks", 0),
            "rows_fetched_per_step": round(db.get("tup_fetched", 0) / steps, 1),
            "rows_returned_per_step": round(db.get("tup_returned", 0) / steps, 1),
            "rows_inserted_per_step": round(db.get("tup_inserted", 0) / steps, 2),
            "rows_updated_per_step": round(db.get("tup_updated", 0) / steps, 2),
            "buffer_hits_per_step": round(db.get("blks_hit", 0) / steps, 1),
            "functions": functions,
            "tables_per_step": tables,
        }


# --------------------------------------------------------------------------- engine


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


async def wal_lsn(admin: asyncpg.Connection[Any]) -> str:
    return str(await admin.fetchval("SELECT pg_current_wal_lsn()::text"))


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


# --------------------------------------------------------------------------- profile


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        index = path.find(marker)
        if index >= 0:
            return path[index + len(marker) :]
    return path


def _label(key: tuple[str, int, str]) -> str:
    file, line, func = key
    if file == "~":
        return func
    return f"{_short(file)}:{line}({func})"


_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (epoll wait)", ("select.epoll", "poll' of 'select")),
    ("socket send/recv syscalls", ("_socket.socket",)),
    ("protobuf", ("google/protobuf", "google._upb", "_upb._message", "upb")),
    ("json", ("/json/", "_json")),
    ("asyncpg", ("asyncpg",)),
    ("grpc", ("grpc", "cygrpc")),
    ("podium engine/storage/api", ("server/",)),
    ("bench driver", ("bench/",)),
    ("asyncio", ("asyncio/", "_asyncio", "selectors.py", "_contextvars", "events.py")),
    ("uuid/datetime", ("uuid.py", "datetime", "_strptime")),
)


def _category(key: tuple[str, int, str]) -> str:
    text = f"{key[0]} {key[2]}"
    for name, needles in _CATEGORIES:
        if any(n in text for n in needles):
            return name
    return "other"


def profile_summary(profiler: cProfile.Profile, limit: int = 15) -> dict[str, Any]:
    """Top entries by cumulative and by own time, and own time per category."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(e[2] for e in entries.values())

    def row(key: tuple[str, int, str]) -> dict[str, Any]:
        cc, nc, tt, ct, _ = entries[key]
        return {
            "function": _label(key),
            "ncalls": nc,
            "tottime_s": round(tt, 3),
            "cumtime_s": round(ct, 3),
        }

    plumbing = ("asyncio/", "selectors.py", "bench/engine.py", "_contextvars")
    by_cum = sorted(
        (k for k in entries if not any(p in f"{k[0]} {k[2]}" for p in plumbing)),
        key=lambda k: entries[k][3],
        reverse=True,
    )
    by_tot = sorted(entries, key=lambda k: entries[k][2], reverse=True)
    categories: dict[str, float] = {}
    for key, entry in entries.items():
        cat = _category(key)
        categories[cat] = categories.get(cat, 0.0) + entry[2]
    busy = total - categories.get("idle (epoll wait)", 0.0)
    return {
        "total_profiled_s": round(total, 3),
        "busy_s": round(busy, 3),
        "own_time_by_category": {
            k: {"s": round(v, 3), "share_of_busy": round(v / busy, 3) if busy else 0}
            for k, v in sorted(categories.items(), key=lambda kv: -kv[1])
            if k != "idle (epoll wait)"
        }
        | {"idle (epoll wait)": {"s": round(categories.get("idle (epoll wait)", 0.0), 3)}},
        "top_cumulative_excluding_asyncio_plumbing": [row(k) for k in by_cum[:limit]],
        "top_tottime": [row(k) for k in by_tot[:limit]],
    }


# --------------------------------------------------------------------------- main


async def create_database(admin: asyncpg.Connection[Any], server_url: str) -> tuple[str, str]:
    name = f"podium_bench_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return name, urlunsplit(urlsplit(server_url)._replace(path="/" + name))


async def machine_info(admin: asyncpg.Connection[Any]) -> dict[str, Any]:
    settings = {
        r["name"]: r["setting"]
        for r in await admin.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            ["fsync", "synchronous_commit", "jit", "shared_buffers", "shared_preload_libraries"],
        )
    }
    import google.protobuf

    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "asyncpg": asyncpg.__version__,
        "event_loop": type(asyncio.get_running_loop()).__module__,
        "postgres": await admin.fetchval("SHOW server_version"),
        "postgres_settings": settings,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from podium.server.app import PodiumServer
    from podium.server.config import Settings

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
            baseline["separate_process"] = {"before": await baseline_separate(agent, sizes)}
            baseline["same_process"] = await baseline_same_process(sizes)
            # DESIGN.md's figure streams 5 messages per call; measured here for reference.
            baseline["same_process_5_messages"] = await baseline_same_process(sizes, 5)
            baseline["separate_process_5_messages"] = await baseline_separate(agent, sizes, 5)
            progress(
                f"baseline: {baseline['separate_process']['before']['calls_per_s']} calls/s "
                f"(agent in a child process), {baseline['same_process']['calls_per_s']} calls/s "
                "(same process)"
            )

        dbname, dsn = await create_database(admin, args.database_url)
        # Function-level timings (pg_stat_user_functions) for this database only.
        await admin.execute(f"ALTER DATABASE \"{dbname}\" SET track_functions = 'pl'")
        progress(f"database {dbname}")
        settings = Settings.from_env(
            {},
            database_url=dsn,
            listen_address="127.0.0.1:0",
            agents=f"noop={agent.address}",
            default_max_parallel=8,
            worker_slots=args.worker_slots,
            db_pool_max_size=args.db_pool_max_size,
            log_level="warning",
            shutdown_grace_seconds=0.0,
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
        server = PodiumServer(settings)
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
            separate["after"] = await baseline_separate(agent, sizes)
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
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
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
            "ratio_vs_same_process_baseline": ratio.get("vs_same_process_baseline", {}).get(name),
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
    """Engine steps/s over baseline calls/s, per scenario and per baseline layout."""
    result: dict[str, Any] = {}
    base = out.get("baseline", {})
    for layout in ("separate_process", "same_process"):
        calls = base.get(layout, {}).get("calls_per_s")
        if not calls:
            continue
        result[f"vs_{layout}_baseline"] = {
            name: round(s["steps_per_s"] / calls, 3) for name, s in out.get("engine", {}).items()
        }
    result["baseline_used"] = (
        "separate_process: mean of the runs before and after the engine scenarios"
    )
    result["target"] = ">= 0.6 for the concurrent scenarios (issue)"
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
