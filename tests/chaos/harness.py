"""The chaos suite's world: a PostgreSQL cluster of its own (and a synchronous standby
or a PgBouncer where the scenario needs them), agents as OS processes restarted by a
supervisor when they die, two ``podium serve`` replicas, and a load of runs started
over a few seconds. :meth:`World.outcome` then counts, from the database and the
agent's own log, what the fault cost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.pg_cluster import Cluster, free_port, workdir
from tests.integration.pgbouncer import PgBouncer
from tests.integration.processes import PodiumProcess, start_podium
from tests.integration.runs_helpers import create_definition, start_run

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("a", "b", "c", "d")
LEASE_SECONDS = 2.0
# Retries are for faults that fail a call (an agent killed mid-call, a lost lease); an
# agent that is down between calls is waited for (PODIUM_AGENT_WAIT_SECONDS) and costs
# no attempt.
RETRY = {"max_attempts": 3, "backoff": {"initial_seconds": 0.2, "max_seconds": 1.0}}
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class Outcome:
    """One row of the chaos table."""

    scenario: str
    runs: int
    succeeded: int = 0
    lost_or_stuck: int = 0
    completed_twice: int = 0
    event_gaps: int = 0
    re_executed: int = 0
    stall_seconds: float | None = None
    poison_failed: bool | None = None

    def ok(self) -> bool:
        return (
            self.lost_or_stuck == 0
            and self.completed_twice == 0
            and self.event_gaps == 0
            and self.poison_failed in (None, True)
        )


@dataclass
class AgentProcess:
    """An agent process (tests/chaos/agent.py) that a supervisor restarts when it dies,
    on the same port, after ``restart_delay`` seconds (as an orchestrator would)."""

    name: str
    log: Path
    crash: bool = False
    restart_delay: float = 0.5
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _supervisor: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._spawn()
        await self._ready()
        self._supervisor = asyncio.create_task(self._supervise())

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "tests.chaos.agent", "--name", self.name]
        command += ["--port", str(self.port), "--log", str(self.log)]
        if self.crash:
            command.append("--crash")
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)

    async def _ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _supervise(self) -> None:
        while True:
            assert self.process is not None
            await asyncio.to_thread(self.process.wait)
            await asyncio.sleep(self.restart_delay)
            self.restarts += 1
            self._spawn()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def calls(self) -> list[tuple[str, str, str, str]]:
        """(event, run, step, attempt) of every line the agent logged."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [tuple(line.split(" ")) for line in lines if line.count(" ") == 3]  # type: ignore[misc]


