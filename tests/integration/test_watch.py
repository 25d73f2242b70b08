"""WatchRun and WatchRuns end to end: real servers on a fresh database, the example
agents as gRPC servers, the generated async stub. What a stream delivered is compared
with the durable log (ListRunEvents): sequences 1..N exactly once, in order, ending
after the terminal event.

No timing assertions: every stream read has a generous deadline, so a slow machine
makes the tests slower, not red.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.events import hub as hub_module
from podium.server.events.hub import EventHub
from podium.server.storage.errors import StorageUnavailable
from tests.integration.conftest import StartServer, static_agents
from tests.integration.rpc import error_details, violations
from tests.integration.runs_helpers import (
    Run,
    RunEvent,
    all_events,
    create_definition,
    event_type,
    plan,
    start_run,
    wait_for_run,
    wait_until,
)

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

STREAM_DEADLINE_SECONDS = 30.0
TERMINAL_TYPES = (
    RunEvent.TYPE_RUN_COMPLETED,
    RunEvent.TYPE_RUN_FAILED,
    RunEvent.TYPE_RUN_CANCELLED,
)

Connect = Callable[..., Awaitable[tuple[PodiumServer, "OrchestrationServiceAsyncStub"]]]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def podium(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[Connect]:
    """Factory: ``await podium(agents=None, **settings)`` starts a server (echo and
    sleeper static unless ``agents`` is given) and returns it with a stub."""
    channels: list[grpc.aio.Channel] = []

    async def connect(
        agents: str | None = None, **settings: Any
    ) -> tuple[PodiumServer, OrchestrationServiceAsyncStub]:
        server = await start_server(
            agents=static_agents(example_agents, "echo", "sleeper") if agents is None else agents,
            **settings,
        )
        channel = grpc.aio.insecure_channel(server.address)
        channels.append(channel)
        return server, pb_grpc.OrchestrationServiceStub(channel)

    try:
        yield connect
    finally:
        for channel in channels:
            await channel.close(None)


# --------------------------------------------------------------------------- helpers


def hub_of(server: PodiumServer) -> EventHub:
    """The event hub of a server's engine."""
    return server.engine.watch.hub


async def watch_runs(
    server: PodiumServer, stub: OrchestrationServiceAsyncStub, **request: Any
) -> Any:
    """A WatchRuns call whose first read is done (so "live" starts before what the test
    does next)."""
    watch = server.engine.watch
    reads = watch.org_reads
    call = stub.WatchRuns(pb.WatchRunsRequest(**request))
    await wait_until(lambda: watch.org_reads > reads, "the WatchRuns stream's first read")
    return call


async def chain(
    stub: OrchestrationServiceAsyncStub, name: str, agent: str, n: int, **input: Any
) -> None:
    """Store a linear chain s1 -> s2 -> ... -> sn of ``agent`` steps with ``input``."""
    steps = []
    for i in range(1, n + 1):
        step: dict[str, Any] = {"id": f"s{i}", "agent": agent, "input": input}
        if i > 1:
            step["depends_on"] = [f"s{i - 1}"]
        steps.append(step)
    await create_definition(stub, name, steps)


async def read_events(
    call: Any, *, limit: int | None = None, until: Callable[[RunEvent], bool] | None = None
) -> list[RunEvent]:
    """Events of a WatchRun/WatchRuns call until it ends, ``limit`` events were read, or
    ``until`` is true for the last one read (deadline STREAM_DEADLINE_SECONDS)."""
    events: list[RunEvent] = []
    async with asyncio.timeout(STREAM_DEADLINE_SECONDS):
        while limit is None or len(events) < limit:
            response = await call.read()
            if not isinstance(response, pb.WatchRunResponse | pb.WatchRunsResponse):
                break  # grpc.aio.EOF
            events.append(response.event)
            if until is not None and until(response.event):
                break
    return events


async def watch(
    stub: OrchestrationServiceAsyncStub, run_id: str, after: int = 0, **kwargs: Any
) -> tuple[list[RunEvent], Any]:
    """WatchRun read with :func:`read_events`; returns the events and the call."""
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_sequence=after))
    return await read_events(call, **kwargs), call


