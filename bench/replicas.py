"""Scale-out benchmark: steps/s of 1, 2 and 4 ``podium serve`` replicas on one database.

Run ``.venv/bin/python bench/replicas.py [--database-url URL] [--runs 200] [--replicas
1,2,4] [--rounds N] [--podium LABEL=PATH ...]``; it prints ONE JSON document on stdout,
then a table on stderr (progress on stderr too). ``--podium`` names the ``podium``
executables to compare in one sitting (e.g. ``before=/path/of/main/.venv/bin/podium``),
each label on every replica count, interleaved, the order alternating between rounds
(default: this checkout's). See ``bench/README.md``.

Layout of one (label, replica count) round, on a fresh database
(``PODIUM_BENCH_DB_PREFIX`` + hex, dropped after):

- N ``podium serve`` processes (ports ``--base-port`` + i, JSON logs to a temporary
  file), the first one migrating the database; the no-op agent of
  ``bench/harness/agent.py`` in a child process, shared by every round;
- ``--runs`` runs of a chain of ``--steps`` steps on the agent, started by StartRun
  with 16 calls in flight, spread round-robin over the replicas; the round ends when
  every run is finished (one count query every 50 ms);
- **steps_per_s**: steps / (last run's end - first StartRun);
- **dispatch**: per step, the agent's receipt time minus the time of the step's
  ``step.queued`` event (both clocks of this machine), percentiles;
- **waits**: every 20 ms, ``pg_stat_activity`` + ungranted ``pg_locks`` of the
  database's client backends: per statement kind (claim, complete, StartRun, ...) the
  mean number of backends on CPU and waiting, by what they wait for (``advisory
  <classid>``: a transaction advisory lock, ``notify commit lock``: the lock every
  transaction that sent NOTIFY takes at commit, ``Lock:<event>`` otherwise);
- **cpu_ms_per_step**: CPU of the replicas, the database's backends and the agent per
  step (the machine is shared: CPU per step is the comparable figure when wall time is
  noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness.agent import AgentProcess
from bench.harness.common import CHANNEL_OPTIONS, DEFAULT_SERVER_URL, latency_summary, progress
from bench.harness.server import create_database, drop_database, machine_info
from podium.orchestration.v1 import definition_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

PODIUM = str(Path(sys.executable).parent / "podium")
NOTIFY_LOCK_CLASS = 1262  # pg_database: PreCommit_Notify locks the database object 0
_KINDS = (
    ("podium_claim_steps", "claim"),
    ("podium_complete_steps", "complete"),
    ("podium_create_run", "start run"),
    ("podium_requeue_expired", "leases"),
    ("lease_expires_at", "leases"),
)


def _kind(query: str) -> str:
    for needle, kind in _KINDS:
        if needle in query:
            return kind
    return "other"


class Replica:
    """One ``podium serve`` process logging to a file."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path, address: str) -> None:
        self.process = process
        self.log = log
        self.address = address
        self.ps = psutil.Process(process.pid)

    @classmethod
    async def start(cls, podium: str, env: dict[str, str], port: int, log: Path) -> Replica:
        address = f"127.0.0.1:{port}"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                podium,
                "serve",
                "--listen-address",
                address,
                env={**os.environ, **env},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=out,
            )
        deadline = time.monotonic() + 120
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if process.returncode is not None:
                    raise RuntimeError(f"podium serve exited (its log: {log})")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return cls(process, log, address)
                await asyncio.sleep(0.1)
        process.kill()
        raise RuntimeError(f"podium serve did not start (its log: {log})")

    def cpu_seconds(self) -> float:
        with contextlib.suppress(psutil.Error):
            times = self.ps.cpu_times()
            children = sum(c.cpu_times().user + c.cpu_times().system for c in self.ps.children())
            return float(times.user + times.system + children)
        return 0.0

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


