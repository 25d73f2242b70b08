"""Fixtures and helpers shared by the client and CLI tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.processes import PODIUM

DEADLINE_SECONDS = 60.0
"""How long a CLI process may take; generous, so a slow machine is slower, not red."""

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
async def bare_server() -> AsyncIterator[str]:
    """Address of a gRPC server with the generated OrchestrationService base servicer:
    every RPC answers UNIMPLEMENTED, like a Podium that predates a part of the contract."""
    server = grpc.aio.server()
    servicer = pb_grpc.OrchestrationServiceServicer()  # type: ignore[abstract]
    pb_grpc.add_OrchestrationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def podium(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``podium`` console script with ``args``, to its end."""
    return await asyncio.to_thread(
        subprocess.run, [PODIUM, *args], capture_output=True, text=True, timeout=120
    )


def plain_env() -> dict[str, str]:
    """A non-terminal environment of fixed width without colors."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(COLUMNS="100", NO_COLOR="1", TERM="dumb")
    return env


async def podium_plain(*args: str) -> subprocess.CompletedProcess[str]:
    """``podium`` in a non-terminal environment of fixed width without colors."""
    return await asyncio.to_thread(
        subprocess.run,
        [PODIUM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=plain_env(),
    )


async def podium_json(*args: str) -> Any:
    """``podium ... -o json``: its output parsed (the command must succeed)."""
    result = await podium(*args, "-o", "json")
    assert result.returncode == 0, (args, result.returncode, result.stderr)
    return json.loads(result.stdout)


def normalized(text: str) -> str:
    """Run ids and durations replaced, trailing blanks dropped."""
    text = UUID.sub("<run id>", text)
    text = re.sub(r"\b\d+\.\ds\b", "#.#s", text)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


class Follower:
    """A ``podium`` process (``--watch``, ``runs events --follow``) whose output is read
    line by line while it runs, in the plain environment of :func:`podium_plain`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str) -> Follower:
        process = await asyncio.create_subprocess_exec(
            PODIUM,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=plain_env(),
        )
        return cls(process)

    async def until(self, text: str) -> str:
        """The first line (from now on) containing ``text``; fails if the process ends
        first or nothing comes within the deadline."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(DEADLINE_SECONDS):
                while line := (await self.process.stdout.readline()).decode():
                    self.lines.append(line)
                    if text in line:
                        return line.rstrip("\n")
        except TimeoutError:
            pass
        raise AssertionError(f"no line with {text!r} in: {''.join(self.lines)}")

    async def finish(self) -> tuple[int, str, str]:
        """Wait for the end: the exit code, the whole stdout, and stderr."""
        async with asyncio.timeout(DEADLINE_SECONDS):
            out, err = await self.process.communicate()
        stdout = "".join(self.lines) + out.decode()
        assert self.process.returncode is not None
        return self.process.returncode, stdout, err.decode()

    async def stop(self) -> None:
        """Kill the process if it still runs (test clean-up)."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


Follow = Callable[..., Awaitable[Follower]]


@pytest.fixture
async def follow() -> AsyncIterator[Follow]:
    """Factory: ``await follow(*args)`` starts a :class:`Follower`; every one still
    running is killed after the test."""
    started: list[Follower] = []

    async def start(*args: str) -> Follower:
        follower = await Follower.start(*args)
        started.append(follower)
        return follower

    try:
        yield start
    finally:
        for follower in started:
            await follower.stop()
