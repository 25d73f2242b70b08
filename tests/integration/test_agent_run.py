"""``Agent.run``: a script's agent serves until SIGTERM, on uvloop when it is installed."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
import textwrap

import grpc

from podium.agent.v1 import agent_pb2, agent_pb2_grpc

SCRIPT = textwrap.dedent(
    """
    import asyncio
    from podium.client.agent import Agent

    agent = Agent("echo")

    @agent.task
    async def run(task):
        return {"loop": type(asyncio.get_running_loop()).__module__, **task.input}

    agent.run(on_ready=lambda server: print(server.port, flush=True))
    """
)


async def test_agent_run_serves_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), 30))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            request = agent_pb2.ExecuteTaskRequest(task_id="t", run_id="r", step_id="s")
            request.input.update({"n": 1})
            messages = [m async for m in stub.ExecuteTask(request, timeout=10)]
        output = messages[-1].result.output
        assert output["n"] == 1
        uvloop = importlib.util.find_spec("uvloop") is not None
        assert output["loop"] == ("uvloop" if uvloop else "asyncio.unix_events")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
