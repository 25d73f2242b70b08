"""Baseline probe (temporary)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1 import run_pb2
from tests.integration.conftest import StartServer
from tests.integration.pg_cluster import free_port
from tests.integration.runs_helpers import create_definition, start_run, wait_for_run, describe

ROOT = Path(__file__).resolve().parents[2]


def spawn(port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.chaos.agent", "--name", "worker"]
    command += ["--port", str(port), "--log", str(log)]
    return subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)


async def ready(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", ["kill", "term"])
async def test_outage_baseline(start_server: StartServer, tmp_path: Path, sig: str) -> None:
    port = free_port()
    proc = spawn(port, tmp_path / "calls.log")
    await ready(port)
    server = await start_server(agents=f"worker=127.0.0.1:{port};skills=work")
    steps = []
    for i in range(8):
        step = {"id": f"s{i}", "agent": "worker", "input": {"seconds": 0.5},
                "on_failure": {"max_attempts": 1}}
        if i:
            step["depends_on"] = [f"s{i-1}"]
        steps.append(step)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(stub, "chain", steps)
        run_id = (await start_run(stub, "chain")).run.id
        await asyncio.sleep(1.2)
        if sig == "kill":
            proc.kill()
        else:
            proc.terminate()
        proc.wait()
        await asyncio.sleep(5)
        proc = spawn(port, tmp_path / "calls.log")
        try:
            run = await wait_for_run(stub, run_id, within=60)
        finally:
            proc.kill()
            proc.wait()
    print(describe(run))
    for s in run.steps:
        print(s.step_id, s.attempt, s.error.code, s.error.message[:200])
    assert run.state == run_pb2.Run.STATE_SUCCEEDED