class LockSampler:
    """What the database's client backends do, every ``interval`` seconds."""

    def __init__(self, conn: asyncpg.Connection[Any], dbname: str, interval: float = 0.02):
        self._conn = conn
        self._dbname = dbname
        self._interval = interval
        self.samples = 0
        self.by_kind: dict[str, dict[str, int]] = {}
        self.backend_pids: set[int] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(asyncpg.PostgresError):
                await self._sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval)

    async def _sample(self) -> None:
        rows = await self._conn.fetch(
            "SELECT a.pid, a.state, a.wait_event_type, a.wait_event, a.query,"
            " (SELECT l.locktype || ':' || coalesce(l.classid::text, '')"
            "    FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted LIMIT 1) AS waiting"
            " FROM pg_stat_activity a"
            " WHERE a.datname = $1 AND a.backend_type = 'client backend'"
            " AND a.pid <> pg_backend_pid()",
            self._dbname,
        )
        self.samples += 1
        for row in rows:
            self.backend_pids.add(row["pid"])
            if (row["state"] or "idle") == "idle":
                continue
            kind = self.by_kind.setdefault(_kind(row["query"] or ""), {})
            what = "on CPU" if row["wait_event_type"] is None else None
            if row["waiting"]:
                locktype, _, classid = row["waiting"].partition(":")
                if locktype == "advisory":
                    what = f"advisory {classid}"
                elif locktype == "object" and classid == str(NOTIFY_LOCK_CLASS):
                    what = "notify commit lock"
                else:
                    what = f"Lock:{locktype}"
            elif what is None:
                what = f"{row['wait_event_type']}:{row['wait_event']}"
            if (row["state"] or "").startswith("idle in transaction"):
                what = "idle in transaction"
            kind[what] = kind.get(what, 0) + 1

    def summary(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        out: dict[str, Any] = {"samples": self.samples}
        for kind, whats in sorted(self.by_kind.items()):
            total = sum(whats.values())
            out[kind] = {
                "backends_mean": round(total / n, 3),
                **{w: round(c / n, 3) for w, c in sorted(whats.items(), key=lambda kv: -kv[1])},
                "waiting_share": round(sum(c for w, c in whats.items() if w != "on CPU") / total, 3)
                if total
                else 0.0,
            }
        return out


def chain_plan(name: str, steps: int) -> definition_pb2.Definition:
    plan = definition_pb2.Definition(name=name)
    previous: list[str] = []
    for k in range(steps):
        step_id = f"s{k}"
        plan.steps.add(id=step_id, agent="noop", depends_on=previous).input.update({"k": k})
        previous = [step_id]
    return plan


async def backend_cpu(pids: set[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


async def one_round(
    args: argparse.Namespace,
    admin: asyncpg.Connection[Any],
    agent: AgentProcess,
    label: str,
    podium: str,
    count: int,
    logs: Path,
) -> dict[str, Any]:
    dbname, dsn = await create_database(admin, args.database_url)
    replicas: list[Replica] = []
    channels: list[grpc.aio.Channel] = []
    sampler_conn = await asyncpg.connect(dsn)
    try:
        env = {
            "PODIUM_DATABASE_URL": dsn,
            "PODIUM_AGENTS": f"noop={agent.address}",
            "PODIUM_AGENT_ALLOWED_NETWORKS": "loopback",
            "PODIUM_AUTH": "disabled",
            "PODIUM_LOG_FORMAT": "json",
            "PODIUM_LOG_LEVEL": "warning",
            "PODIUM_SHUTDOWN_GRACE_SECONDS": "0",
        }
        for i in range(count):
            log = logs / f"{label}-{count}-{i}.log"
            replicas.append(await Replica.start(podium, env, args.base_port + i, log))
        channels = [grpc.aio.insecure_channel(r.address, options=CHANNEL_OPTIONS) for r in replicas]
        stubs = [pb_grpc.OrchestrationServiceStub(c) for c in channels]
        created = await stubs[0].CreateDefinition(
            pb.CreateDefinitionRequest(definition=chain_plan("bench-chain", args.steps))
        )
        ref = pb.DefinitionRef(name=created.definition.name, version=created.definition.version)
        # Warm-up: every replica's channels, statements and definition cache.
        for stub in stubs:
            await stub.StartRun(pb.StartRunRequest(definition=ref, start=True))
        await wait_finished(sampler_conn, count)
        await agent.receipts()

        sampler = LockSampler(await asyncpg.connect(dsn), dbname)
        stopping = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stopping))
        await asyncio.sleep(0.1)
        cpu0 = {i: r.cpu_seconds() for i, r in enumerate(replicas)}
        agent0 = agent.cpu_seconds()
        pg0 = await backend_cpu(sampler.backend_pids)
        began = time.time()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.runs):
            queue.put_nowait(i)

        async def starter() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await stubs[i % count].StartRun(pb.StartRunRequest(definition=ref, start=True))

        await asyncio.gather(*(starter() for _ in range(16)))
        await wait_finished(sampler_conn, count + args.runs)
        ended = time.time()
        pg1 = await backend_cpu(sampler.backend_pids)
        cpu1 = {i: r.cpu_seconds() for i, r in enumerate(replicas)}
        agent1 = agent.cpu_seconds()
        stopping.set()
        await sampling
        receipts = await agent.receipts()
        queued = {
            (str(r["run_id"]), r["step_id"]): r["at"]
            for r in await sampler_conn.fetch(
                "SELECT run_id, step_id, extract(epoch FROM created_at)::float8 AS at"
                " FROM orchestration_events WHERE type = 'step.queued'"
                " AND created_at >= to_timestamp($1)",
                began,
            )
        }
        dispatch = [
            at - queued[(run_id, step_id)]
            for (run_id, step_id, _), at in receipts.items()
            if (run_id, step_id) in queued
        ]
        steps = args.runs * args.steps
        wall = ended - began
        replica_cpu = sum(cpu1[i] - cpu0[i] for i in cpu1)
        pg_cpu = sum(t - pg0.get(pid, 0.0) for pid, t in pg1.items())
        agent_cpu = agent1 - agent0
        claimed = [
            r["lease_owner"]
            for r in await sampler_conn.fetch(
                "SELECT DISTINCT split_part(lease_owner, ':', 2) AS lease_owner"
                " FROM orchestration_steps WHERE lease_owner IS NOT NULL"
            )
        ]
        await sampler._conn.close()
        return {
            "label": label,
            "replicas": count,
            "runs": args.runs,
            "steps": steps,
            "wall_s": round(wall, 3),
            "steps_per_s": round(steps / wall, 1),
            "dispatch": latency_summary(dispatch),
            "cpu_ms_per_step": {
                "replicas": round(1000 * replica_cpu / steps, 3),
                "postgres": round(1000 * pg_cpu / steps, 3),
                "agent": round(1000 * agent_cpu / steps, 3),
                "total": round(1000 * (replica_cpu + pg_cpu + agent_cpu) / steps, 3),
            },
            "cpu_utilization_of_all_cores": round(
                (replica_cpu + pg_cpu + agent_cpu) / (wall * (os.cpu_count() or 1)), 3
            ),
            "replicas_holding_leases_at_end": len(claimed),
            "waits": sampler.summary(),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        for channel in channels:
            await channel.close(None)
        for replica in replicas:
            await replica.stop()
        await sampler_conn.close()
        await drop_database(admin, dbname)


async def wait_finished(conn: asyncpg.Connection[Any], runs: int, within: float = 600) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done = await conn.fetchval(
            "SELECT count(*) FROM orchestration_runs WHERE state IN ('succeeded', 'failed',"
            " 'cancelled')"
        )
        if done >= runs:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"runs not finished within {within}s")


