"""The ``podium`` CLI as an operator uses it: a real server, the real console script."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

from podium.client.examples.agents import ExampleAgents
from tests.integration import client_helpers
from tests.integration.client_helpers import UUID, normalized, podium, podium_plain
from tests.integration.conftest import StartServer, static_agents
from tests.integration.processes import PODIUM

bare_server = client_helpers.bare_server  # the fixture, used by name


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

    # Budgets and concurrency keys load from the file and are valid.
    flow.write_text(
        "name: budgeted\nexecution:\n  budget: {max_tokens: 5, on_exceed: fail}\n"
        "  concurrency: {key: '${run.input.who}'}\nsteps:\n  - {id: a, agent: echo}\n"
    )
    result = await podium("definitions", "validate", str(flow), *address)
    assert result.returncode == 0, result.stderr

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
    assert "cannot reach a Podium server at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


async def test_the_demo_of_make_run_succeeds(database_url: str) -> None:
    """`podium demo` (the README's run command) on the test database: example agents, a
    server process, the demo definition, a successful run with streamed events."""
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    port, console_port = ports
    result = await asyncio.to_thread(
        subprocess.run,
        [
            PODIUM,
            "demo",
            "--exit",
            "--listen-address",
            f"127.0.0.1:{port}",
            "--console-address",
            f"127.0.0.1:{console_port}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PODIUM_DATABASE_URL": database_url},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run SUCCEEDED" in result.stdout
    assert "step.output_chunk" in result.stdout and "run.completed" in result.stdout
    assert '"target": "fr"' in result.stdout
    # The demo serves the web console (on by default there) and says where.
    assert f"web console: http://127.0.0.1:{console_port}/" in result.stdout


WATCH_FLOW = """\
name: watched
steps:
  - {id: fetch, agent: echo, input: {text: '${run.input.text}'}}
  - id: digest
    agent: summarizer
    depends_on: [fetch]
    input: {text: '${steps.fetch.output.echo.text}'}
  - id: publish
    agent: echo
    depends_on: [digest]
    input: {summary: '${steps.digest.output.summary}'}
"""

# What `podium runs start --watch` prints when stdout is not a terminal: the agents'
# streamed output, then the final view (run ids and durations normalized).
WATCH_SNAPSHOT = """\
digest │ the quick brown fox jumps over the lazy dog
run <run id>  watched v1  SUCCEEDED
STEP     STATE      ATTEMPT  DURATION  AGENT       DETAIL
fetch    SUCCEEDED  1/1      #.#s      echo
digest   SUCCEEDED  1/1      #.#s      summarizer
publish  SUCCEEDED  1/1      #.#s      echo
━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 3/3 steps
run SUCCEEDED
output: {
  "publish": {
    "echo": {
      "summary": "the quick brown fox jumps over the lazy dog"
    }
  }
}
"""


async def test_watch_renders_a_deterministic_run(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo", "summarizer"))
    address = ["--address", server.address]
    flow = tmp_path / "watched.yaml"
    flow.write_text(WATCH_FLOW)
    assert (await podium("definitions", "apply", str(flow), *address)).returncode == 0
    text = '{"text": "the quick brown fox jumps over the lazy dog"}'
    result = await podium_plain("runs", "start", "watched", "--input", text, "--watch", *address)
    assert result.returncode == 0, result.stderr
    assert normalized(result.stdout) == WATCH_SNAPSHOT

    # `runs watch` of the finished run replays its log into the same view.
    run_id = UUID.findall(result.stdout)[0]
    again = await podium_plain("runs", "watch", run_id, *address)
    assert again.returncode == 0, again.stderr
    assert normalized(again.stdout) == WATCH_SNAPSHOT


async def test_watch_json_lines_and_the_exit_code_of_a_failed_run(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address]
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: doomed\nsteps:\n  - {id: a, agent: echo}\n"
        "  - {id: b, agent: nobody, depends_on: [a]}\n"
    )
    result = await podium("runs", "start", "--file", str(plan), "--watch", "-o", "json", *address)
    assert result.returncode == 4, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    events = [line["event"] for line in lines[:-1]]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "TYPE_RUN_FAILED"
    run = lines[-1]["run"]
    assert run["state"] == "STATE_FAILED" and run["error"]["code"] == "AGENT_NOT_FOUND"

    # The text view names the failed step and its error; the exit code is 4 too.
    failed = await podium_plain("runs", "watch", run["id"], *address)
    assert failed.returncode == 4
    assert "run FAILED" in failed.stdout and "AGENT_NOT_FOUND" in failed.stdout

    # `runs events --follow` ends with the run; `--wait` exits 4 as well.
    follow = await podium("runs", "events", run["id"], "--follow", *address)
    assert follow.returncode == 0
    assert follow.stdout.splitlines()[-1].split()[1] == "run.failed"
    waited = await podium("runs", "start", "--file", str(plan), "--wait", "-o", "json", *address)
    assert waited.returncode == 4
    assert json.loads(waited.stdout)["state"] == "STATE_FAILED"


async def test_json_output_for_scripts(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address, "-o", "json"]
    flow = tmp_path / "flow.yaml"
    flow.write_text("name: j\nsteps:\n  - {id: a, agent: echo}\n")
    applied = json.loads((await podium("definitions", "apply", str(flow), *address)).stdout)
    assert (applied["name"], applied["version"]) == ("j", 1)
    assert json.loads((await podium("definitions", "validate", str(flow), *address)).stdout) == {
        "valid": True,
        "file": str(flow),
    }
    listed = json.loads((await podium("definitions", "list", *address)).stdout)
    assert [d["name"] for d in listed] == ["j"]
    created = await podium("runs", "start", "j", "--create-only", "--label", "team=ops", *address)
    run = json.loads(created.stdout)
    assert run["state"] == "STATE_CREATED" and run["labels"] == {"team": "ops"}
    runs = json.loads((await podium("runs", "list", "--label", "team=ops", *address)).stdout)
    assert [r["id"] for r in runs] == [run["id"]]
    continued = await podium("runs", "continue", run["id"], "--wait", *address)
    assert continued.returncode == 0, continued.stderr
    assert json.loads(continued.stdout)["state"] == "STATE_SUCCEEDED"
    agents = json.loads((await podium("agents", "list", *address)).stdout)
    assert [a["name"] for a in agents] == ["echo"]


async def test_commands_a_server_lacks_exit_1_with_a_clear_message(bare_server: str) -> None:
    """Against a server that answers UNIMPLEMENTED (the generated base servicer, as a
    Podium without approvals would): a clear message and exit code 1, no traceback."""
    address = ["--address", bare_server, "--timeout", "10"]
    run_id = "00000000-0000-0000-0000-000000000000"
    for command in (
        ["approvals", "list", "--run", run_id],
        ["approvals", "get", "a1"],
        ["approvals", "approve", "a1", "--comment", "ok", "--actor", "ann"],
        ["approvals", "reject", "a1", "--comment", "no"],
        ["approvals", "decide", "a1", "skip"],
        ["runs", "resume", run_id, "--watch"],
        ["cache", "invalidate", "flow", "--version", "2"],
    ):
        result = await podium(*command, *address)
        assert result.returncode == 1, (command, result.stderr)
        assert f"the server at {bare_server} does not implement this command" in result.stderr
        assert "UNIMPLEMENTED" in result.stderr and "Traceback" not in result.stderr


async def test_bad_usage_exits_2_before_calling_anyone() -> None:
    """Argument errors need no server (the address is unreachable on purpose)."""
    address = ["--address", "127.0.0.1:1", "--timeout", "2"]
    for command in (
        ["approvals", "approve"],
        ["approvals", "decide", "a1", "maybe"],
        ["approvals", "list", "--state", "finished"],
        ["approvals", "approve", "a1", "--input", "[1]"],
        ["runs", "start", "x", "--watch", "--wait"],
        ["runs", "start", "x", "--create-only", "--watch"],
        ["runs", "start", "x", "--label", "novalue"],
        ["runs", "start", "x", "--input", "{not json"],
        ["runs", "start"],
        ["runs", "resume"],
        ["runs", "list", "--state", "finished"],
    ):
        result = await podium(*command, *address)
        assert result.returncode == 2, (command, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr
