"""Fair share across concurrency keys: how long a light key's step waits for dispatch
while a heavy key has a deep queue.

Run ``.venv/bin/python bench/fairness.py [--database-url URL] [--heavy N] [--light N]``;
it prints ONE JSON document on stdout (progress on stderr). One server in this process
(``--worker-slots`` slots), the example ``echo`` agent in a child process, definitions of
one step (``echo`` with ``--step-seconds`` of delay). Dispatch latency of a run: its
step's first attempt start minus the run's creation (both the database's clock).

Phases, each on a fresh database:

- ``idle``: ``--light`` light runs one after the other, nothing else queued;
- ``keyed``: ``--heavy`` runs of key ``heavy`` started at once, then the light runs (key
  ``light``) one every ``--light-interval`` seconds while the heavy queue drains: the
  claim takes turns between the keys (fair share);
- ``unkeyed``: the same without a concurrency key (one share: first come, first
  served), the reference the fair share is measured against.

For each phase: the light runs' dispatch p50/p90/p99/max (``latency_summary``), and the
steps still queued (the heavy key's) when the first and the last light run were
dispatched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import grpc
from google.protobuf import json_format, struct_pb2

from bench.harness.agent import ExampleAgentsProcess
from bench.harness.common import CHANNEL_OPTIONS, DEFAULT_SERVER_URL, latency_summary, progress
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

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub as Stub,
    )


def one_step(name: str, delay: float, *, keyed: bool) -> definition_pb2.Definition:
    execution: dict[str, Any] = {"concurrency": {"max_parallel": 1}}
    if keyed:
        execution["concurrency"]["key"] = "${run.input.tenant}"
    return json_format.ParseDict(
        {
            "name": name,
            "steps": [{"id": "a", "agent": "echo", "input": {"delay": delay}}],
            "execution": execution,
        },
        definition_pb2.Definition(),
    )


async def start(stub: Stub, name: str, tenant: str) -> str:
    request = pb.StartRunRequest(input=struct_pb2.Struct(), start=True)
    request.input.update({"tenant": tenant})
    request.definition.name = name
    return (await stub.StartRun(request)).run.id


async def dispatch_seconds(stub: Stub, run_id: str, within: float = 600.0) -> float:
    """Seconds from the run's creation to its step's first attempt start."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
        attempts = run.steps[0].attempts
        if attempts:
            started = attempts[0].start_time.ToNanoseconds()
            return (started - run.create_time.ToNanoseconds()) / 1e9
        await asyncio.sleep(0.005)
    raise TimeoutError(f"run {run_id} not dispatched within {within} s")


async def phase(
    admin: asyncpg.Connection[Any], args: argparse.Namespace, agents: str, kind: str
) -> dict[str, Any]:
    dbname, dsn = await create_database(admin, args.database_url)
    server = podium_server(podium_settings(dsn, agents, worker_slots=args.worker_slots))
    try:
        await server.start()
        async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            definition = one_step("fair", args.step_seconds, keyed=kind != "unkeyed")
            await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=definition))
            if kind != "idle":
                progress(f"{kind}: starting {args.heavy} heavy runs")
                for first in range(0, args.heavy, 100):
                    batch = range(first, min(first + 100, args.heavy))
                    await asyncio.gather(*(start(stub, "fair", "heavy") for _ in batch))
            latencies = []
            queued = []
            for _ in range(args.light):
                run_id = await start(stub, "fair", "light")
                latencies.append(await dispatch_seconds(stub, run_id))
                queued.append(await queued_steps(dsn))
                await asyncio.sleep(args.light_interval)
            summary = {
                "light_dispatch": latency_summary(latencies),
                # Steps still queued (the heavy key's) when the first / last light run
                # was dispatched: a fair share dispatches it while this is large.
                "queued_at_first_light_dispatch": queued[0],
                "queued_at_last_light_dispatch": queued[-1],
            }
            progress(f"{kind}: {summary}")
            return summary
    finally:
        await server.stop(0)
        await drop_database(admin, dbname)


async def queued_steps(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM orchestration_steps WHERE state = 'queued'")
        )
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_SERVER_URL)
    parser.add_argument("--heavy", type=int, default=2000, help="heavy runs queued at once")
    parser.add_argument("--light", type=int, default=30, help="light runs, one at a time")
    parser.add_argument("--light-interval", type=float, default=0.05)
    parser.add_argument("--step-seconds", type=float, default=0.01, help="echo delay per step")
    parser.add_argument("--worker-slots", type=int, default=16)
    parser.add_argument("--phases", default="idle,keyed,unkeyed")
    args = parser.parse_args()
    admin = await asyncpg.connect(args.database_url)
    agents = await ExampleAgentsProcess.start()
    out: dict[str, Any] = {
        "machine": await machine_info(admin),
        "parameters": {k: v for k, v in vars(args).items() if k != "database_url"},
    }
    try:
        echo = f"echo={agents.addresses['echo']}"
        out["phases"] = {
            kind: await phase(admin, args, echo, kind) for kind in args.phases.split(",")
        }
    finally:
        await agents.stop()
        await admin.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
