"""Rolling upgrades: a replica of version N keeps running against a database that
version N+1 migrated, as long as N+1's migrations are expand steps (``-- podium:
expand``), and it never replaces N+1's function files with its own older ones. A
migration that is not an expand step still stops an older replica, as before."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1 import run_pb2
from podium.server.storage.errors import MigrationError
from podium.server.storage.migrations import code_version, is_expand, migrate, pending_migrations
from tests.integration.conftest import StartServer, static_agents
from tests.integration.runs_helpers import plan, start_run, wait_for_run


async def _execute(dsn: str, query: str, *args: object) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


async def _functions(dsn: str) -> dict[str, tuple[str, str | None]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT name, checksum, podium_version FROM schema_functions")
    finally:
        await conn.close()
    return {r["name"]: (r["checksum"], r["podium_version"]) for r in rows}


async def _newer_release_migrated(dsn: str, *, expand: bool) -> None:
    """What version N+1 leaves behind: a migration this code does not know (an added
    column, the typical expand step) and its own function files."""
    await _execute(dsn, "ALTER TABLE orchestration_runs ADD COLUMN future_note text")
    await _execute(
        dsn,
        "INSERT INTO schema_migrations (version, name, checksum, expand) VALUES ($1, $2, $3, $4)",
        9999,
        "9999_future_note",
        "f" * 64,
        expand,
    )
    await _execute(
        dsn, "UPDATE schema_functions SET checksum = 'n' || name, podium_version = '99.0.0'"
    )


def test_the_expand_marker_is_read_from_the_leading_comments() -> None:
    assert is_expand("-- 0042_add: a column\n-- podium: expand\nALTER TABLE t ADD c int;\n")
    assert not is_expand("-- 0042_drop\nALTER TABLE t DROP c;\n-- podium: expand\n")
    assert not is_expand("ALTER TABLE t ADD c int;\n")


async def test_an_older_replica_runs_on_an_expanded_schema_and_keeps_its_functions(
    database_url: str, start_server: StartServer, example_agents: ExampleAgents
) -> None:
    await _newer_release_migrated(database_url, expand=True)
    newer = await _functions(database_url)
    assert await pending_migrations(database_url) == []
    assert await migrate(database_url) == []  # nothing applied, nothing refused
    assert await _functions(database_url) == newer  # N+1's function files stay
    # The older replica serves runs on that schema.
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        echo = plan([{"id": "e", "agent": "echo", "input": {"q": "${run.input.q}"}}])
        started = await start_run(stub, inline=echo, input={"q": "rolling"})
        run = await wait_for_run(stub, started.run.id)
    assert run.state == run_pb2.Run.STATE_SUCCEEDED
    assert await _functions(database_url) == newer


async def test_a_migration_that_is_not_an_expand_step_still_stops_an_older_replica(
    database_url: str,
) -> None:
    await _newer_release_migrated(database_url, expand=False)
    with pytest.raises(MigrationError, match="9999_future_note.*not an expand step"):
        await migrate(database_url)


async def test_function_files_of_an_older_version_are_replaced(database_url: str) -> None:
    await _execute(database_url, "UPDATE schema_functions SET podium_version = '0.0.1'")
    await _execute(database_url, "UPDATE schema_functions SET checksum = 'old'")
    applied = await migrate(database_url)
    assert applied and all(unit.startswith("functions/") for unit in applied)
    mine = ".".join(str(part) for part in code_version())
    assert {version for _, version in (await _functions(database_url)).values()} == {mine}
