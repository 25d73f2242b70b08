"""The ``podium`` CLI as an operator uses it: a real server, the real console script."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

from podium.client.examples.agents import ExampleAgents
from tests.integration.conftest import StartServer, static_agents
from tests.integration.processes import PODIUM


async def podium(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [PODIUM, *args], capture_output=True, text=True, timeout=120
    )


async def test_apply_start_wait_and_exit_codes(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    server = await start_server(agents=static_agents(example_agents))
    address = ["--address", server.address]
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "name: cli-flow\n"
        "steps:\n"
        "  - {id: greet, agent: echo, input: {who: '${run.input.who}'}}\n"
        "  - {id: shout, agent: echo, depends_on: [greet],\n"
        "     input: {x: '${steps.greet.output.echo.who}'}}\n"
    )
    applied = await podium("definitions", "apply", str(flow), *address)
    assert applied.returncode == 0, applied.stderr
    assert "definition cli-flow version 1 created (2 steps)" in applied.stdout

    started = await podium(
        "runs", "start", "cli-flow", "--input", '{"who": "ops"}', "--wait", "-o", "json", *address
    )
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    assert run["state"] == "STATE_SUCCEEDED"
    assert run["output"] == {"shout": {"echo": {"x": "ops"}}}

    events = await podium("runs", "events", run["id"], *address)
    assert events.returncode == 0
    lines = events.stdout.splitlines()
    assert lines[0].split()[1] == "run.created" and lines[-1].split()[1] == "run.completed"

    listed = await podium("runs", "list", "--state", "succeeded", *address)
    assert run["id"] in listed.stdout

    # A run that fails: exit code 4, and the error is printed.
    flow.write_text("name: cli-broken\nsteps:\n  - {id: a, agent: nobody}\n")
    await podium("definitions", "apply", str(flow), *address)
    failed = await podium("runs", "start", "cli-broken", "--wait", *address)
    assert failed.returncode == 4
    assert "AGENT_NOT_FOUND" in failed.stdout


async def test_invalid_file_and_refusals_exit_codes(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server()
    address = ["--address", server.address]
    flow = tmp_path / "cycle.yaml"
    flow.write_text(
        "name: loop\nsteps:\n"
        "  - {id: a, agent: echo, depends_on: [b]}\n"
        "  - {id: b, agent: echo, depends_on: [a]}\n"
    )
    result = await podium("definitions", "validate", str(flow), *address)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "cycle" in result.stderr
    assert "Traceback" not in result.stderr

    flow.write_text("name: typo\nsteps:\n  - {id: a, agnet: echo}\n")
    result = await podium("definitions", "validate", str(flow), *address)
    assert result.returncode == 2
    assert "agnet" in result.stderr

    result = await podium("runs", "get", "not-a-uuid", *address)
    assert result.returncode == 1
    assert "run_id" in result.stderr


async def test_unreachable_server_exit_code() -> None:
    result = await podium("definitions", "list", "--address", "127.0.0.1:1", "--timeout", "2")
    assert result.returncode == 3
    assert "UNAVAILABLE" in result.stderr


async def test_the_demo_of_make_run_succeeds(database_url: str) -> None:
    """`podium demo` (the README's run command) on the test database: example agents, a
    server process, the demo definition, a successful run with streamed events."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await asyncio.to_thread(
        subprocess.run,
        [PODIUM, "demo", "--exit", "--listen-address", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PODIUM_DATABASE_URL": database_url},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run SUCCEEDED" in result.stdout
    assert "step.output_chunk" in result.stdout and "run.completed" in result.stdout
    assert '"target": "fr"' in result.stdout
