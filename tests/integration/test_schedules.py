"""Schedules and delayed starts against real servers and a real PostgreSQL: ticks fire
exactly once (one replica, two replicas, a replica dying mid-claim), the overlap and
catch-up policies, pause / resume / delete, StartRun.start_time across a restart, and
the refusals.

Exactly-once is proven by counting the runs of each tick (their request_id names the
tick), not by timing. Downtimes are made by stopping the server and moving the
schedule's next tick into the past, as the clock would have while nothing ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1 import run_pb2, schedule_pb2
from podium.server.app import PodiumServer
from tests.integration.conftest import StartServer, static_agents
from tests.integration.processes import start_podium
from tests.integration.rpc import violations
from tests.integration.runs_helpers import (
    create_definition,
    get_run,
    start_run,
    struct,
    wait_for_run,
    wait_until,
)

Schedule = schedule_pb2.Schedule
if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub as Stub,
    )


@contextlib.asynccontextmanager
async def stub_for(server: PodiumServer) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.OrchestrationServiceStub(channel)


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def echo_definition(stub: Stub, name: str = "tick") -> None:
    await create_definition(stub, name, [{"id": "a", "agent": "echo", "input": {"n": 1}}])


async def sleeper_definition(stub: Stub, seconds: float, name: str = "slow") -> None:
    await create_definition(
        stub, name, [{"id": "s", "agent": "sleeper", "input": {"seconds": seconds}}]
    )


async def create(stub: Stub, **fields: Any) -> Schedule:
    response = await stub.CreateSchedule(pb.CreateScheduleRequest(schedule=Schedule(**fields)))
    return response.schedule


async def get(stub: Stub, schedule_id: str) -> Schedule:
    return (await stub.GetSchedule(pb.GetScheduleRequest(schedule_id=schedule_id))).schedule


async def schedule_runs(url: str, schedule_id: str) -> list[asyncpg.Record]:
    """Every run of a schedule (by its label), oldest first."""
    async with connect(url) as conn:
        return await conn.fetch(
            "SELECT id, request_id, state, created_at, started_at, ended_at"
            " FROM orchestration_runs WHERE labels ->> 'podium.schedule_id' = $1"
            " ORDER BY created_at, request_id",
            schedule_id,
        )


def tick_of(request_id: str) -> datetime:
    """The tick in a scheduled run's request_id ``schedule:<id>:<tick>``."""
    prefix = "schedule:"
    assert request_id.startswith(prefix)
    return datetime.fromisoformat(request_id[len(prefix) + 36 + 1 :])


async def servers_with_agents(
    start_server: StartServer, examples: ExampleAgents, count: int = 1, **settings: Any
) -> list[PodiumServer]:
    agents = static_agents(examples, "echo", "sleeper")
    return [await start_server(agents=agents, **settings) for _ in range(count)]


# -- firing ------------------------------------------------------------------------------


async def test_an_interval_schedule_fires_once_per_tick(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    (server,) = await servers_with_agents(start_server, example_agents)
    async with stub_for(server) as stub:
        await echo_definition(stub)
        created = await create(
            stub,
            definition_name="tick",
            interval_seconds=1,
            input=struct({"from": "schedule"}),
            labels={"team": "ops"},
        )
        assert created.id and not created.paused
        assert created.overlap_policy == Schedule.OVERLAP_POLICY_SKIP
        assert created.catch_up_policy == Schedule.CATCH_UP_POLICY_SKIP
        assert len(created.upcoming_fire_times) == 5
        gaps = [b.ToDatetime() - a.ToDatetime() for a, b in pairwise(created.upcoming_fire_times)]
        assert set(gaps) == {timedelta(seconds=1)}

        await wait_until(
            lambda: _runs_started(stub, created.id, 3), "three ticks of the schedule", within=60
        )
        await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id=created.id))
        runs = await schedule_runs(database_url, created.id)
        schedule = await get(stub, created.id)
        assert len(runs) == schedule.runs_started
        ticks = [tick_of(r["request_id"]) for r in runs]
        assert len(set(ticks)) == len(ticks)
        assert all(b - a == timedelta(seconds=1) for a, b in pairwise(ticks))
        assert schedule.last_run_id == str(runs[-1]["id"])
        started = server.metrics.registry.get_sample_value(
            "orchestration_scheduled_runs_total", {"kind": "tick"}
        )
        assert started == len(runs)
        run = await wait_for_run(stub, schedule.last_run_id)
        assert run.state == run_pb2.Run.STATE_SUCCEEDED
        assert dict(run.labels) == {"team": "ops", "podium.schedule_id": created.id}
        assert run.input["from"] == "schedule"


