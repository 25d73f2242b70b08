"""The gRPC ceiling of this machine: a bare grpc.aio client calling the no-op agent
with N calls in flight, with the agent in a child process (the engine's layout) or in
this process's event loop (how such microbenchmarks are often run)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import psutil

from bench.harness.agent import AgentProcess, NoopAgent, start_agent_server
from bench.harness.common import CHANNEL_OPTIONS
from podium.agent.v1 import agent_pb2, agent_pb2_grpc


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


async def baseline_separate(
    agent: AgentProcess, inflight: int, seconds: float, messages: int = 1
) -> dict[str, Any]:
    """Client here, no-op agent in the child process."""
    agent_cpu0 = agent.cpu_seconds()
    result = await call_loop(agent.address, inflight, seconds, messages)
    agent_cpu = agent.cpu_seconds() - agent_cpu0
    # The agent's CPU includes the warm-up; scale by the counted share of the calls.
    result["layout"] = "client in this process, agent in a child process"
    result["agent_process_cpu_utilization_incl_warmup"] = round(
        agent_cpu / (result["seconds"] + min(1.0, seconds / 2)), 3
    )
    await agent.reset()
    return result


async def baseline_same_process(inflight: int, seconds: float, messages: int = 1) -> dict[str, Any]:
    """Client and no-op agent in this process, one event loop."""
    agent = NoopAgent()
    server, port = await start_agent_server(agent)
    try:
        result = await call_loop(f"127.0.0.1:{port}", inflight, seconds, messages)
    finally:
        await server.stop(0)
    result["layout"] = "client and agent in this process (one event loop)"
    result.pop("bench_process_cpu_ms_per_call")
    return result
