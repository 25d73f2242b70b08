"""Agent processes the benchmarks dispatch to.

- :class:`AgentProcess`: the no-op agent (``podium.agent.v1.AgentService``;
  ExecuteTask yields one ``result`` with an empty output) in a child process
  (``python -m bench.harness.agent``), so its CPU is not the engine's; it records
  ``time.time()`` per ``(run_id, step_id, attempt)`` it receives.
- :class:`ExampleAgentsProcess`: the example agents ``sleeper`` and ``echo``
  (``podium.client.examples.agents``) in a child process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.protobuf import struct_pb2

from bench.harness.common import CHANNEL_OPTIONS
from podium.agent.v1 import agent_pb2, agent_pb2_grpc

REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent.parent)

Receipts = dict[tuple[str, str, int], float]


class NoopAgent(agent_pb2_grpc.AgentServiceServicer):
    """ExecuteTask yields one ``result`` with an empty output; records receipt times."""

    def __init__(self) -> None:
        self.receipts: Receipts = {}
        self._response = agent_pb2.ExecuteTaskResponse(
            result=agent_pb2.TaskResult(output=struct_pb2.Struct())
        )
        self._progress = agent_pb2.ExecuteTaskResponse(
            progress=agent_pb2.Progress(message="working", fraction=0.5)
        )

    async def ExecuteTask(
        self, request: agent_pb2.ExecuteTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        self.receipts[(request.run_id, request.step_id, request.attempt)] = time.time()
        if request.labels:  # baseline variant: N-1 progress messages before the result
            for _ in range(int(request.labels.get("bench_messages", "1")) - 1):
                yield self._progress
        yield self._response

    async def GetAgentCard(
        self, request: agent_pb2.GetAgentCardRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.GetAgentCardResponse:
        return agent_pb2.GetAgentCardResponse(
            card=agent_pb2.AgentCard(name="noop", version="1", protocol_version="podium.agent.v1")
        )


async def start_agent_server(agent: NoopAgent) -> tuple[grpc.aio.Server, int]:
    """Serve ``agent`` on 127.0.0.1 (a free port)."""
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _write_receipts(path: str, receipts: Receipts) -> None:
    rows = [[r, s, a, t] for (r, s, a), t in receipts.items()]
    Path(path).write_text(json.dumps(rows))


def _read_receipts(path: str) -> Receipts:
    rows = json.loads(Path(path).read_text())
    return {(r, s, int(a)): float(t) for r, s, a, t in rows}


async def serve_agent_main() -> None:
    """Child process: serve the no-op agent; commands on stdin, replies on stdout.

    ``reset`` clears the receipts; ``dump PATH`` writes them as JSON to PATH and clears
    them. EOF on stdin stops the agent.
    """
    agent = NoopAgent()
    server, port = await start_agent_server(agent)
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command, _, argument = line.decode().strip().partition(" ")
        if command == "dump":
            _write_receipts(argument, agent.receipts)
            agent.receipts.clear()
        elif command == "reset":
            agent.receipts.clear()
        print(f"OK {command}", flush=True)
    await server.stop(0)


class AgentProcess:
    """The no-op agent in a child process (so its CPU is not the engine's)."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self._ps = psutil.Process(process.pid)

    @classmethod
    async def start(cls) -> AgentProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.harness.agent",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPOSITORY_ROOT,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"the agent process did not start: {line!r}")
        return cls(process, int(line.split()[1]))

    async def _command(self, text: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()
        reply = await asyncio.wait_for(self.process.stdout.readline(), timeout=60)
        if not reply.startswith(b"OK"):
            raise RuntimeError(f"agent process: unexpected reply {reply!r}")

    async def reset(self) -> None:
        await self._command("reset")

    async def receipts(self) -> Receipts:
        """Receipt times since the last reset/dump (and clear them)."""
        with tempfile.TemporaryDirectory(prefix="podium-bench-") as tmp:
            path = os.path.join(tmp, "receipts.json")
            await self._command(f"dump {path}")
            return _read_receipts(path)

    def cpu_seconds(self) -> float:
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class ExampleAgentsProcess:
    """``python -m podium.client.examples.agents --only sleeper,echo``."""

    def __init__(self, process: asyncio.subprocess.Process, addresses: dict[str, str]) -> None:
        self.process = process
        self.addresses = addresses

    @classmethod
    async def start(cls) -> ExampleAgentsProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "podium.client.examples.agents",
            "--only",
            "sleeper,echo",
            "--grace",
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        return cls(process, json.loads(line))

    @property
    def setting(self) -> str:
        return ",".join(f"{name}={address}" for name, address in self.addresses.items())

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


if __name__ == "__main__":
    # The event loop the SDK's agents run on (uvloop when installed, as in the bench
    # venv), so an agent call costs here what it costs a Podium user's agent.
    from podium.client.agent import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve_agent_main())
