"""StartRun's cost on the server: CPU per call and latency, a saved definition.

Run ``.venv/bin/python bench/startrun.py [--database-url URL] [--calls N] [--steps S]``;
it prints ONE JSON document on stdout (progress on stderr). A real ``PodiumServer`` runs
in this process on a fresh database; the calls come from a client in a child process
(so this process's CPU is the server's): ``--calls`` sequential StartRun calls of one
saved definition of ``--steps`` sequential agent steps, ``start = false`` (the runs are
created, not started: no scheduler, no agent, only StartRun's own path and
``podium_create_run``), after ``--warmup`` calls.

- ``server_cpu_ms_per_call``: CPU time of this process (all threads: the event loop and
  gRPC's) over the calls, per call (the server's timers, a few per second, included);
- ``p50_ms`` / ``p90_ms``: the client's latency per call (wall clock: load dependent);
- ``--profile FILE``: a cProfile of the server over the calls (``pstats`` format).

The script imports Podium from the interpreter running it, so the same file measures
another checkout: ``/path/to/other/.venv/bin/python bench/startrun.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import grpc
import psutil

from bench.harness.common import CHANNEL_OPTIONS, DEFAULT_SERVER_URL, progress
from bench.harness.server import create_database, drop_database, podium_server, podium_settings
from bench.hotpath import chain_plan
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc


async def client(address: str, name: str, version: int, calls: int, warmup: int) -> None:
    """The child process: ``warmup`` then ``calls`` StartRuns; prints the latencies."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        request = pb.StartRunRequest(
            definition=pb.DefinitionRef(name=name, version=version), start=False
        )
        request.input.update({"n": 1})
        for _ in range(warmup):
            await stub.StartRun(request)
        print("ready", flush=True)
        sys.stdin.readline()
        latencies = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await stub.StartRun(request)
            latencies.append(time.perf_counter() - t0)
    print(json.dumps(latencies), flush=True)


async def main(args: argparse.Namespace) -> None:
    admin = await asyncpg.connect(args.database_url)
    dbname, dsn = await create_database(admin, args.database_url)
    server = podium_server(podium_settings(dsn, "noop=127.0.0.1:9"))
    try:
        await server.start()
        async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            made = await stub.CreateDefinition(
                pb.CreateDefinitionRequest(definition=chain_plan("start-chain", args.steps))
            )
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            server.address,
            made.definition.name,
            str(made.definition.version),
            str(args.calls),
            str(args.warmup),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        await child.stdout.readline()  # warmed up
        me = psutil.Process()
        profile = cProfile.Profile() if args.profile else None
        cpu0 = me.cpu_times()
        if profile is not None:
            profile.enable()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        line = await child.stdout.readline()
        if profile is not None:
            profile.disable()
        cpu1 = me.cpu_times()
        await child.wait()
        latencies = sorted(json.loads(line))
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        out: dict[str, Any] = {
            "calls": args.calls,
            "steps": args.steps,
            "loadavg": [round(x, 2) for x in psutil.getloadavg()],
            "server_cpu_ms_per_call": round(1000 * cpu / args.calls, 3),
            "p50_ms": round(1000 * statistics.median(latencies), 3),
            "p90_ms": round(1000 * latencies[int(0.9 * len(latencies))], 3),
        }
        if profile is not None:
            profile.dump_stats(args.profile)
        progress(f"startrun: {json.dumps(out)}")
        print(json.dumps(out))
    finally:
        await server.stop()
        await drop_database(admin, dbname)
        await admin.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        address, name, version, calls, warmup = sys.argv[2:7]
        asyncio.run(client(address, name, int(version), int(calls), int(warmup)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_SERVER_URL)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", default="", help="write a cProfile of the server here")
    asyncio.run(main(parser.parse_args()))