async def ended(call: Any) -> bool:
    """Whether the stream ended on its own with OK (no more messages)."""
    async with asyncio.timeout(STREAM_DEADLINE_SECONDS):
        extra = await call.read()
        eof = not isinstance(extra, pb.WatchRunResponse)
        return eof and await call.code() == grpc.StatusCode.OK


def sequences(events: Iterable[RunEvent]) -> list[int]:
    """The sequences of events, in order."""
    return [e.sequence for e in events]


def assert_whole_log(events: list[RunEvent], log: list[RunEvent]) -> None:
    """``events`` is exactly the durable log: 1..N once each, in order, identical
    messages, ending with the terminal event."""
    assert sequences(events) == list(range(1, len(log) + 1)), sequences(events)
    assert events == log
    assert events[-1].type in TERMINAL_TYPES


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a streaming call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with asyncio.timeout(STREAM_DEADLINE_SECONDS):
            await call.read()
    return caught.value


async def listen_backends(database_url: str) -> list[int]:
    """Pids of the backends LISTENing on podium_events (the hubs)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = 'LISTEN \"podium_events\"'"
        )
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


async def terminate(database_url: str, pid: int) -> None:
    """pg_terminate_backend(pid)."""
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- WatchRun


async def test_a_whole_run_streams_once_in_order_and_ends_after_the_terminal_event(
    podium: Connect,
) -> None:
    """Watching from 0 before the run starts: every event 1..N exactly once, identical
    to ListRunEvents (definition name included), and the stream ends with OK right
    after run.completed."""
    server, stub = await podium()
    await chain(stub, "echoes", "echo", 3, x=1)
    run = (await start_run(stub, "echoes", start=False)).run
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run.id))
    first = await read_events(call, limit=1)
    assert [event_type(e) for e in first] == ["run.created"]
    await stub.ContinueRun(pb.ContinueRunRequest(run_id=run.id))
    events = first + await read_events(call)
    assert await call.code() == grpc.StatusCode.OK

    log = await all_events(stub, run.id)
    assert_whole_log(events, log)
    assert event_type(events[-1]) == "run.completed"
    assert {e.definition_name for e in events} == {"echoes"}
    assert {e.run_id for e in events} == {run.id}
    await wait_until(lambda: hub_of(server).run_watchers == 0, "the watcher to deregister")


async def test_reconnecting_mid_run_with_the_last_sequence_misses_and_repeats_nothing(
    podium: Connect,
) -> None:
    """Read until the first step completed, cancel the call, reconnect with the last
    sequence received while later steps still execute: the two streams together are the
    whole log, the second starting at k+1. Reconnecting again after the end with any k
    gets k+1..N."""
    _, stub = await podium()
    await chain(stub, "sleepy", "sleeper", 4, seconds=0.3)
    run = (await start_run(stub, "sleepy")).run
    head, call = await watch(
        stub, run.id, until=lambda e: event_type(e) == "step.completed" and e.step_id == "s1"
    )
    call.cancel()
    k = head[-1].sequence
    assert sequences(head) == list(range(1, k + 1))

    rest, call = await watch(stub, run.id, after=k)
    assert await call.code() == grpc.StatusCode.OK
    assert rest[0].sequence == k + 1
    # The reconnect happened while the run was executing: s2..s4 started after it.
    assert {e.step_id for e in rest if event_type(e) == "step.started"} == {"s2", "s3", "s4"}
    log = await all_events(stub, run.id)
    assert_whole_log(head + rest, log)

    for after in (1, k, len(log) - 1):
        replay, call = await watch(stub, run.id, after=after)
        assert replay == log[after:]
        assert await call.code() == grpc.StatusCode.OK


async def test_watching_a_finished_run_replays_and_ends(podium: Connect) -> None:
    """After the run ended: from 0 the whole log then the end; from the terminal
    event's sequence nothing, and the stream still ends."""
    _, stub = await podium()
    await chain(stub, "done", "echo", 2)
    run = (await start_run(stub, "done")).run
    assert (await wait_for_run(stub, run.id)).state == Run.STATE_SUCCEEDED
    log = await all_events(stub, run.id)

    events, call = await watch(stub, run.id)
    assert_whole_log(events, log)
    assert await ended(call)

    events, call = await watch(stub, run.id, after=len(log))
    assert events == []
    assert await call.code() == grpc.StatusCode.OK