async def _runs_started(stub: Stub, schedule_id: str, count: int) -> bool:
    return (await get(stub, schedule_id)).runs_started >= count


async def test_two_replicas_fire_each_tick_exactly_once(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    first, second = await servers_with_agents(start_server, example_agents, count=2)
    async with stub_for(first) as stub:
        await echo_definition(stub)
        created = await create(
            stub,
            definition_name="tick",
            interval_seconds=1,
            overlap_policy=Schedule.OVERLAP_POLICY_ALLOW,
        )
        await wait_until(lambda: _runs_started(stub, created.id, 5), "five ticks", within=60)
        await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id=created.id))
    runs = await schedule_runs(database_url, created.id)
    ticks = Counter(tick_of(r["request_id"]) for r in runs)
    assert ticks and set(ticks.values()) == {1}
    ordered = sorted(ticks)
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(ordered))
    # Both replicas' loops ran rounds; each tick was claimed by one of them.
    assert first.engine.schedule_loop.rounds > 0 and second.engine.schedule_loop.rounds > 0
    # A fire committed just before the pause counts itself once its commit returned.
    await wait_until(
        lambda: (
            first.engine.schedules.fired_total + second.engine.schedules.fired_total == len(runs)
        ),
        "each fired run counted by the replica that fired it",
    )


async def test_a_replica_dying_mid_claim_leaves_the_tick_to_another_one(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    (server,) = await servers_with_agents(start_server, example_agents)
    async with stub_for(server) as stub, connect(database_url) as dying:
        await echo_definition(stub)
        created = await create(stub, definition_name="tick", interval_seconds=3600)
        schedule_id = uuid.UUID(created.id)
        # A replica claims the tick: it locks the row (due now) ... and dies before commit.
        await dying.execute("BEGIN")
        await dying.execute(
            "UPDATE orchestration_schedules SET next_tick_at = now() - interval '1 second',"
            " next_fire_at = now() - interval '1 second' WHERE id = $1",
            schedule_id,
        )
        await dying.execute("COMMIT")
        await dying.execute("BEGIN")
        await dying.fetchrow(
            "SELECT id FROM orchestration_schedules WHERE id = $1 FOR UPDATE", schedule_id
        )
        loop = server.engine.schedule_loop
        loop.wake()
        rounds = loop.rounds
        await wait_until(lambda: loop.rounds >= rounds + 3, "the live replica's rounds")
        assert (await get(stub, created.id)).runs_started == 0  # skipped: the row is held
        async with connect(database_url) as admin:
            pid = dying.get_server_pid()
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await wait_until(lambda: _runs_started(stub, created.id, 1), "the tick to fire")
        # Claimed once: claiming again finds nothing due.
        assert await server.engine.schedules.fire_due() == []
    runs = await schedule_runs(database_url, created.id)
    assert len(runs) == 1


async def test_the_schedule_loop_stops_when_woken_as_it_is_stopped(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """A wake-up (a schedule created or resumed: NOTIFY podium_schedules) that arrives as
    the replica stops: the loop stops, instead of taking the cancellation for the wake-up
    and sleeping through another round (up to 30 s, and the replica's stop with it)."""
    (server,) = await servers_with_agents(start_server, example_agents)
    loop = server.engine.schedule_loop
    await wait_until(lambda: loop.rounds >= 1, "the schedule loop's first round")
    await asyncio.sleep(0.1)  # asleep until its next round: nothing is due
    rounds = loop.rounds
    loop.wake()
    async with asyncio.timeout(5):
        await loop.stop()
    assert loop.rounds == rounds


async def test_a_replayed_tick_finds_its_run(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    (server,) = await servers_with_agents(start_server, example_agents)
    async with stub_for(server) as stub:
        await echo_definition(stub)
        created = await create(stub, definition_name="tick", interval_seconds=3600)
        await _make_due(database_url, created.id, seconds_ago=1)
        server.engine.schedule_loop.wake()
        await wait_until(lambda: _runs_started(stub, created.id, 1), "the tick to fire")
        # Put the schedule back on the same tick: the replay finds the run by request_id.
        async with connect(database_url) as conn:
            (run,) = await schedule_runs(database_url, created.id)
            tick = tick_of(run["request_id"])
            await conn.execute(
                "UPDATE orchestration_schedules SET next_tick_at = $2, next_fire_at = $2"
                " WHERE id = $1",
                uuid.UUID(created.id),
                tick,
            )
        started = await server.engine.schedules.fire_due()
        assert started == []
        assert len(await schedule_runs(database_url, created.id)) == 1
        assert (await get(stub, created.id)).next_fire_time.ToDatetime(tzinfo=UTC) > tick


async def _make_due(url: str, schedule_id: str, *, seconds_ago: float) -> None:
    async with connect(url) as conn:
        await conn.execute(
            "UPDATE orchestration_schedules SET next_tick_at = now() - make_interval(secs => $2),"
            " next_fire_at = now() - make_interval(secs => $2) WHERE id = $1",
            uuid.UUID(schedule_id),
            seconds_ago,
        )
        await conn.execute("SELECT pg_notify('podium_schedules', '')")


# -- overlap -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        Schedule.OVERLAP_POLICY_SKIP,
        Schedule.OVERLAP_POLICY_BUFFER_ONE,
        Schedule.OVERLAP_POLICY_ALLOW,
    ],
)
async def test_overlap_policies(
    policy: Schedule.OverlapPolicy.ValueType,
    start_server: StartServer,
    example_agents: ExampleAgents,
    database_url: str,
) -> None:
    (server,) = await servers_with_agents(start_server, example_agents)
    async with stub_for(server) as stub:
        await sleeper_definition(stub, 2.5)
        created = await create(
            stub, definition_name="slow", interval_seconds=1, overlap_policy=policy
        )
        # Ticks every second, runs of 2.5 s: at least one tick meets a running run.
        await wait_until(lambda: _runs_started(stub, created.id, 2), "two runs", within=60)
        await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id=created.id))
        runs = await schedule_runs(database_url, created.id)
        for run in runs:
            await wait_for_run(stub, str(run["id"]))
    runs = await schedule_runs(database_url, created.id)
    spans = [(r["started_at"], r["ended_at"]) for r in runs]
    overlapping = any(b[0] < a[1] for a, b in pairwise(spans))
    ticks = [tick_of(r["request_id"]) for r in runs]
    if policy == Schedule.OVERLAP_POLICY_ALLOW:
        assert overlapping
        assert all(b - a == timedelta(seconds=1) for a, b in pairwise(ticks))
    else:
        assert not overlapping
    if policy == Schedule.OVERLAP_POLICY_SKIP:
        # Ticks that met a running run started nothing.
        assert any(b - a > timedelta(seconds=1) for a, b in pairwise(ticks))
    if policy == Schedule.OVERLAP_POLICY_BUFFER_ONE:
        # The second run is a tick buffered while the first ran: it started after the
        # first ended, later than its tick.
        assert ticks[1] < runs[0]["ended_at"] <= runs[1]["started_at"]


