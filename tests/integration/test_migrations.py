"""Migrations: applied once, in order, safely under concurrency; schema.sql matches."""

from __future__ import annotations

import asyncio
import difflib
import importlib.resources
import json
import sys
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from podium.server.storage.errors import MigrationError
from podium.server.storage.migrations import load_migrations, migrate, pending_migrations

CreateDatabase = Callable[..., Awaitable[str]]  # the create_database fixture

ALL_NAMES = [m.name for m in load_migrations()]


async def _applied_rows(dsn: str) -> list[tuple[int, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    finally:
        await conn.close()
    return sorted((row["version"], row["name"], row["checksum"]) for row in rows)


def _expected_rows() -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in load_migrations()]


def test_load_migrations() -> None:
    migrations = load_migrations()
    assert migrations[0].name == "0001_initial"
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    for migration in migrations:
        assert migration.name.startswith(f"{migration.version:04d}_")
        assert len(migration.checksum) == 64
        assert migration.sql.strip()


async def test_migrate_fresh_database_applies_all_once(empty_database_url: str) -> None:
    assert await pending_migrations(empty_database_url) == ALL_NAMES

    assert await migrate(empty_database_url) == ALL_NAMES
    assert await _applied_rows(empty_database_url) == _expected_rows()

    assert await migrate(empty_database_url) == []
    assert await pending_migrations(empty_database_url) == []
    assert await _applied_rows(empty_database_url) == _expected_rows()


async def test_concurrent_migrate_in_one_process(empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(3)))
    assert sorted(name for result in results for name in result) == ALL_NAMES
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
    assert sorted(applied) == ALL_NAMES
    assert await _applied_rows(empty_database_url) == _expected_rows()


async def test_changed_checksum_is_refused(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = $1 WHERE version = 1", "0" * 64)
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="0001_initial changed after it was applied"):
        await migrate(empty_database_url)
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await pending_migrations(empty_database_url)


async def test_database_newer_than_code_is_refused(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            9999,
            "9999_from_the_future",
            "f" * 64,
        )
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="newer than this Podium version"):
        await migrate(empty_database_url)


# -- schema.sql == migrations ------------------------------------------------------

_SNAPSHOT_QUERIES: dict[str, str] = {
    "relation": """
        SELECT c.relname || ' kind=' || c.relkind::text || ' persistence=' || c.relpersistence::text
               || coalesce(' comment=' || obj_description(c.oid, 'pg_class'), '')
        FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind <> 'i'
    """,
    "column": """
        SELECT c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
               || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
               || CASE WHEN a.attidentity <> '' THEN ' IDENTITY ' || a.attidentity::text ELSE '' END
               || CASE WHEN a.attgenerated <> '' THEN ' GENERATED' ELSE '' END
               || CASE WHEN a.attcollation <> t.typcollation
                       THEN ' COLLATE ' || a.attcollation::regcollation::text ELSE '' END
               || coalesce(' comment=' || col_description(c.oid, a.attnum), '')
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "index": """
        SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
    """,
    "constraint": """
        SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
    """,
    "trigger": """
        SELECT pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
    """,
    "function": """
        SELECT pg_get_functiondef(p.oid)
        FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.prokind IN ('f', 'p')
    """,
    "type": """
        SELECT t.typname || ' ' || t.typtype::text || coalesce(' ' || (
                   SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                   FROM pg_enum e WHERE e.enumtypid = t.oid), '')
        FROM pg_type t
        WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'c')
          AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)
    """,
    "extension": "SELECT extname FROM pg_extension",
    "seed": "SELECT 'organizations ' || id || ' ' || name FROM organizations",
}


async def _schema_snapshot(dsn: str) -> list[str]:
    """One sorted line per schema object, comparable between two databases."""
    conn = await asyncpg.connect(dsn)
    try:
        lines: list[str] = []
        for kind, query in _SNAPSHOT_QUERIES.items():
            lines.extend(f"{kind} {value}" for (value,) in await conn.fetch(query))
    finally:
        await conn.close()
    return sorted(lines)


async def test_schema_sql_matches_migrations(create_database: CreateDatabase) -> None:
    migrated = await create_database()
    await migrate(migrated)

    from_schema_sql = await create_database()
    schema_sql = (
        importlib.resources.files("podium.server.storage")
        .joinpath("schema.sql")
        .read_text(encoding="utf-8")
    )
    conn = await asyncpg.connect(from_schema_sql)
    try:
        await conn.execute(schema_sql)
    finally:
        await conn.close()

    expected = await _schema_snapshot(migrated)
    actual = await _schema_snapshot(from_schema_sql)
    assert any(line.startswith("column orchestration_steps.") for line in expected)
    if expected != actual:
        diff = "\n".join(
            difflib.unified_diff(
                expected, actual, "from migrations", "from schema.sql", lineterm="", n=0
            )
        )
        pytest.fail(
            "server/storage/schema.sql differs from the result of migrations/*.sql:\n" + diff
        )
