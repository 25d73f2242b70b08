"""The grpcurl commands of docs/usage.md, run as written against a real server: server
reflection makes them work without any proto file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from podium.client.examples.agents import ExampleAgents
from tests.integration.conftest import StartServer, static_agents

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
SERVICE = "podium.orchestration.v1.OrchestrationService"


async def grpcurl(address: str, *args: str, data: str | None = None) -> str:
    """Run ``grpcurl -plaintext [-d DATA] ADDRESS ARGS...``; returns stdout (fails on a
    non-zero exit)."""
    command = [GRPCURL, "-plaintext", *(["-d", data] if data is not None else []), address]
    result = await asyncio.to_thread(
        subprocess.run, [*command, *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def json_stream(text: str) -> list[dict[str, Any]]:
    """The JSON objects grpcurl prints one after the other (a server stream)."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    index = 0
    text = text.strip()
    while index < len(text):
        value, end = decoder.raw_decode(text, index)
        objects.append(value)
        index = end
        while index < len(text) and text[index].isspace():
            index += 1
    return objects


async def test_the_readme_grpcurl_commands_work_through_reflection(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = server.address

    services = (await grpcurl(address, "list")).split()
    assert SERVICE in services and "grpc.health.v1.Health" in services

    described = await grpcurl(address, "describe", SERVICE)
    assert "rpc StartRun" in described and "rpc WatchRun" in described
    request = await grpcurl(address, "describe", "podium.orchestration.v1.StartRunRequest")
    assert "string request_id" in request and "bool start" in request

    health = json.loads(await grpcurl(address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}

    created = json.loads(
        await grpcurl(
            address,
            f"{SERVICE}/CreateDefinition",
            data='{"definition": {"name": "hello", "steps": [{"id": "greet", "agent": "echo", '
            '"input": {"who": "${run.input.who}"}}]}}',
        )
    )
    assert created["definition"]["version"] == 1

    started = json.loads(
        await grpcurl(
            address,
            f"{SERVICE}/StartRun",
            data='{"definition": {"name": "hello"}, "input": {"who": "grpcurl"}, "start": true}',
        )
    )
    run_id = started["run"]["id"]

    events = json_stream(
        await grpcurl(
            address, f"{SERVICE}/WatchRun", data=json.dumps({"run_id": run_id, "after_sequence": 0})
        )
    )
    sequences = [int(e["event"]["sequence"]) for e in events]
    assert sequences == list(range(1, len(events) + 1))
    assert events[-1]["event"]["type"] == "TYPE_RUN_COMPLETED"

    run = json.loads(
        await grpcurl(address, f"{SERVICE}/GetRun", data=json.dumps({"run_id": run_id}))
    )
    assert run["run"]["state"] == "STATE_SUCCEEDED"
    assert run["run"]["output"] == {"greet": {"echo": {"who": "grpcurl"}}}
