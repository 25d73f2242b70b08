"""The ``podium`` CLI's surfaces a script or an operator relies on: one JSON shape for
every ``-o json`` command, integers that stay integers, idempotent ``definitions apply``
with ``diff``, the commands of deliverables, webhooks and WatchRuns, the text of
``runs get`` and ``agents list``, and quiet endings (closed pipe, unreachable server).
A real server, the example agents, the real console script."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from podium.client import PodiumClient
from podium.client.cli import build_parser
from podium.client.examples.agents import ExampleAgents
from tests.integration import client_helpers
from tests.integration.client_helpers import Follow, podium, podium_json, podium_plain
from tests.integration.conftest import StartServer, static_agents
from tests.integration.processes import PODIUM
from tests.integration.runs_helpers import wait_until
from tests.unit.test_cli_surface import commands

follow = client_helpers.follow  # the fixture, used by name

FLOW = """\
name: shapes
steps:
  - id: first
    agent: echo
    input: {x: '${run.input.x}', ratio: '${run.input.ratio}', fixed: 3}
  - id: gate
    agent: echo
    depends_on: [first]
    checkpoint: before
    input: {n: 1, text: '${steps.first.output.echo.fixed}'}
"""

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
INT64_KEYS = {
    "sequence",
    "last_event_sequence",
    "size_bytes",
    "input_tokens",
    "output_tokens",
    "deleted",
}


STRUCT_KEYS = {"input", "output", "data", "subject", "metadata", "payload"}


def check_shape(data: Any, where: str, *, in_struct: bool = False) -> None:
    """Proto field names (every key here is snake_case: the inputs are too), 64-bit
    integers as numbers, no integral float, enums by their full names (outside the
    JSON data of Structs)."""
    if isinstance(data, dict):
        for key, value in data.items():
            assert SNAKE.match(key), f"{where}: key {key!r}"
            if key in INT64_KEYS and not in_struct:
                assert isinstance(value, int), f"{where}: {key} = {value!r}"
            enum = key in ("state", "type", "kind", "protocol", "source", "decision")
            if enum and not in_struct:
                assert isinstance(value, str) and value.isupper(), f"{where}: {key}={value!r}"
            check_shape(value, f"{where}.{key}", in_struct=in_struct or key in STRUCT_KEYS)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            check_shape(item, f"{where}[{i}]", in_struct=in_struct)
    elif isinstance(data, float):
        assert not data.is_integer(), f"{where}: integral float {data!r}"


def parse(stdout: str, *, stream: bool) -> list[Any]:
    """The documents of a command's output: one, or one per line of a stream (each an
    object with a single key: event, run, or deliverable from runs export)."""
    if not stream:
        return [json.loads(stdout)]
    items = [json.loads(line) for line in stdout.splitlines() if line]
    for item in items:
        assert isinstance(item, dict) and len(item) == 1
        assert set(item) <= {"event", "run", "deliverable"}
    return items


async def pending_approval(address: list[str], run_id: str) -> str:
    found: list[str] = []

    async def listed() -> bool:
        approvals = await podium_json("approvals", "list", "--run", run_id, *address)
        found[:] = [a["id"] for a in approvals]
        return bool(found)

    await wait_until(listed, f"an approval of run {run_id}")
    return found[0]


async def test_every_json_command_has_the_one_shape(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo", "summarizer"))
    address = ["--address", server.address]
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW)
    summary = tmp_path / "summary.yaml"
    summary.write_text(
        "name: summary\nsteps:\n  - {id: sum, agent: summarizer, input: {text: 'a b c'}}\n"
    )
    assert (await podium("definitions", "apply", str(flow), *address)).returncode == 0
    assert (await podium("definitions", "apply", str(summary), *address)).returncode == 0
    inputs = '{"x": 1, "ratio": 0.5}'

    async def start(*extra: str) -> str:
        run = await podium_json("runs", "start", "shapes", "--input", inputs, *extra, *address)
        return str(run["id"])

    gated = [await start() for _ in range(4)]
    approvals = [await pending_approval(address, run_id) for run_id in gated]
    async with PodiumClient(server.address) as client:
        summarized = (await client.start_run("summary")).id
        await client.wait_run(summarized)
        schedule = (await client.create_schedule("shapes", interval_seconds=3600)).id
    created_only = await start("--create-only")

    # Every command with -o: how to run it, and whether it prints a stream.
    invocations: dict[tuple[str, ...], tuple[list[str], bool]] = {
        ("definitions", "apply"): ([str(flow)], False),
        ("definitions", "diff"): ([str(flow)], False),
        ("definitions", "validate"): ([str(flow)], False),
        ("definitions", "list"): ([], False),
        ("definitions", "get"): (["shapes"], False),
        ("definitions", "archive"): (["summary"], False),
        ("runs", "start"): (["shapes", "--input", inputs, "--metadata", '{"ticket": 42}'], False),
        ("approvals", "list"): (["--state", "pending", "--state", "decided"], False),
        ("approvals", "get"): ([approvals[0]], False),
        ("approvals", "approve"): ([approvals[0]], False),
        ("approvals", "reject"): ([approvals[1]], False),
        ("approvals", "decide"): ([approvals[2], "approve"], False),
        ("runs", "watch"): ([gated[0]], True),
        ("runs", "get"): ([gated[0]], False),
        ("runs", "events"): ([gated[0]], True),
        ("runs", "payload"): ([gated[0], "--field", "input"], False),
        ("runs", "export"): ([summarized], True),
        ("runs", "list"): ([], False),
        ("runs", "cancel"): ([gated[3]], False),
        ("runs", "resume"): ([gated[3]], False),
        ("runs", "continue"): ([created_only], False),
        ("runs", "fork"): ([gated[0], "--step", "gate"], False),
        ("deliverables", "list"): ([summarized], False),
        ("deliverables", "download"): ([summarized, "summary.md", "--to", str(tmp_path)], False),
        ("webhooks", "deliveries"): ([], False),
        ("agents", "register"): (["extra", "127.0.0.1:9", "--protocol", "a2a"], False),
        ("agents", "list"): ([], False),
        ("agents", "get"): (["extra"], False),
        ("agents", "deregister"): (["extra"], False),
        ("cache", "invalidate"): (["shapes"], False),
        ("usage", ): (["--by", "day", "--by", "agent"], False),
        ("events", "send"): (["shape.event", "--id", "e1", "--payload", inputs], False),
        ("schedules", "create"): (["shapes", "--every", "3600", "--input", inputs], False),
        ("schedules", "list"): ([], False),
        ("schedules", "get"): ([schedule], False),
        ("schedules", "pause"): ([schedule], False),
        ("schedules", "resume"): ([schedule], False),
        ("schedules", "delete"): ([schedule], False),
        ("policy", "set"): (["--deny-skill", "shell", "--require-approval", "nobody"], False),
        ("policy", "get"): ([], False),
        ("config", ): ([], False),
    }  # fmt: skip
    with_output = {
        path
        for path, parser in commands(build_parser()).items()
        if any("--output" in action.option_strings for action in parser._actions)
    }
    assert with_output == set(invocations), "give each command with -o an invocation here"
    seen: dict[tuple[str, ...], list[Any]] = {}
    for path, (args, stream) in invocations.items():
        result = await podium(*path, *args, *address, "-o", "json")
        assert result.returncode == 0, (path, result.stderr)
        documents = parse(result.stdout, stream=stream)
        # config's settings are not messages (its "source" is where a value came from).
        check_shape(documents, " ".join(path), in_struct=path == ("config",))
        seen[path] = documents

    # The integers of the run input stay integers wherever they surface.
    run = seen[("runs", "get")][0]
    assert run["input"] == {"x": 1, "ratio": 0.5}
    assert run["steps"][0]["output"] == {"echo": {"x": 1, "ratio": 0.5, "fixed": 3}}
    subject = seen[("approvals", "get")][0]["subject"]
    assert subject == {"input": {"n": 1, "text": 3}}
    events = [item["event"] for item in seen[("runs", "events")]]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "TYPE_RUN_CREATED" and "run_id" in events[0]
    watched = seen[("runs", "watch")]
    assert watched[-1]["run"]["id"] == gated[0]
    assert seen[("runs", "start")][0]["metadata"] == {"ticket": 42}
    assert seen[("agents", "register")][0]["protocol"] == "PROTOCOL_A2A"
    assert seen[("cache", "invalidate")] == [{"deleted": 0}]
    assert seen[("definitions", "diff")][0]["changed"] is False
    assert seen[("policy", "get")][0]["denied_skills"] == ["shell"]
    listed = seen[("deliverables", "list")][0]
    assert [d["name"] for d in listed] == ["summary.md"]
    assert listed[0]["size_bytes"] > 0
    assert (tmp_path / "summary.md").read_text().startswith("# Summary")

    # Text: the integers there too.
    text = await podium("runs", "get", gated[0], *address)
    assert 'output: {"gate": {"echo": {"n": 1, "text": 3}}}' in text.stdout
    text = await podium("approvals", "get", approvals[3], *address)
    assert 'subject: {"input": {"n": 1, "text": 3}}' in text.stdout, text.stdout


async def test_apply_is_idempotent_and_diff_shows_changes(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server()
    address = ["--address", server.address]
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW)
    first = await podium("definitions", "diff", str(flow), *address)
    assert first.returncode == 0 and "+name: shapes" in first.stdout
    applied = await podium("definitions", "apply", str(flow), *address)
    assert "definition shapes version 1 created (2 steps)" in applied.stdout
    again = await podium("definitions", "apply", str(flow), *address)
    assert again.returncode == 0
    assert again.stdout.strip() == "definition shapes version 1 unchanged"
    same = await podium("definitions", "diff", str(flow), "--exit-code", *address)
    assert same.returncode == 0
    assert same.stdout.strip() == "definition shapes: no changes against version 1"

    flow.write_text(FLOW.replace("fixed: 3", "fixed: 4"))
    changed = await podium("definitions", "diff", str(flow), *address)
    assert changed.returncode == 0
    assert "--- shapes version 1" in changed.stdout
    assert "-    fixed: 3" in changed.stdout and "+    fixed: 4" in changed.stdout
    assert (await podium("definitions", "diff", str(flow), "--exit-code", *address)).returncode == 1
    applied = await podium("definitions", "apply", str(flow), *address)
    assert "version 2 created" in applied.stdout
    forced = await podium("definitions", "apply", str(flow), "--force-new-version", *address)
    assert "version 3 created" in forced.stdout


async def test_text_shows_child_runs_rollback_hints_and_unlimited_agents(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address]
    child = tmp_path / "child.yaml"
    child.write_text("name: child\nsteps:\n  - {id: c, agent: echo}\n")
    assert (await podium("definitions", "apply", str(child), *address)).returncode == 0
    parent = tmp_path / "parent.yaml"
    parent.write_text(
        "name: parent\nsteps:\n"
        "  - {id: draft, agent: echo, rollback: 'delete the draft'}\n"
        "  - {id: sub, orchestration: child, depends_on: [draft]}\n"
        "  - {id: boom, agent: nobody, depends_on: [sub]}\n"
    )
    assert (await podium("definitions", "apply", str(parent), *address)).returncode == 0
    failed = await podium("runs", "start", "parent", "--wait", *address)
    assert failed.returncode == 4
    child_id = re.search(r"sub\s+SUCCEEDED\s+attempt 1/1\s+child run (\S+)", failed.stdout)
    assert child_id, failed.stdout
    assert "rollback hints (undo by hand, most recent first):\n  - delete the draft" in (
        failed.stdout
    )
    got = await podium("runs", "get", child_id.group(1), *address)
    assert "child of run" in got.stdout and "(step sub)" in got.stdout

    agents = await podium("agents", "list", *address)
    assert re.search(r"^echo\s.*max=unlimited", agents.stdout, re.M), agents.stdout
    assert "max=0" not in agents.stdout


async def test_watch_all_filters_by_definition_and_list_watch_updates(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path, follow: Follow
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address]
    for name in ("watched", "ignored"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\nsteps:\n  - {{id: a, agent: echo}}\n")
        assert (await podium("definitions", "apply", str(path), *address)).returncode == 0
    everything = await follow("runs", "watch", "--all", "--definition", "watched", "-o", "json",
                              *address)  # fmt: skip
    table = await follow("runs", "list", "--watch", *address)
    # Both streams are open before the runs start (WatchRuns sends live events only).
    hub = server.engine.watch.hub
    await wait_until(lambda: hub.org_watchers >= 2, "both WatchRuns streams open")
    async with PodiumClient(server.address) as client:
        ignored = await client.start_run("ignored")
        watched = await client.start_run("watched")
        await client.wait_run(watched.id)
        await client.wait_run(ignored.id)
    done = json.loads(await everything.until('"TYPE_RUN_COMPLETED"'))
    assert done["event"]["run_id"] == watched.id
    assert all(ignored.id not in line for line in everything.lines)
    for run_id in (watched.id, ignored.id):
        if not any(f"{run_id}  SUCCEEDED" in line for line in table.lines):
            await table.until(f"{run_id}  SUCCEEDED")
    line = next(line for line in table.lines if f"{watched.id}  SUCCEEDED" in line)
    assert "watched" in line and "run.completed" in line
    table.process.send_signal(signal.SIGINT)
    code, _, err = await table.finish()
    assert code == 130 and "Traceback" not in err

    usage = await podium("runs", "watch", "--definition", "x", "some-run", *address)
    assert usage.returncode == 2 and "--all" in usage.stderr


async def test_a_closed_pipe_ends_quietly_and_unreachable_is_one_message(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    reader = subprocess.Popen(  # noqa: ASYNC220 (its pipe is closed by hand below)
        [PODIUM, "runs", "watch", "--all", "-o", "json", "--address", server.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # The stream is open before the run starts (WatchRuns sends live events only).
        hub = server.engine.watch.hub
        await wait_until(lambda: hub.org_watchers >= 1, "the WatchRuns stream open")
        assert reader.stdout is not None and reader.stderr is not None
        plan = {"steps": [{"id": "a", "agent": "echo"}]}
        async with PodiumClient(server.address) as client:
            await client.wait_run((await client.start_run(plan=plan)).id)
            first = await asyncio.wait_for(asyncio.to_thread(reader.stdout.readline), 60)
            assert b'"event"' in first
            # The reader goes away (as `head` does); the next events hit a closed pipe.
            reader.stdout.close()
            for _ in range(3):
                await client.wait_run((await client.start_run(plan=plan)).id)
        code = await asyncio.to_thread(reader.wait, 60)
        err = reader.stderr.read().decode()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        assert reader.stderr is not None
        reader.stderr.close()
    assert code == 141, err
    assert err == ""

    result = await podium_plain("definitions", "list", "--address", "127.0.0.1:1",
                                "--timeout", "2")  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "podium: cannot reach a Podium server at 127.0.0.1:1 (no answer within --timeout 2 s;"
        " retried while it was unavailable)"
    ]