async def test_a_failed_or_cancelled_run_ends_the_stream_too(podium: Connect) -> None:
    """run.cancelled is terminal: a watcher tailing a cancelled run ends after it."""
    _, stub = await podium()
    await chain(stub, "long", "sleeper", 1, seconds=30)
    run = (await start_run(stub, "long")).run
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run.id))
    await read_events(call, until=lambda e: event_type(e) == "step.started")
    await stub.CancelRun(pb.CancelRunRequest(run_id=run.id, reason="test"))
    rest = await read_events(call)
    assert event_type(rest[-1]) == "run.cancelled"
    assert await call.code() == grpc.StatusCode.OK


async def test_a_log_longer_than_a_page_replays_in_order(
    podium: Connect, database_url: str
) -> None:
    """A log of several pages (written directly with podium_emit_event) replays 1..N
    through one stream, from 0 and from the middle of a page."""
    server, stub = await podium()
    await chain(stub, "paged", "echo", 1)
    run = (await start_run(stub, "paged", start=False)).run
    page = server.engine.watch.config.page_size
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "SELECT podium_emit_event($1, 'step.progress', 's1', 1, 'running', '{}')"
            " FROM generate_series(1, $2)",
            uuid.UUID(run.id),
            page * 2 + 17,
        )
        await conn.execute(
            "SELECT podium_emit_event($1, 'run.cancelled', NULL, NULL, NULL, '{}')",
            uuid.UUID(run.id),
        )
    finally:
        await conn.close()
    log = await all_events(stub, run.id)
    assert len(log) == page * 2 + 19

    events, call = await watch(stub, run.id)
    assert_whole_log(events, log)
    events, call = await watch(stub, run.id, after=page - 3)
    assert events == log[page - 3 :]


async def test_many_watchers_of_one_run_each_get_every_event(podium: Connect) -> None:
    """Twenty watchers of one run (sharing reads) each see 1..N exactly once."""
    server, stub = await podium()
    await chain(stub, "shared", "sleeper", 3, seconds=0.2)
    run = (await start_run(stub, "shared", start=False)).run
    calls = [stub.WatchRun(pb.WatchRunRequest(run_id=run.id)) for _ in range(20)]
    for call in calls:
        await read_events(call, limit=1)
    await stub.ContinueRun(pb.ContinueRunRequest(run_id=run.id))
    streams = await asyncio.gather(*(read_events(call) for call in calls))
    log = await all_events(stub, run.id)
    for events in streams:
        assert_whole_log(log[:1] + events, log)
    watch = server.engine.watch
    assert watch.shared_reads > 0, (watch.reads, watch.shared_reads)


