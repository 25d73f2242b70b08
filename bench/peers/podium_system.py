"""Podium in the side-by-side benchmark: the real server in a child process (``python -m
bench.peers.podium_serve``, with this checkout's interpreter or, for ``--baseline``,
another checkout's) on the benchmark's PostgreSQL (an external database URL, not the
embedded one), the no-op agent in another child process (``bench/harness/agent.py``),
and the driver here: StartRun through the generated stub, completion seen by polling
the runs' state on a separate connection."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from typing import Any

import asyncpg
import grpc
import psutil

from bench.harness.agent import REPOSITORY_ROOT, AgentProcess
from bench.harness.common import CHANNEL_OPTIONS
from bench.peers.budget import INFLIGHT
from bench.peers.common import System
from podium.orchestration.v1 import definition_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

# How often the driver asks whether its runs finished: W1's latency is quantized by it
# (half of it on average), W2's and W3's wall time by at most one interval.
POLL_W1_S = 0.001
POLL_BULK_S = 0.005


def chain_plan(name: str, steps: int) -> definition_pb2.Definition:
    plan = definition_pb2.Definition(name=name)
    plan.execution.concurrency.max_parallel = INFLIGHT
    for k in range(1, steps + 1):
        step = plan.steps.add(id=f"s{k}", agent="noop")
        if k > 1:
            step.depends_on.append(f"s{k - 1}")
        step.input.update({"i": k})
    return plan


def fanout_plan(name: str, width: int) -> definition_pb2.Definition:
    plan = definition_pb2.Definition(name=name)
    plan.execution.concurrency.max_parallel = INFLIGHT
    ids = [f"p{k}" for k in range(1, width + 1)]
    for k, step_id in enumerate(ids, start=1):
        plan.steps.add(id=step_id, agent="noop").input.update({"i": k})
    plan.steps.add(id="join", agent="noop", depends_on=ids)
    return plan


class PodiumSystem(System):
    """``watch``: also one WatchRuns stream (every event of the organization) open for
    the whole round, on a database whose statistics are never gathered (autovacuum off
    for Podium's tables; nothing runs ANALYZE): what one dashboard costs a new
    deployment."""

    name = "podium"

    def __init__(
        self, port: int, *, watch: bool = False, python: str = sys.executable, name: str = ""
    ) -> None:
        """``python``: the interpreter of the checkout whose server runs (its
        environment provides ``podium``); ``name``: the system's name in the figures."""
        self._port = port
        self._watch = watch
        self._python = python
        if watch:
            self.name = "podium-watch"
        if name:
            self.name = name
        self._watcher: asyncio.Task[None] | None = None
        self.watched_events = 0
        self._agent: AgentProcess | None = None
        self._server: asyncio.subprocess.Process | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.OrchestrationServiceAsyncStub | None = None
        self._poller: asyncpg.Connection[Any] | None = None
        self._refs: dict[tuple[str, int], pb.DefinitionRef] = {}
        self._polls = 0

    async def start(self, dsn: str) -> None:
        self._agent = await AgentProcess.start()
        self._server = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "bench.peers.podium_serve",
            dsn,
            f"noop={self._agent.address}",
            str(self._port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPOSITORY_ROOT,
        )
        assert self._server.stdout is not None
        line = await asyncio.wait_for(self._server.stdout.readline(), timeout=120)
        if not line.startswith(b"READY"):
            raise RuntimeError(f"the Podium server process did not start: {line!r}")
        self._channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{self._port}", options=CHANNEL_OPTIONS
        )
        self._stub = pb_grpc.OrchestrationServiceStub(self._channel)
        self._poller = await asyncpg.connect(dsn)
        if self._watch:
            for table in (
                "orchestration_runs",
                "orchestration_steps",
                "orchestration_events",
                "step_attempts",
            ):
                await self._poller.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            self._polls += 4
            self._watcher = asyncio.create_task(self._watch_runs())

    async def _watch_runs(self) -> None:
        assert self._stub is not None
        async for _ in self._stub.WatchRuns(pb.WatchRunsRequest()):
            self.watched_events += 1

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._watcher
        if self._channel is not None:
            await self._channel.close(None)
        if self._poller is not None:
            await self._poller.close()
        if self._server is not None and self._server.returncode is None:
            assert self._server.stdin is not None
            self._server.stdin.close()
            try:
                await asyncio.wait_for(self._server.wait(), timeout=30)
            except TimeoutError:
                self._server.kill()
                await self._server.wait()
        if self._agent is not None:
            await self._agent.stop()

    def processes(self) -> dict[str, psutil.Process]:
        assert self._server is not None and self._agent is not None
        return {
            "server": psutil.Process(self._server.pid),
            "agent": psutil.Process(self._agent.process.pid),
        }

    def excluded_backends(self) -> set[int]:
        return {self._poller.get_server_pid()} if self._poller is not None else set()

    def bookkeeping_commits(self) -> int:
        return self._polls

    async def flush_stats(self) -> int:
        assert self._server is not None and self._server.stdin is not None
        assert self._server.stdout is not None and self._poller is not None
        self._server.stdin.write(b"flush\n")
        await self._server.stdin.drain()
        reply = await asyncio.wait_for(self._server.stdout.readline(), timeout=30)
        await self._poller.fetchval("SELECT 1")
        return int(reply.split()[1]) + 1

    async def _ref(self, kind: str, n: int) -> pb.DefinitionRef:
        if (kind, n) not in self._refs:
            assert self._stub is not None
            name = f"bench-{kind}-{n}"
            plan = chain_plan(name, n) if kind == "chain" else fanout_plan(name, n)
            created = await self._stub.CreateDefinition(pb.CreateDefinitionRequest(definition=plan))
            self._refs[(kind, n)] = pb.DefinitionRef(
                name=created.definition.name, version=created.definition.version
            )
        return self._refs[(kind, n)]

    @property
    def agent(self) -> AgentProcess | None:
        """The no-op agent's process, once started."""
        return self._agent

    async def start_one(self, steps: int) -> str:
        """Start one run of ``steps`` sequential steps; its id."""
        return (await self._start(await self._ref("chain", steps), 1))[0]

    async def wait(self, run_ids: list[str], interval: float) -> None:
        """Until the runs finished, asking every ``interval`` seconds."""
        assert self._poller is not None
        ids = [uuid.UUID(r) for r in run_ids]
        deadline = time.monotonic() + 600
        while True:
            self._polls += 1
            unfinished = await self._poller.fetchval(
                "SELECT count(*) FROM orchestration_runs WHERE id = ANY($1::uuid[]) "
                "AND state NOT IN ('succeeded', 'failed', 'cancelled')",
                ids,
            )
            if unfinished == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{unfinished} Podium run(s) not finished after 600 s")
            await asyncio.sleep(interval)

    async def _start(self, ref: pb.DefinitionRef, count: int) -> list[str]:
        assert self._stub is not None
        request = pb.StartRunRequest(definition=ref, start=True)
        responses = await asyncio.gather(*(self._stub.StartRun(request) for _ in range(count)))
        return [r.run.id for r in responses]

    async def w1(self, steps: int, repeats: int) -> list[float]:
        ref = await self._ref("chain", steps)
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            await self.wait(await self._start(ref, 1), POLL_W1_S)
            out.append(time.perf_counter() - t0)
        return out

    async def w2(self, runs: int, steps: int) -> None:
        ref = await self._ref("chain", steps)
        await self.wait(await self._start(ref, runs), POLL_BULK_S)

    async def w3(self, width: int) -> None:
        ref = await self._ref("fanout", width)
        await self.wait(await self._start(ref, 1), POLL_BULK_S)

    async def warm(self) -> None:
        """Definitions created, channels and prepared statements warm."""
        await self.w1(2, 2)
