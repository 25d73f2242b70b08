"""Conformance: the scenario of ``tests/conformance/fan-out-approval.json``
run by the Python client (``PodiumClient``) with the Python example agent and with the
Node.js example agent (``clients/node/examples/agent.js``, a real ``node`` process).
The Node client runs the same file in ``clients/node/test/conformance.test.js``; CI runs
both, so all four client x agent combinations pass against a live Podium.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from podium.client import PodiumClient, to_dict
from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import approval_pb2, definition_pb2, event_pb2, run_pb2
from podium.server.app import PodiumServer

REPO = Path(__file__).resolve().parents[2]
SCENARIO = json.loads((REPO / "tests" / "conformance" / "fan-out-approval.json").read_text())
NODE_AGENT = REPO / "clients" / "node" / "examples" / "agent.js"

Type = event_pb2.RunEvent.Type


def instantiate(impl: str) -> dict[str, Any]:
    """The scenario with ``{impl}`` replaced everywhere."""
    value: dict[str, Any] = json.loads(json.dumps(SCENARIO).replace("{impl}", impl))
    return value


@pytest.fixture
async def node_agent(node: str) -> AsyncIterator[str]:
    """The Node.js example agent as a real process; yields its address."""
    process = await asyncio.create_subprocess_exec(
        node,
        str(NODE_AGENT),
        "--address",
        "127.0.0.1:0",
        "--name",
        "conformance-node",
        stdout=asyncio.subprocess.PIPE,
        stderr=sys.stderr,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        yield str(json.loads(line)["address"])
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.fixture
async def client(podium_server: PodiumServer) -> AsyncIterator[PodiumClient]:
    async with PodiumClient(podium_server.address) as podium:
        yield podium


async def run_scenario(client: PodiumClient, impl: str, endpoint: str) -> None:
    s = instantiate(impl)
    agent = await client.register_agent(s["agent"]["name"], endpoint, skills=s["agent"]["skills"])
    assert agent.name == s["agent"]["name"]
    definition = json_format.ParseDict(s["definition"], definition_pb2.Definition())
    stored = await client.create_definition(definition)
    started = await client.start_run(
        stored.name, version=stored.version, input=s["run"]["input"], labels=s["run"]["labels"]
    )

    events: list[event_pb2.RunEvent] = []
    decided: approval_pb2.Approval | None = None
    async for event in client.watch_run(started.id):
        events.append(event)
        if event.type == Type.TYPE_STEP_AWAITING_APPROVAL:
            assert event.step_id == s["approval"]["step_id"]
            pending = await client.list_approvals(run_id=started.id)
            (approval,) = pending.items
            assert approval.id == event.approval.approval_id
            assert approval_pb2.Approval.Kind.Name(approval.kind) == s["approval"]["kind"]
            assert approval.state == approval_pb2.Approval.STATE_PENDING
            decided = await client.decide_approval(
                approval.id,
                s["approval"]["decision"],
                actor=s["approval"]["actor"],
                comment=s["approval"]["comment"],
                request_id=f"conformance-python-{impl}",
            )
    run = await client.get_run(started.id)
    expect = s["expect"]

    # The log: gap-free, in order, ends with the terminal event, holds what is expected.
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    types = [Type.Name(e.type) for e in events]
    assert types[-1] == expect["last_event"]
    for name in expect["events_include"] + expect["approval_events"]:
        assert name in types, name
    awaiting = types.index("TYPE_STEP_AWAITING_APPROVAL")
    decided_at = types.index("TYPE_APPROVAL_DECIDED")
    assert awaiting < decided_at < len(types) - 1 - types[::-1].index("TYPE_STEP_COMPLETED")
    # Fan-out: both branches are queued by the completion of their dependency.
    for upstream, branches in expect["parallel_after"].items():
        done = next(
            i
            for i, e in enumerate(events)
            if e.type == Type.TYPE_STEP_COMPLETED and e.step_id == upstream
        )
        queued = {e.step_id for e in events[done + 1 :] if e.type == Type.TYPE_STEP_QUEUED}
        assert set(branches) <= queued

    assert run_pb2.Run.State.Name(run.state) == expect["run_state"]
    for step in run.steps:
        want = expect["steps"][step.step_id]
        assert run_pb2.StepRun.State.Name(step.state) == want["state"]
        assert to_dict(step.output) == want["output"]
    assert to_dict(run.output) == expect["run_output"]

    assert decided is not None
    assert decided.state == approval_pb2.Approval.STATE_DECIDED
    assert approval_pb2.Decision.Name(decided.decision) == s["approval"]["decision"]
    assert decided.actor == s["approval"]["actor"]


async def test_python_client_with_the_python_agent(
    client: PodiumClient, example_agents: ExampleAgents
) -> None:
    await run_scenario(client, "python", example_agents.addresses["echo"])


async def test_python_client_with_the_node_agent(client: PodiumClient, node_agent: str) -> None:
    await run_scenario(client, "node", node_agent)
