"""The gRPC ceiling: a one-message grpc.aio ExecuteTask call from this process to the
no-op agent in a child process (``bench/harness/agent.py``), the hop every Podium
step makes. One at a time (latency p50) and with 64 calls in flight (calls/s)."""

from __future__ import annotations

import time
from typing import Any

import grpc

from bench.harness.agent import AgentProcess
from bench.harness.baseline import baseline_request, call_loop
from bench.harness.common import CHANNEL_OPTIONS, percentile
from bench.harness.cpu import cpu_seconds
from podium.agent.v1 import agent_pb2, agent_pb2_grpc

INFLIGHT = 64


async def one_at_a_time(address: str, seconds: float) -> list[float]:
    """Seconds per call, calls made back to back for ``seconds`` (after 50 warm-up calls)."""
    request = baseline_request(1)
    out: list[float] = []
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub: agent_pb2_grpc.AgentServiceAsyncStub = agent_pb2_grpc.AgentServiceStub(channel)

        async def call() -> None:
            async for message in stub.ExecuteTask(request, timeout=30):
                assert isinstance(message, agent_pb2.ExecuteTaskResponse)

        for _ in range(50):
            await call()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call()
            out.append(time.perf_counter() - t0)
    return out


async def measure(seconds: float) -> dict[str, Any]:
    agent = await AgentProcess.start()
    try:
        latencies = await one_at_a_time(agent.address, seconds)
        driver0, agent0 = cpu_seconds(), agent.cpu_seconds()
        loop = await call_loop(agent.address, INFLIGHT, seconds)
        driver_cpu, agent_cpu = cpu_seconds() - driver0, agent.cpu_seconds() - agent0
    finally:
        await agent.stop()
    calls = max(loop["calls"], 1)
    return {
        "one_at_a_time_p50_ms": round(1000 * percentile(latencies, 50), 3),
        "one_at_a_time_calls": len(latencies),
        "calls_per_s_64_in_flight": loop["calls_per_s"],
        # Includes the 64-in-flight loop's warm-up (up to 1 s), spread over the counted calls.
        "cpu_ms_per_call": {
            "driver": round(1000 * driver_cpu / calls, 3),
            "agent": round(1000 * agent_cpu / calls, 3),
        },
    }
