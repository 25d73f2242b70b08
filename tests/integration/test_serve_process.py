"""``podium serve`` as an OS process: embedded Postgres, SIGTERM, concurrent starts, bad config."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import asyncpg
import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from podium.server.storage.migrations import load_migrations
from tests.integration.processes import PODIUM, start_serve


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and any(str(pgdata) in part for part in cmdline):
            found.append(proc)
    return found


async def check_health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        response = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        return int(response.status)


@pytest.mark.slow
async def test_embedded_postgres_serves_and_sigterm_leaves_no_orphan(
    embedded_data_dir: Path,
) -> None:
    env = {"PODIUM_DATA_DIR": str(embedded_data_dir / "data")}
    env.pop("PODIUM_DATABASE_URL", None)
    full = {k: v for k, v in os.environ.items() if k != "PODIUM_DATABASE_URL"}
    serve = await asyncio.to_thread(start_serve, {**full, **env})
    try:
        assert await check_health(serve.address) == health_pb2.HealthCheckResponse.SERVING
        assert postgres_processes(embedded_data_dir / "data"), "embedded postgres should be running"
    finally:
        code = await asyncio.to_thread(serve.terminate)
    assert code == 0, serve.logs
    assert postgres_processes(embedded_data_dir / "data") == []
    messages = [entry.get("message") for entry in serve.logs]
    assert "embedded PostgreSQL stopped" in messages

    # A second start reuses the data directory (already initialised and migrated).
    again = await asyncio.to_thread(start_serve, {**full, **env})
    try:
        assert await check_health(again.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert await asyncio.to_thread(again.terminate) == 0
    assert postgres_processes(embedded_data_dir / "data") == []


@pytest.mark.slow
async def test_two_servers_starting_together_apply_each_migration_once(
    empty_database_url: str,
) -> None:
    env = {"PODIUM_DATABASE_URL": empty_database_url}
    first, second = await asyncio.gather(
        asyncio.to_thread(start_serve, env), asyncio.to_thread(start_serve, env)
    )
    try:
        for serve in (first, second):
            assert await check_health(serve.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert await asyncio.to_thread(first.terminate) == 0
        assert await asyncio.to_thread(second.terminate) == 0
    conn = await asyncpg.connect(empty_database_url)
    try:
        rows = await conn.fetch(
            "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version"
        )
    finally:
        await conn.close()
    assert {r["version"]: r["n"] for r in rows} == {m.version: 1 for m in load_migrations()}
    applied_logs = [
        entry
        for serve in (first, second)
        for entry in serve.logs
        if entry.get("message") == "migrations applied"
    ]
    assert len(applied_logs) == 1, "exactly one of the two servers applies the migrations"


@pytest.mark.parametrize(("setting", "loop"), [(None, "uvloop"), ("asyncio", "asyncio")])
async def test_serve_runs_on_the_event_loop_of_its_setting(
    empty_database_url: str, setting: str | None, loop: str
) -> None:
    env = {"PODIUM_DATABASE_URL": empty_database_url}
    if setting is not None:
        env["PODIUM_EVENT_LOOP"] = setting
    serve = await asyncio.to_thread(start_serve, env)
    try:
        assert await check_health(serve.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert await asyncio.to_thread(serve.terminate) == 0
    serving = [e for e in serve.logs if e.get("message") == "Podium serving"]
    assert [e["event_loop"] for e in serving] == [loop]


def test_bad_setting_exits_with_a_clear_message() -> None:
    result = subprocess.run(
        [PODIUM, "serve", "--listen-address", "nowhere"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "PODIUM_LISTEN_ADDRESS" not in result.stdout
    assert "--listen-address='nowhere': expected HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr

    result = subprocess.run(
        [PODIUM, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ORCHESTRATION_MAX_CONCURRENCY": "-3"},
    )
    assert result.returncode == 2
    assert "ORCHESTRATION_MAX_CONCURRENCY='-3': must be >= 1" in result.stderr


def test_unknown_database_exits_at_once_with_the_reason(pg_server_url: str) -> None:
    from tests.conftest import database_dsn

    result = subprocess.run(
        [PODIUM, "serve", "--listen-address", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PODIUM_DATABASE_URL": database_dsn(pg_server_url, "podium_missing_db")},
    )
    assert result.returncode == 1
    assert 'database "podium_missing_db" does not exist' in result.stderr
    assert "Traceback" not in result.stderr