# -- catch-up ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Schedule.CATCH_UP_POLICY_SKIP, 0),
        (Schedule.CATCH_UP_POLICY_RUN_ONCE, 1),
        (Schedule.CATCH_UP_POLICY_RUN_ALL, 3),
    ],
)
async def test_catch_up_after_a_downtime(
    policy: Schedule.CatchUpPolicy.ValueType,
    expected: int,
    start_server: StartServer,
    example_agents: ExampleAgents,
    database_url: str,
) -> None:
    (server,) = await servers_with_agents(start_server, example_agents)
    async with stub_for(server) as stub:
        await echo_definition(stub)
        created = await create(
            stub,
            definition_name="tick",
            interval_seconds=60,
            catch_up_policy=policy,
            max_catch_up_runs=3,
            overlap_policy=Schedule.OVERLAP_POLICY_ALLOW,
        )
    await server.stop(0)
    # The server was down for ten minutes and a half: ticks at -10:30, -9:30 ... -0:30.
    await _make_due(database_url, created.id, seconds_ago=630)
    (restarted,) = await servers_with_agents(
        start_server, example_agents, schedule_misfire_grace_seconds=5.0
    )
    async with stub_for(restarted) as stub:

        async def moved_on() -> bool:
            schedule = await get(stub, created.id)
            return schedule.next_fire_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)

        await wait_until(moved_on, "the schedule to claim its missed ticks")
        schedule = await get(stub, created.id)
    runs = await schedule_runs(database_url, created.id)
    assert len(runs) == expected == schedule.runs_started
    ticks = [tick_of(r["request_id"]) for r in runs]
    assert ticks == sorted(ticks)
    if ticks:
        # The most recent missed ticks, one minute apart.
        assert all(b - a == timedelta(seconds=60) for a, b in pairwise(ticks))
        assert datetime.now(UTC) - ticks[-1] < timedelta(seconds=90)


