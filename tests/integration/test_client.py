"""``podium.client`` against real servers: PodiumClient (asyncio), SyncPodiumClient in a
plain script, typed errors, and watch_run resuming across a server restart.

No timing assertions: waits have generous deadlines, so a slow machine makes the tests
slower, not red.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from podium.client import (
    FailedPreconditionError,
    NotFoundError,
    PodiumClient,
    UnavailableError,
    UnimplementedError,
    ValidationError,
    WatchPolicy,
    to_dict,
)
from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import approval_pb2, event_pb2, run_pb2
from tests.integration import client_helpers
from tests.integration.conftest import StartServer, static_agents
from tests.integration.runs_helpers import wait_until

bare_server = client_helpers.bare_server  # the fixture, used by name

RunEvent = event_pb2.RunEvent
Run = run_pb2.Run
Approval = approval_pb2.Approval
DEADLINE_SECONDS = 60.0


def chain(name: str, agent: str, n: int, **input: object) -> dict[str, object]:
    """A definition s1 -> s2 -> ... -> sn of ``agent`` steps, as a mapping."""
    steps: list[dict[str, object]] = []
    for i in range(1, n + 1):
        step: dict[str, object] = {"id": f"s{i}", "agent": agent, "input": dict(input)}
        if i > 1:
            step["depends_on"] = [f"s{i - 1}"]
        steps.append(step)
    return {"name": name, "steps": steps}


async def whole_log(client: PodiumClient, run_id: str) -> list[RunEvent]:
    """The run's durable event log, every page."""
    events: list[RunEvent] = []
    after = 0
    while True:
        page = await client.list_run_events(run_id, after_sequence=after)
        events.extend(page.items)
        after = page.next_after_sequence
        if not after:
            return events


async def test_definitions_runs_and_typed_errors(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with PodiumClient(server.address) as client:
        # A definition from a YAML file (short forms), then from a mapping.
        flow = tmp_path / "flow.yaml"
        flow.write_text(
            "name: greet\nsteps:\n  - {id: hi, agent: echo, input: {who: '${run.input.who}'}}\n"
        )
        created = await client.create_definition(flow)
        assert (created.name, created.version) == ("greet", 1)
        again = await client.create_definition(chain("greet", "echo", 2))
        assert again.version == 2
        assert (await client.get_definition("greet", version=1)).steps[0].id == "hi"
        page = await client.list_definitions(name_prefix="gr")
        assert [d.name for d in page.items] == ["greet"] and not page.next_page_token
        assert [d.name async for d in client.iter_definitions()] == ["greet"]

        # Every field violation of an invalid definition, typed.
        with pytest.raises(ValidationError) as invalid:
            await client.validate_definition(
                {
                    "name": "loop",
                    "steps": [
                        {"id": "a", "agent": "echo", "depends_on": ["b"]},
                        {"id": "b", "agent": "echo", "depends_on": ["a"]},
                        {"id": "b", "agent": "echo"},
                    ],
                }
            )
        error = invalid.value
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == "INVALID_DEFINITION"
        fields = {v.field for v in error.field_violations}
        assert "steps[2].id" in fields and len(error.field_violations) >= 2
        assert all(str(v) in str(error) for v in error.field_violations)

        # A run, awaited; its output; listing by state name.
        run = await client.start_run("greet", version=1, input={"who": "ops"}, labels={"k": "v"})
        assert run.state in (Run.STATE_RUNNING, Run.STATE_SUCCEEDED)
        done = await client.wait_run(run.id, timeout=DEADLINE_SECONDS)
        assert done.state == Run.STATE_SUCCEEDED
        assert to_dict(done.output) == {"hi": {"echo": {"who": "ops"}}}
        listed = await client.list_runs(states=["succeeded"], labels={"k": "v"})
        assert [r.id for r in listed.items] == [run.id]

        # A repeated request_id returns the same run (what makes StartRun retryable).
        first = await client.start_run("greet", version=1, request_id="once", start=False)
        second = await client.start_run("greet", version=1, request_id="once", start=False)
        assert first.id == second.id and first.state == Run.STATE_CREATED
        continued = await client.continue_run(first.id, input={"who": "later"})
        assert continued.state in (Run.STATE_RUNNING, Run.STATE_SUCCEEDED)
        cancelled = await client.start_run("greet", start=False)
        assert (await client.cancel_run(cancelled.id, reason="test")).state == Run.STATE_CANCELLED

        with pytest.raises(NotFoundError) as missing:
            await client.get_run("00000000-0000-0000-0000-000000000000")
        assert missing.value.reason == "RUN_NOT_FOUND"
        with pytest.raises(ValidationError) as malformed:
            await client.get_run("not-a-uuid")
        assert [v.field for v in malformed.value.field_violations] == ["run_id"]
        with pytest.raises(ValueError, match="unknown value 'finished'"):
            await client.list_runs(states=["finished"])
        with pytest.raises(ValueError, match="exactly one"):
            await client.start_run()

        # Agents.
        agent = await client.register_agent("extra", "127.0.0.1:1", skills=["x"], lazy=True)
        assert agent.name == "extra"
        assert "extra" in [a.name for a in (await client.list_agents(skill="x")).items]
        await client.deregister_agent("extra")


async def test_deliverables_and_webhook_deliveries(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "summarizer"))
    async with PodiumClient(server.address) as client:
        plan = {
            "name": "p",
            "steps": [{"id": "s", "agent": "summarizer", "input": {"text": "a b"}}],
        }
        run = await client.wait_run((await client.start_run(plan=plan)).id)
        assert run.state == Run.STATE_SUCCEEDED
        page = await client.list_deliverables(run.id, include_data=True)
        assert [(d.step_id, d.name) for d in page.items] == [("s", "summary.md")]
        assert b"a b" in page.items[0].data
        deliveries = await client.list_webhook_deliveries(run_id=run.id, states=["pending"])
        assert deliveries.items == []


