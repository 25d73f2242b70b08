"""Durable timers (sleep steps) and external events (wait_for_event steps, SendEvent),
end to end through the gRPC API on real servers.

What is checked beyond the API (deadlines, events per step) is read from Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import grpc
import pytest
from google.protobuf import json_format

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.client_helpers import podium
from tests.integration.conftest import StartServer, static_agents
from tests.integration.processes import start_podium
from tests.integration.rpc import error_details, rpc_error, violations
from tests.integration.runs_helpers import (
    Run,
    StepRun,
    definition,
    plain,
    plan,
    start_run,
    step_of,
    struct,
    wait_for_run,
    wait_for_step,
)
from tests.integration.test_durability import connect, replicas, serve_env, stub_for

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
WAITING = (StepRun.STATE_WAITING_RETRY,)
EXAMPLE = Path(__file__).parents[2] / "examples" / "ticket-follow-up.yaml"


@pytest.fixture
async def stub(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[OrchestrationServiceAsyncStub]:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.OrchestrationServiceStub(channel)


def wait_plan(name: str = "ticket.replied", **wait: Any) -> Any:
    """A run that waits for an event keyed by its input's ticket id, then echoes it."""
    return plan(
        [
            {
                "id": "reply",
                "wait_for_event": {"name": name, "key": "${run.input.ticket}", **wait},
            },
            {
                "id": "after",
                "agent": "echo",
                "depends_on": ["reply"],
                "input": {"got": "${steps.reply.output}"},
            },
        ]
    )


async def send(
    stub: OrchestrationServiceAsyncStub,
    event_id: str,
    key: str,
    payload: dict[str, Any] | None = None,
    name: str = "ticket.replied",
) -> pb.SendEventResponse:
    return await stub.SendEvent(
        pb.SendEventRequest(event_id=event_id, name=name, key=key, payload=struct(payload))
    )


async def events_of(conn: Conn, run_id: str, step_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT type FROM orchestration_events WHERE run_id = $1 AND step_id = $2"
        " ORDER BY sequence",
        uuid.UUID(run_id),
        step_id,
    )
    return [r["type"] for r in rows]


async def test_sleep_waits_without_an_agent_and_passes_its_deadline_on(
    stub: OrchestrationServiceAsyncStub, database_url: str
) -> None:
    started = await start_run(
        stub,
        inline=plan(
            [
                {"id": "nap", "sleep": {"seconds": 1.5}},
                {
                    "id": "after",
                    "agent": "echo",
                    "depends_on": ["nap"],
                    "input": {"at": "${steps.nap.output.slept_until}"},
                },
            ]
        ),
    )
    waiting = await wait_for_step(stub, started.run.id, "nap", WAITING)
    parked = step_of(waiting, "nap")
    assert parked.attempt == 0  # parked: no attempt used, no lease held
    assert parked.HasField("next_attempt_time")  # its deadline
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run
    nap = step_of(run, "nap")
    slept_until = datetime.fromisoformat(plain(nap.output)["slept_until"])
    assert nap.end_time.ToDatetime(UTC) >= slept_until
    assert slept_until - nap.start_time.ToDatetime(UTC) >= timedelta(seconds=1.4)
    assert [a.number for a in nap.attempts] == [1]
    async with connect(database_url) as conn:
        types = await events_of(conn, started.run.id, "nap")
    assert types.count("step.waiting") == 1
    assert types[-1] == "step.completed"