# -- pause, resume, delete, list ---------------------------------------------------------


async def test_pause_resume_delete_and_list(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    (server,) = await servers_with_agents(start_server, example_agents)
    async with stub_for(server) as stub:
        await echo_definition(stub)
        await echo_definition(stub, "other")
        created = await create(stub, definition_name="tick", interval_seconds=1)
        cron = await create(
            stub, definition_name="other", cron="0 9 * * MON-FRI", time_zone="Europe/Paris"
        )
        assert cron.time_zone == "Europe/Paris"
        paris = ZoneInfo("Europe/Paris")
        local = [t.ToDatetime(tzinfo=UTC).astimezone(paris) for t in cron.upcoming_fire_times]
        assert all(t.weekday() < 5 and (t.hour, t.minute) == (9, 0) for t in local)
        await wait_until(lambda: _runs_started(stub, created.id, 1), "a first run")

        paused = (
            await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id=created.id))
        ).schedule
        assert paused.paused and not paused.HasField("next_fire_time")
        # Due, but paused: rounds pass and nothing fires.
        await _make_due(database_url, created.id, seconds_ago=5)
        loop = server.engine.schedule_loop
        for _ in range(2):
            rounds = loop.rounds
            loop.wake()
            await wait_until(lambda: loop.rounds > rounds, "a schedule round")  # noqa: B023
        count = paused.runs_started
        assert (await get(stub, created.id)).runs_started == count

        resumed = (
            await stub.ResumeSchedule(pb.ResumeScheduleRequest(schedule_id=created.id))
        ).schedule
        assert not resumed.paused
        # Ticks during the pause are not caught up: the next one is after the resume.
        assert resumed.next_fire_time.ToDatetime(tzinfo=UTC) > resumed.update_time.ToDatetime(
            tzinfo=UTC
        )
        await wait_until(lambda: _runs_started(stub, created.id, count + 1), "a run after resume")

        listed = await stub.ListSchedules(pb.ListSchedulesRequest(page_size=1))
        assert [s.id for s in listed.schedules] == [created.id] and listed.next_page_token
        rest = await stub.ListSchedules(
            pb.ListSchedulesRequest(page_size=1, page_token=listed.next_page_token)
        )
        assert [s.id for s in rest.schedules] == [cron.id] and not rest.next_page_token
        only = await stub.ListSchedules(pb.ListSchedulesRequest(definition_name="other"))
        assert [s.id for s in only.schedules] == [cron.id]

        await stub.DeleteSchedule(pb.DeleteScheduleRequest(schedule_id=created.id))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await get(stub, created.id)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.DeleteSchedule(pb.DeleteScheduleRequest(schedule_id=created.id))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # The runs it started are kept.
        assert len(await schedule_runs(database_url, created.id)) >= count + 1


# -- delayed start -----------------------------------------------------------------------