async def test_watch_run_yields_the_whole_log_once_in_order(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with PodiumClient(server.address) as client:
        await client.create_definition(chain("three", "echo", 3))
        run = await client.start_run("three")
        events = [event async for event in client.watch_run(run.id)]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events == await whole_log(client, run.id)
        assert events[-1].type == RunEvent.TYPE_RUN_COMPLETED
        # Resuming from a sequence yields only what follows it.
        tail = [event async for event in client.watch_run(run.id, after_sequence=3)]
        assert tail == events[3:]


async def test_event_pages_idempotent_definitions_protocols_and_integers(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with PodiumClient(server.address) as client:
        # Creating is idempotent by content; apply_definition tells which happened.
        stored, created = await client.apply_definition(chain("same", "echo", 2))
        assert (stored.version, created) == (1, True)
        again, created = await client.apply_definition(chain("same", "echo", 2))
        assert (again.version, created) == (1, False)
        assert (await client.create_definition(chain("same", "echo", 2))).version == 1
        forced = await client.create_definition(chain("same", "echo", 2), force_new_version=True)
        assert forced.version == 2

        # list_run_events pages like the other list calls.
        run = await client.wait_run((await client.start_run("same", input={"x": 1})).id)
        events: list[RunEvent] = []
        token = ""
        while True:
            page = await client.list_run_events(run.id, page_size=2, page_token=token)
            assert len(page.items) <= 2
            events.extend(page.items)
            token = page.next_page_token
            assert token == (str(page.next_after_sequence) if page.next_after_sequence else "")
            if not token:
                break
        assert [e.sequence for e in events] == list(range(1, run.last_event_sequence + 1))

        # Integers stay integers in to_dict, of a whole run too.
        data = to_dict(run)
        assert data["input"] == {"x": 1} and isinstance(data["input"]["x"], int)
        assert data["last_event_sequence"] == run.last_event_sequence

        # The agent protocol at registration.
        agent = await client.register_agent("a2a-one", "127.0.0.1:9", protocol="a2a")
        assert agent.protocol == agent.PROTOCOL_A2A
        with pytest.raises(ValueError, match="podium_v1, a2a"):
            await client.register_agent("bad", "127.0.0.1:9", protocol="carrier-pigeon")


async def test_watch_run_resumes_after_a_server_restart(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """A server is stopped while a slow run is watched and a new one starts on the same
    port and database: the iterator reconnects by itself and yields every event of the
    run exactly once, in sequence order, up to the terminal event."""
    agents = static_agents(example_agents, "sleeper")
    first = await start_server(agents=agents)
    port = first.port
    watch = WatchPolicy(give_up_after_seconds=DEADLINE_SECONDS)
    async with PodiumClient(first.address, watch=watch) as client:
        await client.create_definition(chain("naps", "sleeper", 3, seconds=1.0))
        run = await client.start_run("naps")
        events: list[RunEvent] = []
        stopped_after = 0
        async with asyncio.timeout(DEADLINE_SECONDS * 2):
            async for event in client.watch_run(run.id):
                events.append(event)
                if not stopped_after and event.type == RunEvent.TYPE_STEP_PROGRESS:
                    # Mid-run: stop the server the stream is connected to, then start
                    # a new one where the client will look for it.
                    stopped_after = event.sequence
                    await first.stop(0)
                    await start_server(agents=agents, listen_address=f"127.0.0.1:{port}")
        assert stopped_after, "no progress event before the end of the run"
        assert events[-1].sequence > stopped_after, "nothing was read after the restart"
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events == await whole_log(client, run.id)
        assert events[-1].type == RunEvent.TYPE_RUN_COMPLETED


async def test_watch_run_gives_up_when_no_server_comes_back(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "sleeper"))
    watch = WatchPolicy(give_up_after_seconds=1.0)
    async with PodiumClient(server.address, watch=watch) as client:
        await client.create_definition(chain("nap", "sleeper", 1, seconds=30))
        run = await client.start_run("nap")
        with pytest.raises(UnavailableError):
            async with asyncio.timeout(DEADLINE_SECONDS):
                async for event in client.watch_run(run.id):
                    if event.type == RunEvent.TYPE_STEP_STARTED:
                        await server.stop(0)


async def pending_approval(client: PodiumClient, run_id: str) -> Approval:
    """The one pending approval of a run, once it exists."""
    found: list[Approval] = []

    async def check() -> bool:
        found[:] = (await client.list_approvals(run_id=run_id)).items
        return len(found) == 1

    await wait_until(check, f"a pending approval of run {run_id}", within=DEADLINE_SECONDS)
    return found[0]


async def test_client_decide_approval_request_id_is_idempotent(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """The same decision with the same request_id returns the decided approval again;
    another request, or another decision with that request_id, is FAILED_PRECONDITION
    (APPROVAL_NOT_PENDING). list_approvals filters by state names or values."""
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with PodiumClient(server.address) as client:
        plan = {"name": "gate", "steps": [{"id": "a", "agent": "echo", "checkpoint": "before"}]}
        run = await client.start_run(plan=plan)
        approval = await pending_approval(client, run.id)
        assert (approval.kind, approval.state) == (
            Approval.KIND_CHECKPOINT_BEFORE,
            Approval.STATE_PENDING,
        )

        first = await client.approve(approval.id, actor="ann", comment="ok", request_id="r1")
        again = await client.decide_approval(
            approval.id, approval_pb2.DECISION_APPROVE, actor="ann", comment="ok", request_id="r1"
        )
        assert first.state == Approval.STATE_DECIDED
        assert (again.id, again.state, again.decision, again.actor, again.decide_time) == (
            first.id,
            first.state,
            approval_pb2.DECISION_APPROVE,
            "ann",
            first.decide_time,
        )
        for retry in (
            client.approve(approval.id, actor="ann"),  # a new request_id
            client.reject(approval.id, actor="ann", request_id="r1"),  # another decision
        ):
            with pytest.raises(FailedPreconditionError) as refused:
                await retry
            assert refused.value.reason == "APPROVAL_NOT_PENDING"
        assert (await client.get_approval(approval.id)).decide_time == first.decide_time

        # Pending only by default; decided ones by name or by value.
        assert (await client.list_approvals(run_id=run.id)).items == []
        for states in (["decided"], [Approval.STATE_DECIDED], ["PENDING", "STATE_DECIDED"]):
            listed = await client.list_approvals(run_id=run.id, states=states)
            assert [a.id for a in listed.items] == [approval.id], states
        assert (await client.list_approvals(run_id=run.id, states=["expired"])).items == []
        with pytest.raises(ValueError, match="unknown value 'done'"):
            await client.list_approvals(states=["done"])
        assert (await client.wait_run(run.id, timeout=DEADLINE_SECONDS)).state == (
            Run.STATE_SUCCEEDED
        )


async def test_client_wait_run_and_watch_run_follow_a_resume(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """A run fails and is resumed while it is watched: the iterator goes on past
    run.failed, through run.resumed, to the new attempt's terminal event. Replaying
    from 0 afterwards yields the same events; wait_run returns the resumed run's end."""
    server = await start_server(agents=static_agents(example_agents, "echo", "flaky"))
    async with PodiumClient(server.address) as client:
        await client.create_definition(
            {
                "name": "resumable",
                "steps": [
                    {"id": "ok", "agent": "echo"},
                    {"id": "bad", "agent": "flaky", "depends_on": ["ok"], "input": {"failures": 1}},
                    {"id": "after", "agent": "echo", "depends_on": ["bad"]},
                ],
            }
        )
        run = await client.start_run("resumable")
        live: list[RunEvent] = []
        async with asyncio.timeout(DEADLINE_SECONDS):
            async for event in client.watch_run(run.id):
                live.append(event)
                if event.type == RunEvent.TYPE_RUN_FAILED:
                    resumed = await client.resume_run(run.id)
                    assert resumed.run_attempt == 2
        types = [e.type for e in live]
        assert types.count(RunEvent.TYPE_RUN_FAILED) == 1
        failed_at = types.index(RunEvent.TYPE_RUN_FAILED)
        assert types[failed_at + 1] == RunEvent.TYPE_RUN_RESUMED
        assert types[-1] == RunEvent.TYPE_RUN_COMPLETED
        assert [e.sequence for e in live] == list(range(1, len(live) + 1))
        assert live == await whole_log(client, run.id)

        # Replaying from 0 (or from the old terminal event) follows the resume too.
        assert [e async for e in client.watch_run(run.id)] == live
        tail = [e async for e in client.watch_run(run.id, after_sequence=live[failed_at].sequence)]
        assert tail == live[failed_at + 1 :]
        done = await client.wait_run(run.id, timeout=DEADLINE_SECONDS)
        assert (done.state, done.run_attempt) == (Run.STATE_SUCCEEDED, 2)


async def test_an_rpc_the_server_lacks_raises_unimplemented(bare_server: str) -> None:
    async with PodiumClient(bare_server, timeout=10) as client:
        with pytest.raises(UnimplementedError) as caught:
            await client.list_approvals()
        assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(UnimplementedError):
            await client.resume_run("00000000-0000-0000-0000-000000000000")
        with pytest.raises(UnimplementedError):
            await client.invalidate_cache("flow")
        with pytest.raises(UnimplementedError):
            async for _ in client.watch_run("00000000-0000-0000-0000-000000000000"):
                pass


SCRIPT = """
import sys

from podium.client import NotFoundError, SyncPodiumClient, ValidationError, to_dict

with SyncPodiumClient(sys.argv[1], timeout=30) as podium:
    podium.create_definition({"name": "sync", "steps": [
        {"id": "a", "agent": "echo", "input": {"n": "${run.input.n}"}},
        {"id": "b", "agent": "echo", "depends_on": ["a"],
         "input": {"m": "${steps.a.output.echo.n}"}},
    ]})
    run = podium.start_run("sync", input={"n": 7})
    kinds = [event.type for event in podium.watch_run(run.id)]
    done = podium.get_run(run.id)
    print("events", len(kinds))
    print("state", done.state)
    print("output", to_dict(done.output))
    try:
        podium.validate_definition(
            {"name": "bad", "steps": [{"id": "x", "agent": "echo", "depends_on": ["y"]}]}
        )
    except ValidationError as error:
        print("violations", [v.field for v in error.field_violations])
    try:
        podium.get_definition("nope")
    except NotFoundError as error:
        print("reason", error.reason)
    # Stopping an iteration early closes its stream.
    first = next(iter(podium.watch_run(run.id)))
    print("first", first.sequence)
print("closed")
"""


async def test_the_sync_client_in_a_plain_script(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script), server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert int(lines["state"]) == Run.STATE_SUCCEEDED
    assert lines["output"] == "{'b': {'echo': {'m': 7}}}"
    assert int(lines["events"]) >= 8
    assert lines["violations"] == "['steps[0].depends_on[0]']"
    assert lines["reason"] == "DEFINITION_NOT_FOUND"
    assert lines["first"] == "1"
    assert result.stdout.splitlines()[-1] == "closed"