@dataclass
class World:
    """Everything one scenario runs on; build with :func:`world`."""

    root: Path
    primary: Cluster
    standby: Cluster | None
    bouncer: PgBouncer | None
    worker: AgentProcess
    poison: AgentProcess | None
    replicas: list[PodiumProcess]
    env: dict[str, str]
    run_ids: list[str] = field(default_factory=list)
    poison_run: str | None = None

    @property
    def direct_url(self) -> str:
        """The database itself (both hosts when there is a standby)."""
        if self.standby is None:
            return self.primary.url("podium")
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/podium?target_session_attrs=read-write"

    async def restart_replica(self, index: int) -> None:
        """Start a new replica in place of replica ``index`` (after it was killed)."""
        log = self.root / f"replica-{index}-{len(self.replicas)}.log"
        self.replicas[index] = await start_podium(self.env, log)

    async def start_runs(self, count: int, *, over_seconds: float) -> None:
        """Start ``count`` runs (each with a request_id) spread over ``over_seconds``,
        alternating replicas and retrying on the other while one is away."""
        for i in range(count):
            self.run_ids.append(await self._start(i))
            await asyncio.sleep(over_seconds / count)

    async def _start(self, i: int) -> str:
        deadline = time.monotonic() + 120
        while True:
            replica = self.replicas[(i + int(time.monotonic() * 10)) % len(self.replicas)]
            try:
                async with grpc.aio.insecure_channel(replica.address) as channel:
                    stub = pb_grpc.OrchestrationServiceStub(channel)
                    response = await start_run(
                        stub, "chaos", input={"i": i}, request_id=f"chaos-{i}"
                    )
                    return str(response.run.id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run ``sql`` on whichever host is read-write, retrying while none is."""
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = await asyncpg.connect(self.direct_url, timeout=5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

    async def succeeded(self) -> int:
        rows = await self.query(
            "SELECT count(*) AS n FROM orchestration_runs WHERE state = 'succeeded'"
            " AND id = ANY($1::uuid[])",
            self.run_ids,
        )
        return int(rows[0]["n"])

    async def wait_finished(self, expected: int, within: float) -> None:
        """Until ``expected`` runs are terminal (or ``within`` seconds pass)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            rows = await self.query(
                "SELECT count(*) AS n FROM orchestration_runs"
                " WHERE state IN ('succeeded', 'failed', 'cancelled')"
            )
            if rows[0]["n"] >= expected:
                return
            await asyncio.sleep(0.25)

    async def outcome(self, scenario: str, fault_at: float) -> Outcome:
        """Count what the fault cost (``fault_at``: epoch seconds of the fault)."""
        result = Outcome(scenario, runs=len(self.run_ids))
        runs = await self.query("SELECT id::text AS id, state FROM orchestration_runs")
        states = {r["id"]: r["state"] for r in runs}
        result.succeeded = sum(states.get(run_id) == "succeeded" for run_id in self.run_ids)
        result.lost_or_stuck = result.runs - result.succeeded
        if self.poison_run is not None:
            result.poison_failed = states.get(self.poison_run) == "failed"
        completed = await self.query(
            "SELECT run_id::text AS run, step_id, count(*) AS n FROM orchestration_events"
            " WHERE type = 'step.completed' GROUP BY 1, 2"
        )
        result.completed_twice = sum(r["n"] > 1 for r in completed)
        gaps = await self.query(
            "SELECT count(*) AS n FROM (SELECT run_id, max(sequence) AS top, count(*) AS c"
            " FROM orchestration_events GROUP BY run_id) s WHERE top <> c"
        )
        result.event_gaps = int(gaps[0]["n"])
        done = Counter(
            (run, step) for event, run, step, _ in self.worker.calls() if event == "done"
        )
        result.re_executed = sum(n - 1 for n in done.values() if n > 1)
        stall = await self.query(
            "SELECT max(gap) AS s FROM (SELECT t - coalesce(lag(t) OVER (ORDER BY t), $1)"
            " AS gap FROM (SELECT extract(epoch FROM created_at)::float8 AS t"
            " FROM orchestration_events WHERE type = 'step.completed'"
            " AND created_at > to_timestamp($1)) c) g",
            fault_at,
        )
        longest = stall[0]["s"]
        result.stall_seconds = None if longest is None else round(float(longest), 2)
        return result


@contextlib.asynccontextmanager
async def world(
    name: str, *, standby: bool = False, bouncer: bool = False, poison: bool = False
) -> AsyncIterator[World]:
    """Build a scenario's world and tear it all down afterwards."""
    root = workdir(f"podium-chaos-{name}-")
    os.chmod(root, 0o777)
    primary = Cluster.primary(root)
    replica_cluster: Cluster | None = None
    pooler: PgBouncer | None = None
    agents: list[AgentProcess] = []
    replicas: list[PodiumProcess] = []
    try:
        if standby:
            primary.configure(synchronous_standby_names="*")
        primary.start()
        if standby:
            replica_cluster = primary.standby(root)
            replica_cluster.configure(synchronous_standby_names="")
            replica_cluster.start()
        admin = await asyncpg.connect(primary.url())
        await admin.execute("CREATE DATABASE podium")
        await admin.close()
        worker = AgentProcess("worker", root / "worker.log")
        agents.append(worker)
        await worker.start()
        poison_agent = None
        if poison:
            poison_agent = AgentProcess("poison", root / "poison.log", crash=True)
            agents.append(poison_agent)
            await poison_agent.start()
        probe = World(root, primary, replica_cluster, None, worker, poison_agent, [], {})
        env = {
            "PODIUM_DATABASE_URL": probe.direct_url,
            "PODIUM_LEASE_SECONDS": str(LEASE_SECONDS),
            "PODIUM_POLL_INTERVAL_SECONDS": "0.2",
            "PODIUM_SHUTDOWN_GRACE_SECONDS": "0",
            "PODIUM_AGENTS": ",".join(f"{a.name}={a.address};skills=work" for a in agents),
        }
        if bouncer:
            pooler = PgBouncer(primary.url("podium"), pool_mode="transaction", pool_size=10)
            pooler.start()
            env |= {
                "PODIUM_DATABASE_URL": pooler.url,
                "PODIUM_DATABASE_DIRECT_URL": primary.url("podium"),
                "PODIUM_DATABASE_POOL_MODE": "transaction",
            }
        for i in range(2):
            replicas.append(await start_podium(env, root / f"replica-{i}.log"))
        the_world = World(
            root, primary, replica_cluster, pooler, worker, poison_agent, replicas, env
        )
        async with grpc.aio.insecure_channel(replicas[0].address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            steps: list[dict[str, Any]] = []
            for i, step in enumerate(STEPS):
                steps.append(
                    {
                        "id": step,
                        "agent": "worker",
                        "input": {"seconds": 0.05},
                        "depends_on": [STEPS[i - 1]] if i else [],
                        "on_failure": RETRY,
                    }
                )
            await create_definition(stub, "chaos", steps)
            if poison:
                await create_definition(
                    stub,
                    "poison",
                    [
                        {
                            "id": "p",
                            "agent": "poison",
                            "on_failure": {"max_attempts": 3, "backoff": {"initial_seconds": 0.1}},
                        }
                    ],
                )
        yield the_world
    finally:
        for replica in replicas:
            await asyncio.to_thread(replica.cleanup)
        for agent in agents:
            await agent.stop()
        if pooler is not None:
            pooler.close()
        for cluster in (replica_cluster, primary):
            if cluster is not None:
                cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