async def test_sleep_until_a_past_time_succeeds_at_once(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    started = await start_run(
        stub, inline=plan([{"id": "nap", "sleep": {"until": past.isoformat()}}])
    )
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run


async def test_sleep_survives_a_killed_server(database_url: str, tmp_path: Path) -> None:
    """kill -9 during the sleep: a new server completes the step after its deadline,
    never before (the deadline is in the database, not in a task)."""
    async with replicas() as started:
        env = serve_env(database_url, "")
        first = await start_podium(env, tmp_path / "first.log")
        started.append(first)
        async with stub_for(first.address) as stub:
            run_id = (
                await start_run(stub, inline=plan([{"id": "nap", "sleep": {"seconds": 4}}]))
            ).run.id
            await wait_for_step(stub, run_id, "nap", WAITING)
        assert first.kill() == -9
        second = await start_podium(env, tmp_path / "second.log")
        started.append(second)
        async with stub_for(second.address) as stub:
            run = await wait_for_run(stub, run_id)
    assert run.state == Run.STATE_SUCCEEDED, run
    async with connect(database_url) as conn:
        row = await conn.fetchrow(
            "SELECT (spec ->> 'wake_at')::timestamptz AS wake_at, started_at, ended_at"
            " FROM orchestration_steps WHERE run_id = $1 AND step_id = 'nap'",
            uuid.UUID(run_id),
        )
    assert row is not None
    assert row["ended_at"] >= row["wake_at"]
    assert row["wake_at"] - row["started_at"] >= timedelta(seconds=3.9)


async def test_event_sent_before_the_wait_is_kept_and_received(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    sent = await send(stub, "e-before", "T-1", {"text": "thanks"})
    assert (sent.duplicate, sent.delivered_steps) == (False, 0)
    assert sent.expire_time.ToDatetime(UTC) > datetime.now(UTC)
    run = await wait_for_run(
        stub, (await start_run(stub, inline=wait_plan(), input={"ticket": "T-1"})).run.id
    )
    assert run.state == Run.STATE_SUCCEEDED, run
    output = plain(step_of(run, "reply").output)
    assert output["event_id"] == "e-before"
    assert (output["name"], output["key"], output["payload"]) == (
        "ticket.replied",
        "T-1",
        {"text": "thanks"},
    )


async def test_event_during_the_wait_wakes_it_once(
    stub: OrchestrationServiceAsyncStub, database_url: str
) -> None:
    run_id = (
        await start_run(stub, inline=wait_plan(), input={"ticket": 42})  # a number key
    ).run.id
    other = (await start_run(stub, inline=wait_plan(), input={"ticket": 7})).run.id
    await wait_for_step(stub, run_id, "reply", WAITING)
    await wait_for_step(stub, other, "reply", WAITING)
    sent = await send(stub, "e-during", "42", {"ok": True})
    assert (sent.duplicate, sent.delivered_steps) == (False, 1)
    again = await send(stub, "e-during", "42", {"ok": False})
    assert (again.duplicate, again.delivered_steps) == (True, 1)
    run = await wait_for_run(stub, run_id)
    assert run.state == Run.STATE_SUCCEEDED, run
    assert plain(step_of(run, "reply").output)["payload"] == {"ok": True}
    # The other run's key did not match: it still waits.
    still = await stub.GetRun(pb.GetRunRequest(run_id=other))
    assert step_of(still.run, "reply").state == StepRun.STATE_WAITING_RETRY
    async with connect(database_url) as conn:
        types = await events_of(conn, run_id, "reply")
    assert types.count("event.received") == 1
    assert types.count("step.completed") == 1


async def test_timeout_fails_continues_or_skips(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    fail = (
        await start_run(stub, inline=wait_plan(timeout_seconds=0.5), input={"ticket": "x"})
    ).run.id
    go_on = (
        await start_run(
            stub,
            inline=wait_plan(timeout_seconds=0.5, on_timeout="ON_TIMEOUT_CONTINUE"),
            input={"ticket": "x"},
        )
    ).run.id
    skip = (
        await start_run(
            stub,
            inline=wait_plan(timeout_seconds=0.5, on_timeout="ON_TIMEOUT_SKIP"),
            input={"ticket": "x"},
        )
    ).run.id
    failed = await wait_for_run(stub, fail)
    assert failed.state == Run.STATE_FAILED
    assert step_of(failed, "reply").error.code == "EVENT_TIMEOUT"
    continued = await wait_for_run(stub, go_on)
    assert continued.state == Run.STATE_SUCCEEDED, continued
    assert plain(step_of(continued, "reply").output) == {"timed_out": True}
    assert plain(step_of(continued, "after").output) == {"echo": {"got": {"timed_out": True}}}
    skipped = await wait_for_run(stub, skip)
    assert step_of(skipped, "reply").state == StepRun.STATE_SKIPPED
    assert step_of(skipped, "reply").error.code == "EVENT_TIMEOUT"
    # An event after the wait ended changes nothing.
    late = await send(stub, "e-late", "x")
    assert late.delivered_steps == 0
    assert plain(step_of(await wait_for_run(stub, go_on), "reply").output) == {"timed_out": True}


async def test_one_event_is_delivered_exactly_once_across_two_replicas(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    agents = static_agents(example_agents, "echo")
    servers = [await start_server(agents=agents), await start_server(agents=agents)]
    channels = [grpc.aio.insecure_channel(s.address) for s in servers]
    try:
        stubs = [pb_grpc.OrchestrationServiceStub(c) for c in channels]
        run_ids = [
            (await start_run(stubs[i % 2], inline=wait_plan(), input={"ticket": "T"})).run.id
            for i in range(6)
        ]
        for run_id in run_ids:
            await wait_for_step(stubs[0], run_id, "reply", WAITING)
        results = await asyncio.gather(
            send(stubs[0], "shared", "T", {"n": 1}), send(stubs[1], "shared", "T", {"n": 1})
        )
        assert sorted(r.duplicate for r in results) == [False, True]
        assert {r.delivered_steps for r in results} == {6}
        for run_id in run_ids:
            run = await wait_for_run(stubs[1], run_id)
            assert run.state == Run.STATE_SUCCEEDED, run
        async with connect(database_url) as conn:
            for run_id in run_ids:
                types = await events_of(conn, run_id, "reply")
                assert types.count("event.received") == 1, types
                assert types.count("step.completed") == 1, types
    finally:
        for channel in channels:
            await channel.close(None)


async def test_definitions_and_events_are_validated(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    bad = plan(
        [
            {"id": "a", "sleep": {}},
            {"id": "b", "sleep": {"seconds": -1}},
            {"id": "c", "sleep": {"seconds": 5}, "input": {"x": 1}, "timeout_seconds": 3},
            {"id": "d", "wait_for_event": {"name": ""}},
            {"id": "e", "wait_for_event": {"name": "ok", "key": "${steps.ghost.output.id}"}},
            {"id": "f", "wait_for_event": {"name": "ok", "timeout_seconds": -2}},
        ]
    )
    error = await rpc_error(start_run(stub, inline=bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    for field in (
        "plan.steps[0].sleep",
        "plan.steps[1].sleep.seconds",
        "plan.steps[2].input",
        "plan.steps[2].timeout_seconds",
        "plan.steps[3].wait_for_event.name",
        "plan.steps[4].wait_for_event.key",
        "plan.steps[5].wait_for_event.timeout_seconds",
    ):
        assert field in found, (field, found)

    error = await rpc_error(stub.SendEvent(pb.SendEventRequest(name="bad name!")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"event_id", "name"}
    info, _ = error_details(error)
    assert info.reason == "INVALID_ARGUMENT"
    payload = json_format.ParseDict({"n": float("nan")}, pb.SendEventRequest().payload)
    error = await rpc_error(
        stub.SendEvent(pb.SendEventRequest(event_id="x", name="ok", payload=payload))
    )
    assert "payload.n" in violations(error)


async def test_the_example_with_the_cli(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """examples/ticket-follow-up.yaml applied and run with the CLI; the reply is sent
    with ``podium events send`` (a resend is reported as a duplicate)."""
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address]
    applied = await podium("definitions", "apply", str(EXAMPLE), *address)
    assert applied.returncode == 0, applied.stderr
    started = await podium(
        "runs",
        "start",
        "ticket-follow-up",
        "--input",
        '{"ticket_id": "T-42"}',
        "-o",
        "json",
        *address,
    )
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["id"]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await wait_for_step(stub, run_id, "reply", WAITING)
        send_args = ("events", "send", "ticket.replied", "--key", "T-42", "--id", "mail-1")
        sent = await podium(*send_args, "--payload", '{"text": "thanks"}', *address)
        assert sent.returncode == 0, sent.stderr
        assert "delivered to 1 waiting steps" in sent.stdout
        again = await podium(*send_args, "-o", "json", *address)
        assert json.loads(again.stdout)["duplicate"] is True
        run = await wait_for_run(stub, run_id)
    assert run.state == Run.STATE_SUCCEEDED, run
    follow_up = plain(step_of(run, "follow-up").output)["echo"]
    assert follow_up["reply"]["payload"] == {"text": "thanks"}
    triage = await podium(
        "definitions", "apply", str(EXAMPLE.with_name("ticket-triage.yaml")), *address
    )
    assert triage.returncode == 0, triage.stderr
    urgent = await podium(
        "events",
        "send",
        "ticket.replied",
        "--key",
        "T-43",
        "--id",
        "mail-7",
        "--payload",
        '{"priority": "high", "text": "still broken"}',
        *address,
    )
    assert urgent.returncode == 0, urgent.stderr
    assert "started by an event trigger" in urgent.stdout
    bad = await podium("events", "send", "ticket.replied", "--id", "x", "--payload", "[1]")
    assert bad.returncode == 2


async def test_event_triggers_start_one_run_per_definition_and_event_id(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    echo = [{"id": "a", "agent": "echo", "input": {"text": "${run.input.payload.text}"}}]
    high = definition(
        "on-high",
        echo,
        triggers=[{"event_name": "ticket.replied", "payload_match": {"priority": "high"}}],
    )
    keyed = definition("on-t9", echo, triggers=[{"event_name": "ticket.replied", "key": "T-9"}])
    gone = definition("archived", echo, triggers=[{"event_name": "ticket.replied"}])
    for d in (high, keyed, gone):
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=d))
    await stub.ArchiveDefinition(pb.ArchiveDefinitionRequest(name="archived"))

    sent = await send(stub, "t1", "T-9", {"priority": "high", "text": "hi"})
    assert len(sent.triggered_run_ids) == 2
    runs = [await wait_for_run(stub, run_id) for run_id in sent.triggered_run_ids]
    assert sorted(r.definition_name for r in runs) == ["on-high", "on-t9"]
    for run in runs:
        assert run.state == Run.STATE_SUCCEEDED, run
        assert plain(run.input) == {
            "event_id": "t1",
            "name": "ticket.replied",
            "key": "T-9",
            "payload": {"priority": "high", "text": "hi"},
        }
        assert plain(run.output) == {"a": {"echo": {"text": "hi"}}}
        assert plain(run.metadata) == {
            "trigger": {"event_id": "t1", "event_name": "ticket.replied"}
        }

    again = await send(stub, "t1", "T-9", {"priority": "high", "text": "hi"})
    assert again.duplicate
    assert sorted(again.triggered_run_ids) == sorted(sent.triggered_run_ids)
    assert (await send(stub, "t2", "T-1", {"priority": "low"})).triggered_run_ids == []
    only_high = await send(stub, "t3", "T-1", {"priority": "high", "text": "x"})
    assert len(only_high.triggered_run_ids) == 1
    listed = await stub.ListRuns(pb.ListRunsRequest())
    assert len(listed.runs) == 3


async def test_an_event_trigger_filter_in_cel(stub: OrchestrationServiceAsyncStub) -> None:
    """A trigger's CEL filter over the event: only events it holds for start a run; an
    event on which it fails (a missing field) starts none; a filter that does not
    compile, or reads anything but ``event``, is a field violation."""
    echo = [{"id": "a", "agent": "echo", "input": {"n": "${run.input.payload.amount}"}}]
    big = definition(
        "on-big-order",
        echo,
        triggers=[{"event_name": "order.placed", "filter": "event.payload.amount > 100"}],
    )
    await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=big))
    small = await send(stub, "o1", "", {"amount": 20}, name="order.placed")
    assert small.triggered_run_ids == []
    missing = await send(stub, "o2", "", {"total": 500}, name="order.placed")
    assert missing.triggered_run_ids == []  # event.payload.amount: no such key
    large = await send(stub, "o3", "", {"amount": 250}, name="order.placed")
    [run_id] = large.triggered_run_ids
    run = await wait_for_run(stub, run_id)
    assert run.state == Run.STATE_SUCCEEDED and plain(run.output) == {"a": {"echo": {"n": 250}}}

    bad = definition(
        "bad-filter",
        echo,
        triggers=[
            {"event_name": "x", "filter": "event.payload.amount >"},
            {"event_name": "x", "filter": "run.input.amount > 1"},
            {"event_name": "x", "filter": "steps.a.output == null"},
        ],
    )
    error = await rpc_error(stub.CreateDefinition(pb.CreateDefinitionRequest(definition=bad)))
    assert {"triggers[0].filter", "triggers[1].filter", "triggers[2].filter"} <= set(
        violations(error)
    )


async def test_event_triggers_are_validated(stub: OrchestrationServiceAsyncStub) -> None:
    error = await rpc_error(
        start_run(
            stub,
            inline=plan([{"id": "a", "agent": "echo"}], triggers=[{"event_name": "x"}]),
        )
    )
    assert "plan.triggers" in violations(error)
    bad = definition(
        "bad-trigger",
        [{"id": "a", "agent": "echo"}],
        triggers=[{"event_name": ""}, {"event_name": "ok", "key": "k" * 600}],
    )
    error = await rpc_error(stub.CreateDefinition(pb.CreateDefinitionRequest(definition=bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"triggers[0].event_name", "triggers[1].key"} <= set(violations(error))


async def test_a_key_from_an_upstream_output_and_a_key_that_is_not_text(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    keyed = plan(
        [
            {"id": "a", "agent": "echo", "input": {"id": "K-1", "obj": {"x": 1}}},
            {
                "id": "w",
                "depends_on": ["a"],
                "wait_for_event": {"name": "n", "key": "order-${steps.a.output.echo.id}"},
            },
        ]
    )
    run_id = (await start_run(stub, inline=keyed)).run.id
    await wait_for_step(stub, run_id, "w", WAITING)
    assert (await send(stub, "k1", "order-K-1", name="n")).delivered_steps == 1
    assert (await wait_for_run(stub, run_id)).state == Run.STATE_SUCCEEDED
    not_text = plan(
        [
            {"id": "a", "agent": "echo", "input": {"obj": {"x": 1}}},
            {
                "id": "w",
                "depends_on": ["a"],
                "wait_for_event": {"name": "n", "key": "${steps.a.output.echo.obj}"},
            },
        ]
    )
    failed = await wait_for_run(stub, (await start_run(stub, inline=not_text)).run.id)
    assert failed.state == Run.STATE_FAILED
    assert step_of(failed, "w").error.code == "INVALID_EVENT_KEY"


async def test_an_event_racing_the_start_of_waits_reaches_each_once(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    """Waits starting on two replicas while the event is sent: every step receives it
    once, whether it was parked (delivered) or not yet (taken from the kept events)."""
    agents = static_agents(example_agents, "echo")
    servers = [await start_server(agents=agents), await start_server(agents=agents)]
    channels = [grpc.aio.insecure_channel(s.address) for s in servers]
    try:
        stubs = [pb_grpc.OrchestrationServiceStub(c) for c in channels]
        starts = [
            start_run(stubs[i % 2], inline=wait_plan(), input={"ticket": "R"}) for i in range(12)
        ]
        started, sent = await asyncio.gather(
            asyncio.gather(*starts), send(stubs[1], "race", "R", {"n": 1})
        )
        assert not sent.duplicate
        async with connect(database_url) as conn:
            for response in started:
                run = await wait_for_run(stubs[0], response.run.id)
                assert run.state == Run.STATE_SUCCEEDED, run
                assert plain(step_of(run, "reply").output)["event_id"] == "race"
                types = await events_of(conn, response.run.id, "reply")
                assert types.count("event.received") == 1, types
                assert types.count("step.completed") == 1, types
    finally:
        for channel in channels:
            await channel.close(None)
