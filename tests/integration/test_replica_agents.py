"""Static agents belong to the replicas that declare them: two real ``podium serve``
processes on one database, restarted with other ``PODIUM_AGENTS``, killed, stopped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from tests.integration.processes import PROCESS_DEADLINE, PodiumProcess, start_podium


async def static_agents(database_url: str) -> dict[str, str]:
    """Stored static agents by name -> endpoint."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT name, endpoint FROM agents WHERE source = 'static' ORDER BY name"
        )
    finally:
        await conn.close()
    return {row["name"]: row["endpoint"] for row in rows}


async def wait_for_agents(database_url: str, expected: dict[str, str]) -> None:
    deadline = time.monotonic() + PROCESS_DEADLINE
    while (found := await static_agents(database_url)) != expected:
        assert time.monotonic() < deadline, f"static agents {found}, expected {expected}"
        await asyncio.sleep(0.1)


async def replica(
    database_url: str, tmp_path: Path, name: str, agents: str, **env: str
) -> PodiumProcess:
    return await start_podium(
        {
            "PODIUM_DATABASE_URL": database_url,
            "PODIUM_AGENTS": agents,
            "PODIUM_LEASE_SECONDS": "1",
            "PODIUM_SHUTDOWN_GRACE_SECONDS": "0",
            **env,
        },
        tmp_path / f"{name}.log",
    )


async def stop(serve: PodiumProcess) -> None:
    serve.process.terminate()
    assert await asyncio.to_thread(serve.process.wait, PROCESS_DEADLINE) == 0, serve.logs()


@pytest.mark.slow
async def test_static_agents_go_only_when_no_live_replica_declares_them(
    database_url: str, tmp_path: Path
) -> None:
    first = await replica(
        database_url, tmp_path, "first", "echo=127.0.0.1:50901,alpha=127.0.0.1:50902"
    )
    second = third = None
    try:
        second = await replica(database_url, tmp_path, "second", "echo=127.0.0.1:50903")
        # The newest declaration of a name is stored.
        assert await static_agents(database_url) == {
            "alpha": "127.0.0.1:50902",
            "echo": "127.0.0.1:50903",
        }
        # The second crashes: once its row expires, echo is the first's again (nothing
        # the crashed replica declared outlives it).
        second.kill()
        await wait_for_agents(database_url, {"alpha": "127.0.0.1:50902", "echo": "127.0.0.1:50901"})
        # It comes back with another configuration: beta comes, echo stays.
        second = await replica(database_url, tmp_path, "second-again", "beta=127.0.0.1:50904")
        assert set(await static_agents(database_url)) == {"alpha", "beta", "echo"}

        # The first dies: once its row expires, the live replica removes what only it
        # declared.
        first.kill()
        await wait_for_agents(database_url, {"beta": "127.0.0.1:50904"})
        assert any(
            entry.get("message") == "static agents no running replica declares were deleted"
            for entry in second.logs()
        )

        # A replica without PODIUM_AGENTS removes nothing; the last declarer's stop does.
        third = await replica(database_url, tmp_path, "third", "")
        assert await static_agents(database_url) == {"beta": "127.0.0.1:50904"}
        await stop(second)
        second = None
        assert await static_agents(database_url) == {}
    finally:
        for serve in (first, second, third):
            if serve is not None:
                await asyncio.to_thread(serve.cleanup)


@pytest.mark.slow
async def test_a_groups_agents_outlive_a_restart_of_one_of_its_replicas(
    database_url: str, tmp_path: Path
) -> None:
    group = {"PODIUM_AGENT_GROUP": "blue"}
    first = await replica(database_url, tmp_path, "first", "echo=127.0.0.1:50901", **group)
    second = None
    try:
        second = await replica(database_url, tmp_path, "second", "echo=127.0.0.1:50901", **group)
        await stop(first)
        assert await static_agents(database_url) == {"echo": "127.0.0.1:50901"}
        # The group's last started replica decides its set.
        first = await replica(
            database_url, tmp_path, "first-again", "gamma=127.0.0.1:50905", **group
        )
        assert await static_agents(database_url) == {"gamma": "127.0.0.1:50905"}
        await stop(second)
        second = None
        assert await static_agents(database_url) == {"gamma": "127.0.0.1:50905"}
        await stop(first)
        assert await static_agents(database_url) == {}
    finally:
        for serve in (first, second):
            if serve is not None:
                await asyncio.to_thread(serve.cleanup)