async def test_a_watcher_on_replica_a_sees_a_run_executed_by_replica_b(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """Replica A only serves the stream (its scheduler is stopped); replica B executes
    the run. A's watcher gets the whole log through A's own LISTEN connection, and a
    reconnect to B with the last sequence continues without a gap."""
    server_a, stub_a = await podium(agents="")
    await server_a.engine.scheduler.stop()
    _, stub_b = await podium()
    await chain(stub_b, "across", "sleeper", 3, seconds=0.2)
    run = (await start_run(stub_b, "across", start=False)).run

    call = stub_a.WatchRun(pb.WatchRunRequest(run_id=run.id))
    first = await read_events(call, limit=1)
    await stub_b.ContinueRun(pb.ContinueRunRequest(run_id=run.id))
    head = await read_events(call, until=lambda e: event_type(e) == "step.completed")
    call.cancel()
    rest, call_b = await watch(stub_b, run.id, after=head[-1].sequence)
    log = await all_events(stub_b, run.id)
    assert_whole_log(first + head + rest, log)

    # And A alone, for a whole run executed by B.
    run = (await start_run(stub_b, "across", start=False)).run
    call = stub_a.WatchRun(pb.WatchRunRequest(run_id=run.id))
    first = await read_events(call, limit=1)
    await stub_b.ContinueRun(pb.ContinueRunRequest(run_id=run.id))
    events = first + await read_events(call)
    assert_whole_log(events, await all_events(stub_b, run.id))
    assert example_agents["sleeper"].stats.calls >= 6
    assert hub_of(server_a).notifications > 0


async def test_cancelling_a_watcher_frees_its_hub_registration(podium: Connect) -> None:
    """Client cancellation (mid-tail and mid-replay) deregisters every watcher."""
    server, stub = await podium()
    hub = hub_of(server)
    await chain(stub, "slow", "sleeper", 1, seconds=30)
    run = (await start_run(stub, "slow")).run
    calls = [stub.WatchRun(pb.WatchRunRequest(run_id=run.id)) for _ in range(5)]
    for call in calls:
        await read_events(call, until=lambda e: event_type(e) == "step.started")
    runs_call = stub.WatchRuns(pb.WatchRunsRequest())
    await wait_until(lambda: hub.run_watchers == 5 and hub.org_watchers == 1, "6 watchers")
    for call in calls:
        call.cancel()
    runs_call.cancel()
    await wait_until(
        lambda: hub.run_watchers == 0 and hub.org_watchers == 0, "the watchers to deregister"
    )
    await stub.CancelRun(pb.CancelRunRequest(run_id=run.id))


async def test_a_killed_listen_connection_still_delivers_and_comes_back(
    podium: Connect, database_url: str
) -> None:
    """pg_terminate_backend on the hub's LISTEN connection mid-run: the stream still
    delivers every event (the poll, then the re-established LISTEN)."""
    server, stub = await podium()
    hub = hub_of(server)
    await chain(stub, "lost", "sleeper", 4, seconds=0.3)
    run = (await start_run(stub, "lost")).run
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run.id))
    head = await read_events(call, until=lambda e: event_type(e) == "step.started")
    (listener,) = await listen_backends(database_url)
    await terminate(database_url, listener)
    events = head + await read_events(call)
    assert_whole_log(events, await all_events(stub, run.id))
    await wait_until(lambda: hub.reconnects >= 1 and hub.listening, "LISTEN to come back")
    assert listener not in await listen_backends(database_url)


