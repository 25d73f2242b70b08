"""``podium schedules ...`` and the Python client's schedule methods against a server."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from podium.client.client import PodiumClient
from podium.client.errors import ValidationError
from podium.client.examples.agents import ExampleAgents
from podium.client.sync_client import SyncPodiumClient
from podium.orchestration.v1 import run_pb2
from tests.integration.client_helpers import podium
from tests.integration.conftest import StartServer, static_agents


async def test_schedules_cli_create_get_list_pause_resume_delete(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address]
    async with PodiumClient(server.address) as client:
        await client.create_definition(
            {"name": "nightly", "steps": [{"id": "a", "agent": "echo", "input": {"n": 1}}]}
        )
    created = await podium(
        "schedules", "create", "nightly", "--cron", "0 3 * * *", "--time-zone",
        "America/New_York", "--overlap", "buffer_one", "--catch-up", "run_once",
        "--label", "team=ops", "--input", '{"full": true}', "-o", "json", *address,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    schedule = json.loads(created.stdout)
    assert schedule["cron"] == "0 3 * * *"
    assert schedule["time_zone"] == "America/New_York"
    assert schedule["overlap_policy"] == "OVERLAP_POLICY_BUFFER_ONE"
    assert schedule["catch_up_policy"] == "CATCH_UP_POLICY_RUN_ONCE"
    assert len(schedule["upcoming_fire_times"]) == 5
    schedule_id = schedule["id"]

    shown = await podium("schedules", "get", schedule_id, *address)
    assert shown.returncode == 0, shown.stderr
    assert "cron '0 3 * * *' America/New_York" in shown.stdout
    assert shown.stdout.count("fires at:") == 5

    listed = await podium("schedules", "list", *address)
    assert schedule_id in listed.stdout

    paused = await podium("schedules", "pause", schedule_id, *address)
    assert paused.returncode == 0 and "paused" in paused.stdout
    resumed = await podium("schedules", "resume", schedule_id, *address)
    assert resumed.returncode == 0 and "active" in resumed.stdout
    deleted = await podium("schedules", "delete", schedule_id, *address)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    missing = await podium("schedules", "get", schedule_id, *address)
    assert missing.returncode == 1
    assert "SCHEDULE_NOT_FOUND" in missing.stderr

    refused = await podium(
        "schedules", "create", "nightly", "--cron", "0 3 * *", "--time-zone", "Nowhere/Here",
        *address,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "schedule.cron" in refused.stderr and "schedule.time_zone" in refused.stderr


async def test_client_schedule_methods_and_delayed_start(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with PodiumClient(server.address) as client:
        await client.create_definition(
            {"name": "often", "steps": [{"id": "a", "agent": "echo", "input": {"n": 1}}]}
        )
        schedule = await client.create_schedule("often", interval_seconds=3600, jitter_seconds=60)
        fire = schedule.next_fire_time.ToDatetime(tzinfo=UTC)
        assert (
            timedelta(0)
            <= fire - schedule.create_time.ToDatetime(tzinfo=UTC) - timedelta(seconds=3600)
            < timedelta(seconds=61)
        )
        assert (await client.get_schedule(schedule.id)).id == schedule.id
        assert [s.id for s in (await client.list_schedules(definition="often")).items] == [
            schedule.id
        ]
        assert (await client.pause_schedule(schedule.id)).paused
        assert not (await client.resume_schedule(schedule.id)).paused
        await client.delete_schedule(schedule.id)
        with pytest.raises(ValueError):
            await client.create_schedule("often")
        with pytest.raises(ValidationError) as info:
            await client.create_schedule("often", interval_seconds=0.5)
        assert "schedule.interval_seconds" in {v.field for v in info.value.field_violations}

        run = await client.start_run("often", start_time=datetime.now(UTC) + timedelta(seconds=1))
        assert run.state == run_pb2.Run.STATE_CREATED
        done = await client.wait_run(run.id)
        assert done.state == run_pb2.Run.STATE_SUCCEEDED


async def test_sync_client_schedule_methods(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))

    def use() -> None:
        with SyncPodiumClient(server.address) as client:
            client.create_definition(
                {"name": "sync", "steps": [{"id": "a", "agent": "echo", "input": {"n": 1}}]}
            )
            schedule = client.create_schedule("sync", cron="*/5 * * * *")
            assert client.get_schedule(schedule.id).cron == "*/5 * * * *"
            assert client.pause_schedule(schedule.id).paused
            assert not client.resume_schedule(schedule.id).paused
            assert [s.id for s in client.list_schedules().items] == [schedule.id]
            client.delete_schedule(schedule.id)

    await asyncio.to_thread(use)


async def test_runs_start_at_delays_a_run(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address]
    async with PodiumClient(server.address) as client:
        await client.create_definition(
            {"name": "later", "steps": [{"id": "a", "agent": "echo", "input": {"n": 1}}]}
        )
        before = datetime.now(UTC)
        later = await podium(
            "runs", "start", "later", "--start-at", "+1h", "-o", "json", *address
        )  # fmt: skip
        assert later.returncode == 0, later.stderr
        run_id = json.loads(later.stdout)["id"]
        run = await client.get_run(run_id)
        assert run.state == run_pb2.Run.STATE_CREATED  # waits for its start time
        # An explicit time with a zone is accepted too.
        at = (before + timedelta(days=2)).replace(microsecond=0)
        explicit = await podium(
            "runs", "start", "later", "--start-at", at.isoformat(), "-o", "json", *address
        )  # fmt: skip
        assert explicit.returncode == 0, explicit.stderr
        # A time in the past starts at once.
        now = await podium(
            "runs", "start", "later", "--start-at", "2020-01-01T00:00:00", "--wait", *address
        )  # fmt: skip
        assert now.returncode == 0, now.stderr
        assert (await client.get_run(run_id)).state == run_pb2.Run.STATE_CREATED
    bad = await podium("runs", "start", "later", "--start-at", "tomorrow", *address)
    assert bad.returncode == 2 and "--start-at" in bad.stderr
