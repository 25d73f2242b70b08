"""Migrations and function files: applied once, in order, safely under concurrency; a
function file is applied again when it changes; the catalog holds exactly the
functions of the files."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from podium.server.storage import migrations as migrations_module
from podium.server.storage.errors import MigrationError
from podium.server.storage.migrations import (
    FunctionFile,
    Migration,
    load_function_files,
    load_migrations,
    migrate,
    pending_migrations,
)

CreateDatabase = Callable[..., Awaitable[str]]  # the create_database fixture

MIGRATION_NAMES = [m.name for m in load_migrations()]
FUNCTION_UNITS = [f.unit for f in load_function_files()]
ALL_NAMES = MIGRATION_NAMES + FUNCTION_UNITS


async def _fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _execute(dsn: str, query: str, *args: object) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


async def _applied_rows(dsn: str) -> list[tuple[int, str, str]]:
    rows = await _fetch(dsn, "SELECT version, name, checksum FROM schema_migrations")
    return sorted((row["version"], row["name"], row["checksum"]) for row in rows)


def _expected_rows() -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in load_migrations()]


async def _function_rows(dsn: str) -> dict[str, tuple[str, object]]:
    rows = await _fetch(dsn, "SELECT name, checksum, applied_at FROM schema_functions")
    return {row["name"]: (row["checksum"], row["applied_at"]) for row in rows}


def _expected_function_checksums() -> dict[str, str]:
    return {f.name: f.checksum for f in load_function_files()}


def test_load_migrations_and_function_files() -> None:
    migrations = load_migrations()
    assert migrations[0].name == "0001_baseline"
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    for migration in migrations:
        assert migration.name.startswith(f"{migration.version:04d}_")
        assert len(migration.checksum) == 64
        assert migration.sql.strip()
    files = load_function_files()
    assert [f.name for f in files] == sorted(f.name for f in files)
    assert all(len(f.checksum) == 64 and f.sql.strip() for f in files)


async def test_migrate_fresh_database_applies_all_once(empty_database_url: str) -> None:
    assert await pending_migrations(empty_database_url) == ALL_NAMES

    assert await migrate(empty_database_url) == ALL_NAMES
    assert await _applied_rows(empty_database_url) == _expected_rows()
    applied = await _function_rows(empty_database_url)
    assert {name: checksum for name, (checksum, _) in applied.items()} == (
        _expected_function_checksums()
    )

    assert await migrate(empty_database_url) == []
    assert await pending_migrations(empty_database_url) == []
    assert await _applied_rows(empty_database_url) == _expected_rows()
    assert await _function_rows(empty_database_url) == applied  # nothing re-applied


async def test_concurrent_migrate_in_one_process(empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(3)))
    assert sorted(name for result in results for name in result) == sorted(ALL_NAMES)
    assert await _applied_rows(empty_database_url) == _expected_rows()


_MIGRATE_SCRIPT = """
import asyncio, json, sys, time
from podium.server.storage.migrations import migrate
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
print(json.dumps(asyncio.run(migrate(sys.argv[1]))))
"""


async def test_concurrent_migrate_in_two_processes(empty_database_url: str) -> None:
    start_at = time.time() + 2.0  # both interpreters are up and importing by then
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _MIGRATE_SCRIPT,
            empty_database_url,
            str(start_at),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in processes))
    applied: list[str] = []
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()
        applied.extend(json.loads(stdout))
    assert sorted(applied) == sorted(ALL_NAMES)
    assert await _applied_rows(empty_database_url) == _expected_rows()


async def test_changed_checksum_is_refused(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    await _execute(
        empty_database_url, "UPDATE schema_migrations SET checksum = $1 WHERE version = 1", "0" * 64
    )
    with pytest.raises(MigrationError, match="0001_baseline changed after it was applied"):
        await migrate(empty_database_url)
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await pending_migrations(empty_database_url)


async def test_database_newer_than_code_is_refused(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    await _execute(
        empty_database_url,
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        9999,
        "9999_from_the_future",
        "f" * 64,
    )
    with pytest.raises(MigrationError, match="newer than this Podium version"):
        await migrate(empty_database_url)


async def test_database_from_before_the_baseline_must_be_recreated(
    empty_database_url: str,
) -> None:
    # What a developer's embedded database holds after the migrations that
    # 0001_baseline replaced (only their records matter).
    await _execute(
        empty_database_url,
        """
        CREATE TABLE schema_migrations (
            version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO schema_migrations (version, name, checksum)
        SELECT v, n, repeat('a', 64)
        FROM unnest(ARRAY['0001_initial', '0002_engine', '0003_webhooks',
                          '0004_failure_handling', '0005_cache', '0006_start_run'])
             WITH ORDINALITY AS t(n, v);
        """,
    )
    for call in (migrate, pending_migrations):
        with pytest.raises(MigrationError) as raised:
            await call(empty_database_url)
        message = str(raised.value)
        assert "0001_initial" in message and "recreate the database" in message
        assert "PODIUM_DATA_DIR/pgdata" in message and "drop that database" in message
    assert await _applied_rows(empty_database_url) == [
        (v, n, "a" * 64)
        for v, n in enumerate(
            [
                "0001_initial",
                "0002_engine",
                "0003_webhooks",
                "0004_failure_handling",
                "0005_cache",
                "0006_start_run",
            ],
            start=1,
        )
    ]  # nothing was touched


async def test_changed_function_file_is_applied_again_alone(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_database_url)
    before = await _function_rows(empty_database_url)
    files = load_function_files()
    target = next(f for f in files if f.name.endswith("_runs"))
    sql = target.sql.replace(
        "-- Move a created run to running", "-- Changed: move a created run to running", 1
    )
    assert sql != target.sql
    changed = dataclasses.replace(target, sql=sql, checksum="c" * 64)
    monkeypatch.setattr(
        migrations_module,
        "load_function_files",
        lambda: [changed if f is target else f for f in files],
    )
    # Something that only applying the file again repairs.
    await _execute(empty_database_url, "DROP FUNCTION podium_start_run(uuid)")

    assert await pending_migrations(empty_database_url) == [target.unit]
    assert await migrate(empty_database_url) == [target.unit]
    after = await _function_rows(empty_database_url)
    assert after[target.name][0] == "c" * 64
    assert after[target.name][1] != before[target.name][1]
    assert {k: v for k, v in after.items() if k != target.name} == {
        k: v for k, v in before.items() if k != target.name
    }
    rows = await _fetch(
        empty_database_url, "SELECT 1 FROM pg_proc WHERE proname = 'podium_start_run'"
    )
    assert len(rows) == 1
    assert await migrate(empty_database_url) == []


async def test_removed_function_file_is_forgotten(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    await _execute(
        empty_database_url,
        "INSERT INTO schema_functions (name, checksum) VALUES ('99_gone', $1)",
        "0" * 64,
    )
    assert await migrate(empty_database_url) == []
    assert "99_gone" not in await _function_rows(empty_database_url)


async def test_new_migration_applies_every_function_file_again(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_database_url)
    # A migration that drops what a function file defines (here: a trigger, as
    # dropping its table would): the unchanged file must be applied again.
    sql = "DROP TRIGGER orchestration_events_webhooks ON orchestration_events;\n"
    extra = Migration(version=9000, name="9000_test_drop_trigger", sql=sql, checksum="d" * 64)
    known = load_migrations()
    monkeypatch.setattr(migrations_module, "load_migrations", lambda: [*known, extra])

    assert await migrate(empty_database_url) == [extra.name, *FUNCTION_UNITS]
    rows = await _fetch(
        empty_database_url,
        "SELECT 1 FROM pg_trigger WHERE tgname = 'orchestration_events_webhooks'",
    )
    assert len(rows) == 1
    assert await migrate(empty_database_url) == []


# -- the catalog holds exactly the functions and triggers of the function files -----

_FUNCTION = re.compile(
    r"^CREATE OR REPLACE FUNCTION ([a-z0-9_]+)\(.*?\bAS \$(\w*)\$(.*?)\$\2\$;",
    re.MULTILINE | re.DOTALL,
)
_TRIGGER = re.compile(r"^CREATE OR REPLACE TRIGGER ([a-z0-9_]+)", re.MULTILINE)


def _file_definitions(files: list[FunctionFile]) -> tuple[dict[str, str], set[str]]:
    bodies: dict[str, str] = {}
    triggers: set[str] = set()
    for function_file in files:
        for match in _FUNCTION.finditer(function_file.sql):
            bodies[match.group(1)] = match.group(3)
        triggers.update(_TRIGGER.findall(function_file.sql))
    return bodies, triggers


async def test_catalog_matches_function_files(database_url: str) -> None:
    files = load_function_files()
    bodies, triggers = _file_definitions(files)
    declared = sum(
        len(re.findall(r"^CREATE OR REPLACE FUNCTION ", f.sql, re.MULTILINE)) for f in files
    )
    assert len(bodies) == declared, "a function of server/storage/functions was not parsed"

    rows = await _fetch(
        database_url,
        """
        SELECT p.proname, p.prosrc
        FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.prokind IN ('f', 'p')
        """,
    )
    names = [row["proname"] for row in rows]
    overloads = sorted({name for name in names if names.count(name) > 1})
    assert not overloads, (
        f"several signatures of {overloads}: a migration must drop a function's old "
        "signature when its arguments change"
    )
    catalog = {row["proname"]: row["prosrc"] for row in rows}
    assert sorted(set(catalog) - set(bodies)) == [], (
        "functions in the database that no function file defines: drop them in a migration"
    )
    assert sorted(set(bodies) - set(catalog)) == []
    different = sorted(name for name in bodies if catalog[name] != bodies[name])
    assert different == [], f"function bodies differ from server/storage/functions: {different}"

    trigger_rows = await _fetch(
        database_url,
        """
        SELECT t.tgname
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
        """,
    )
    assert sorted(row["tgname"] for row in trigger_rows) == sorted(triggers)