async def test_a_delayed_start_survives_a_restart(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    (server,) = await servers_with_agents(start_server, example_agents)
    start_at = datetime.now(UTC) + timedelta(seconds=3)
    async with stub_for(server) as stub:
        await echo_definition(stub)
        request = pb.StartRunRequest(start=True)
        request.definition.name = "tick"
        request.start_time.FromDatetime(start_at)
        run = (await stub.StartRun(request)).run
        assert run.state == run_pb2.Run.STATE_CREATED
    await server.stop(0)
    (restarted,) = await servers_with_agents(start_server, example_agents)
    async with stub_for(restarted) as stub:
        assert (await get_run(stub, run.id)).state == run_pb2.Run.STATE_CREATED
        done = await wait_for_run(stub, run.id)
    assert done.state == run_pb2.Run.STATE_SUCCEEDED
    assert done.start_time.ToDatetime(tzinfo=UTC) >= start_at - timedelta(milliseconds=1)
    delayed = restarted.metrics.registry.get_sample_value(
        "orchestration_scheduled_runs_total", {"kind": "delayed"}
    )
    assert delayed == 1


async def test_a_delayed_start_in_the_past_starts_at_once_and_cancel_wins(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    (server,) = await servers_with_agents(start_server, example_agents)
    async with stub_for(server) as stub:
        await echo_definition(stub)
        past = pb.StartRunRequest(start=True)
        past.definition.name = "tick"
        past.start_time.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
        assert (await stub.StartRun(past)).run.state == run_pb2.Run.STATE_RUNNING

        later = pb.StartRunRequest(start=True)
        later.definition.name = "tick"
        later.start_time.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
        run = (await stub.StartRun(later)).run
        await stub.CancelRun(pb.CancelRunRequest(run_id=run.id, reason="not needed"))
        async with connect(database_url) as conn:
            await conn.execute(
                "UPDATE orchestration_delayed_starts SET start_at = now() WHERE run_id = $1",
                uuid.UUID(run.id),
            )
        assert await server.engine.schedules.repository.start_delayed_runs(10) == []
        assert (await get_run(stub, run.id)).state == run_pb2.Run.STATE_CANCELLED


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"definition_name": "tick", "cron": "61 * * * *"}, "schedule.cron"),
        ({"definition_name": "tick", "cron": "* * *"}, "schedule.cron"),
        (
            {"definition_name": "tick", "cron": "0 9 * * *", "time_zone": "Mars/Olympus"},
            "schedule.time_zone",
        ),
        ({"definition_name": "tick", "interval_seconds": 0}, "schedule.interval_seconds"),
        ({"definition_name": "tick", "interval_seconds": -5}, "schedule.interval_seconds"),
        (
            {"definition_name": "tick", "interval_seconds": float("inf")},
            "schedule.interval_seconds",
        ),
        (
            {"definition_name": "tick", "interval_seconds": 5, "time_zone": "UTC"},
            "schedule.time_zone",
        ),
        ({"definition_name": "tick"}, "schedule.cron"),
        ({"interval_seconds": 5}, "schedule.definition_name"),
        ({"definition_name": "nope", "interval_seconds": 5}, "schedule.definition_name"),
        (
            {"definition_name": "tick", "interval_seconds": 5, "jitter_seconds": -1},
            "schedule.jitter_seconds",
        ),
        (
            {"definition_name": "tick", "interval_seconds": 5, "max_catch_up_runs": 101},
            "schedule.max_catch_up_runs",
        ),
    ],
)
async def test_invalid_schedules_are_refused_with_field_violations(
    fields: dict[str, Any], field: str, stub: Stub
) -> None:
    await echo_definition(stub)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await create(stub, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(info.value)


async def test_bad_ids_and_start_time_without_start_are_refused(stub: Stub) -> None:
    await echo_definition(stub)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(stub, "not-a-uuid")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id=str(uuid.uuid4())))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    request = pb.StartRunRequest(start=False)
    request.definition.name = "tick"
    request.start_time.FromDatetime(datetime.now(UTC) + timedelta(minutes=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.StartRun(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_time" in violations(info.value)
    # A start time before 1970 is not a delay (the check shared with GetUsage, WatchRuns).
    request = pb.StartRunRequest(start=True)
    request.definition.name = "tick"
    request.start_time.seconds = -1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.StartRun(request)
    assert violations(info.value) == {"start_time": "not a valid timestamp"}
    # A plain run still starts at once.
    assert (await start_run(stub, "tick")).run.state == run_pb2.Run.STATE_RUNNING


# -- a replica killed while ticks fire -------------------------------------------------


async def test_a_replica_killed_while_ticks_fire_leaves_no_duplicate_and_no_gap(
    database_url: str, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    env = {
        "PODIUM_DATABASE_URL": database_url,
        "PODIUM_AGENTS": static_agents(example_agents, "echo"),
        "PODIUM_POLL_INTERVAL_SECONDS": "0.2",
        "PODIUM_SHUTDOWN_GRACE_SECONDS": "0",
    }
    first = await start_podium(env, tmp_path / "first.log")
    second = None
    try:
        second = await start_podium(env, tmp_path / "second.log")
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub: Stub = pb_grpc.OrchestrationServiceStub(channel)
            await echo_definition(stub)
            created = await create(
                stub,
                definition_name="tick",
                interval_seconds=1,
                overlap_policy=Schedule.OVERLAP_POLICY_ALLOW,
                catch_up_policy=Schedule.CATCH_UP_POLICY_RUN_ALL,
            )
            await wait_until(lambda: _runs_started(stub, created.id, 3), "three ticks")
            assert first.kill() == -9
            count = (await get(stub, created.id)).runs_started
            await wait_until(lambda: _runs_started(stub, created.id, count + 3), "three more ticks")
            await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id=created.id))
    finally:
        first.cleanup()
        if second is not None:
            second.cleanup()
    runs = await schedule_runs(database_url, created.id)
    ticks = Counter(tick_of(r["request_id"]) for r in runs)
    assert set(ticks.values()) == {1}
    ordered = sorted(ticks)
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(ordered))