def table(rounds: list[dict[str, Any]]) -> str:
    lines = [
        f"{'label':<10} {'replicas':>8} {'steps/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu ms/step':>11} {'claim wait':>10} {'claim adv':>9} {'notify waiters':>14}"
    ]
    for r in rounds:
        claim = r["waits"].get("claim", {})
        advisory = sum(v for k, v in claim.items() if k.startswith("advisory"))
        notify = sum(
            kind.get("notify commit lock", 0)
            for kind in r["waits"].values()
            if isinstance(kind, dict)
        )
        lines.append(
            f"{r['label']:<10} {r['replicas']:>8} {r['steps_per_s']:>8} "
            f"{r['dispatch'].get('p50_ms', 0):>8} {r['dispatch'].get('p99_ms', 0):>8} "
            f"{r['cpu_ms_per_step']['total']:>11} {claim.get('waiting_share', 0):>10} "
            f"{round(advisory, 3):>9} {round(notify, 3):>14}"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_SERVER_URL)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--base-port", type=int, default=21100)
    parser.add_argument("--podium", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every (count, label)")
    args = parser.parse_args()
    podiums = [tuple(p.split("=", 1)) for p in args.podium] or [("this", PODIUM)]
    counts = [int(c) for c in args.replicas.split(",")]
    admin = await asyncpg.connect(args.database_url)
    agent = await AgentProcess.start()
    rounds: list[dict[str, Any]] = []
    try:
        out: dict[str, Any] = {"machine": await machine_info(admin), "rounds": rounds}
        with tempfile.TemporaryDirectory(prefix="podium-replicas-") as tmp:
            for count, turn in [(c, t) for c in counts for t in range(args.rounds)]:
                # Alternate which label goes first, so the machine's drift favours none.
                for label, podium in podiums[:: -1 if turn % 2 else 1]:
                    progress(f"{label}: {count} replica(s), {args.runs} runs x {args.steps} steps")
                    result = await one_round(args, admin, agent, label, podium, count, Path(tmp))
                    progress(
                        f"{label} x{count}: {result['steps_per_s']} steps/s, dispatch p99 "
                        f"{result['dispatch'].get('p99_ms')} ms"
                    )
                    rounds.append(result)
        print(json.dumps(out, indent=2))
        print(table(rounds), file=sys.stderr)
    finally:
        await agent.stop()
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