async def test_without_any_notification_the_poll_delivers_everything(
    podium: Connect, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LISTEN connection is killed and cannot come back: watchers rely on the
    fallback poll alone, and still get every event of WatchRun and WatchRuns."""
    server, stub = await podium()
    hub = hub_of(server)
    await chain(stub, "polled", "sleeper", 3, seconds=0.2)

    async def refuse(*_: Any, **__: Any) -> Any:
        raise StorageUnavailable("LISTEN refused by the test")

    monkeypatch.setattr(hub_module, "connect_direct", refuse)
    (listener,) = await listen_backends(database_url)
    await terminate(database_url, listener)
    await wait_until(lambda: not hub.listening, "the hub to notice")
    notifications = hub.notifications

    runs_call = await watch_runs(server, stub, definition_name="polled")
    run = (await start_run(stub, "polled")).run
    events, call = await watch(stub, run.id)
    log = await all_events(stub, run.id)
    assert_whole_log(events, log)
    org_events = await read_events(runs_call, until=lambda e: e.type in TERMINAL_TYPES)
    runs_call.cancel()
    assert org_events == log
    assert hub.notifications == notifications and not hub.listening
    assert hub.polls > 0


async def test_a_deleted_run_ends_its_watchers_with_not_found(
    podium: Connect, database_url: str
) -> None:
    """The poll notices a watched run that no longer exists (e.g. retention)."""
    _, stub = await podium()
    await chain(stub, "deleted", "echo", 1)
    run = (await start_run(stub, "deleted", start=False)).run
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run.id))
    await read_events(call, limit=1)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM orchestration_runs WHERE id = $1", uuid.UUID(run.id))
    finally:
        await conn.close()
    error = await rpc_error(call)
    assert error.code() == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- WatchRuns


async def test_watch_runs_sees_the_events_of_matching_runs_only(podium: Connect) -> None:
    """Filters: definition name, labels (contains all), run state after the event.
    Each matching run's events arrive once each, per run in sequence order."""
    server, stub = await podium()
    await chain(stub, "alpha", "echo", 2)
    await chain(stub, "beta", "echo", 2)
    by_definition = await watch_runs(server, stub, definition_name="alpha")
    by_label = await watch_runs(server, stub, labels={"team": "red"})
    by_state = await watch_runs(server, stub, states=[Run.STATE_SUCCEEDED])

    alpha = [(await start_run(stub, "alpha", labels={"team": "red"})).run.id for _ in range(2)]
    beta = [(await start_run(stub, "beta", labels={"team": "blue"})).run.id for _ in range(2)]
    other = (await start_run(stub, "beta", labels={"team": "red", "x": "y"})).run.id
    for run_id in [*alpha, *beta, other]:
        await wait_for_run(stub, run_id)
    logs = {run_id: await all_events(stub, run_id) for run_id in [*alpha, *beta, other]}

    async def until_terminal(call: Any, runs: set[str]) -> list[RunEvent]:
        left = set(runs)

        def done(event: RunEvent) -> bool:
            if event.type in TERMINAL_TYPES:
                left.discard(event.run_id)
            return not left

        events = await read_events(call, until=done)
        call.cancel()
        return events

    def per_run(events: list[RunEvent]) -> dict[str, list[RunEvent]]:
        out: dict[str, list[RunEvent]] = {}
        for event in events:
            out.setdefault(event.run_id, []).append(event)
        return out

    events = per_run(await until_terminal(by_definition, set(alpha)))
    assert set(events) == set(alpha)
    for run_id in alpha:
        assert events[run_id] == logs[run_id]

    events = per_run(await until_terminal(by_label, {*alpha, other}))
    assert set(events) == {*alpha, other}
    for run_id in events:
        assert events[run_id] == logs[run_id]

    events = per_run(await until_terminal(by_state, {*alpha, *beta, other}))
    assert set(events) == {*alpha, *beta, other}
    for run_id, run_events in events.items():
        expected = [e for e in logs[run_id] if e.run_state == Run.STATE_SUCCEEDED]
        assert run_events == expected
        assert event_type(run_events[-1]) == "run.completed"


async def test_watch_runs_from_a_start_time_replays_then_tails(podium: Connect) -> None:
    """start_time replays what was committed since, then live events, exactly once."""
    _, stub = await podium()
    await chain(stub, "gamma", "echo", 2)
    before = timestamp_pb2.Timestamp()
    before.GetCurrentTime()
    before.FromNanoseconds(before.ToNanoseconds() - 1_000_000_000)
    past = (await start_run(stub, "gamma")).run.id
    await wait_for_run(stub, past)

    call = stub.WatchRuns(pb.WatchRunsRequest(definition_name="gamma", start_time=before))
    replayed = await read_events(call, until=lambda e: e.type in TERMINAL_TYPES)
    assert replayed == await all_events(stub, past)
    live = (await start_run(stub, "gamma")).run.id
    tailed = await read_events(call, until=lambda e: e.type in TERMINAL_TYPES)
    call.cancel()
    assert tailed == await all_events(stub, live)


async def test_watch_runs_delivers_an_event_that_commits_late_exactly_once(
    podium: Connect, database_url: str
) -> None:
    """An event written at t but committed late (once the stream's tail reads start
    past t), after an event of another run written after t was delivered (so the
    stream's cursor moved past t), still arrives, by the re-scan of the window, and
    nothing is delivered twice."""
    server, stub = await podium()
    await chain(stub, "late", "echo", 1)
    call = await watch_runs(server, stub, definition_name="late")
    slow = (await start_run(stub, "late", start=False)).run.id
    first = await read_events(call, limit=1)
    conn = await asyncpg.connect(database_url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute(
            "SELECT podium_emit_event($1, 'step.progress', 's1', 1, 'pending', '{}')",
            uuid.UUID(slow),
        )
        fast = (await start_run(stub, "late", start=False)).run.id
        second = await read_events(call, limit=1)
        assert [(e.run_id, event_type(e)) for e in second] == [(fast, "run.created")]
        # Commit only once the stream's tail reads start past the event: a read that
        # began after the event was older than the tail window, and one read more.
        written = await conn.fetchval(
            "SELECT created_at FROM orchestration_events WHERE run_id = $1 AND sequence = 2",
            uuid.UUID(slow),
        )
        tail = timedelta(seconds=server.engine.watch.config.org_tail_window_seconds)

        async def past_the_tail() -> bool:
            return bool(await conn.fetchval("SELECT clock_timestamp() > $1", written + tail))

        await wait_until(past_the_tail, "the event to be older than the tail window")
        reads = server.engine.watch.org_reads
        await wait_until(
            lambda: server.engine.watch.org_reads >= reads + 2, "two more WatchRuns reads"
        )
        await transaction.commit()
    finally:
        await conn.close()
    late = await read_events(call, limit=1)
    assert [(e.run_id, e.sequence, event_type(e)) for e in late] == [(slow, 2, "step.progress")]
    assert late[0].time.ToNanoseconds() < second[0].time.ToNanoseconds()

    await stub.CancelRun(pb.CancelRunRequest(run_id=slow))
    rest = await read_events(
        call, until=lambda e: e.run_id == slow and event_type(e) == "run.cancelled"
    )
    call.cancel()
    delivered = first + second + late + rest
    keys = [(e.run_id, e.sequence) for e in delivered]
    assert len(keys) == len(set(keys)), keys
    assert [e for e in delivered if e.run_id == slow] == await all_events(stub, slow)


# --------------------------------------------------------------------------- errors


async def test_watch_errors(podium: Connect) -> None:
    """NOT_FOUND for an unknown run; INVALID_ARGUMENT (with the field) for a malformed
    id, a negative after_sequence, one past the log, an unknown state, a start time that
    is not a timestamp."""
    _, stub = await podium()
    await chain(stub, "errs", "echo", 1)
    run = (await start_run(stub, "errs", start=False)).run

    error = await rpc_error(stub.WatchRun(pb.WatchRunRequest(run_id=str(uuid.uuid4()))))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_details(error)[0].reason == "RUN_NOT_FOUND"

    error = await rpc_error(stub.WatchRun(pb.WatchRunRequest(run_id="not-a-uuid")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"run_id"}

    error = await rpc_error(stub.WatchRun(pb.WatchRunRequest(run_id=run.id, after_sequence=-1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"after_sequence"}

    error = await rpc_error(stub.WatchRun(pb.WatchRunRequest(run_id=run.id, after_sequence=99)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(error)[0].reason == "AFTER_SEQUENCE_AHEAD"

    error = await rpc_error(
        stub.WatchRuns(pb.WatchRunsRequest(states=[Run.STATE_RUNNING, cast(Any, 42)]))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"states[1]"}

    broken = pb.WatchRunsRequest()
    broken.start_time.nanos = -1
    error = await rpc_error(stub.WatchRuns(broken))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"start_time": "not a valid timestamp"}


async def test_watching_a_run_whose_events_were_pruned_ends_with_a_clear_error(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    """Retention deleted the log of an ended run: WatchRun says so instead of waiting."""
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        run = (await start_run(stub, inline=plan([{"id": "a", "agent": "echo"}]))).run
        run = await wait_for_run(stub, run.id)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "DELETE FROM orchestration_events WHERE run_id = $1", uuid.UUID(run.id)
            )
        finally:
            await conn.close()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.WatchRun(pb.WatchRunRequest(run_id=run.id), timeout=10):
                pass
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "retention" in (caught.value.details() or "")
