"""The gRPC ceiling: a one-message grpc.aio ExecuteTask call from this process to the
no-op agent in a child process (``bench/harness/agent.py``), the hop every Podium
step makes. One at a time (latency p50), the same after an idle pause (latency p50) and
with 64 calls in flight (calls/s).

The pause: a sequential step's call follows a wait on PostgreSQL (the completion
statement that claimed it), during which the server and the agent sleep. Back-to-back
calls keep both processes and their threads running and their caches warm; a call that
wakes them costs more (on the 2-core machine of ``bench/README.md``, 2 ms idle raised the
p50 from about 0.65 to 1.0 ms). Both figures are ceilings: neither includes any of
Podium's work."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from bench.harness.agent import AgentProcess
from bench.harness.baseline import baseline_request, call_loop
from bench.harness.common import CHANNEL_OPTIONS, percentile
from bench.harness.cpu import cpu_seconds
from podium.agent.v1 import agent_pb2, agent_pb2_grpc

INFLIGHT = 64
IDLE_S = 0.002
"""The pause before each call of the idle figure: about a W1 step's completion
statement (``bench/timeline.py``)."""


async def one_at_a_time(address: str, seconds: float, idle: float = 0.0) -> list[float]:
    """Seconds per call, calls made one after the other for ``seconds`` (after 50
    warm-up calls), each after ``idle`` seconds of sleep (not counted; 0: back to
    back)."""
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
            if idle:
                await asyncio.sleep(idle)
            t0 = time.perf_counter()
            await call()
            out.append(time.perf_counter() - t0)
    return out


async def measure(seconds: float) -> dict[str, Any]:
    agent = await AgentProcess.start()
    try:
        latencies = await one_at_a_time(agent.address, seconds)
        after_idle = await one_at_a_time(agent.address, seconds, IDLE_S)
        driver0, agent0 = cpu_seconds(), agent.cpu_seconds()
        loop = await call_loop(agent.address, INFLIGHT, seconds)
        driver_cpu, agent_cpu = cpu_seconds() - driver0, agent.cpu_seconds() - agent0
    finally:
        await agent.stop()
    calls = max(loop["calls"], 1)
    return {
        "one_at_a_time_p50_ms": round(1000 * percentile(latencies, 50), 3),
        "one_at_a_time_calls": len(latencies),
        "after_idle_p50_ms": round(1000 * percentile(after_idle, 50), 3),
        "after_idle_ms": IDLE_S * 1000,
        "calls_per_s_64_in_flight": loop["calls_per_s"],
        # Includes the 64-in-flight loop's warm-up (up to 1 s), spread over the counted calls.
        "cpu_ms_per_call": {
            "driver": round(1000 * driver_cpu / calls, 3),
            "agent": round(1000 * agent_cpu / calls, 3),
        },
    }
