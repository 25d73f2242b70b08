"""EmbeddedPostgres: start, connect, stop, and no postgres process left behind.

These tests start their own servers: they run whether or not PODIUM_TEST_DATABASE_URL
is set (they are the tests of the embedded path).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from podium.server.storage.database import Database
from podium.server.storage.embedded import EmbeddedPostgres
from podium.server.storage.errors import StorageUnavailable

pytestmark = pytest.mark.embedded


def _postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line names ``pgdata``."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and str(pgdata) in cmdline:
            found.append(process)
    return found


def _assert_no_server_left(pgdata: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := _postgres_processes(pgdata)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"postgres still running on {pgdata}: {left}"


async def _query(dsn: str) -> object:
    db = await Database.connect(dsn, max_size=2)
    try:
        async with db.connection() as conn:
            return await conn.fetchval("SELECT $1::jsonb", {"ok": [1, 2]})
    finally:
        await db.close()


async def test_start_connect_stop(embedded_data_dir: Path) -> None:
    server = EmbeddedPostgres(embedded_data_dir / "data")
    dsn = await asyncio.to_thread(server.start)
    try:
        assert server.pgdata == (embedded_data_dir / "data" / "pgdata").resolve()
        assert server.start() == dsn  # already started: same server
        pid = server.postmaster_pid
        assert pid is not None
        assert psutil.pid_exists(pid)
        assert await _query(dsn) == {"ok": [1, 2]}
        conn_db = await Database.connect(dsn, max_size=1)
        try:
            async with conn_db.connection() as conn:
                await conn.execute("CREATE TABLE kept (x int)")
        finally:
            await conn_db.close()
    finally:
        await asyncio.to_thread(server.stop)
    server.stop()  # idempotent
    assert server.dsn is None
    _assert_no_server_left(server.pgdata)

    # The data directory is reused: same cluster, data kept.
    again = EmbeddedPostgres(embedded_data_dir / "data")
    dsn = await asyncio.to_thread(again.start)
    try:
        db = await Database.connect(dsn, max_size=1)
        try:
            async with db.connection() as conn:
                assert await conn.fetchval("SELECT to_regclass('kept') IS NOT NULL")
        finally:
            await db.close()
    finally:
        await asyncio.to_thread(again.stop)
    _assert_no_server_left(again.pgdata)


_SERVE_SCRIPT = """
import signal, sys, time
from pathlib import Path
from podium.server.storage.embedded import EmbeddedPostgres

def on_sigterm(signum, frame):
    raise SystemExit(0)

signal.signal(signal.SIGTERM, on_sigterm)
with EmbeddedPostgres(Path(sys.argv[1])) as dsn:
    print(dsn, flush=True)
    while True:
        time.sleep(1)
"""


async def test_sigterm_leaves_no_server(embedded_data_dir: Path) -> None:
    """A process that stops the server on SIGTERM (as `podium serve` does) leaves no
    postgres behind, although the postmaster runs in its own session."""
    data_dir = embedded_data_dir / "serve"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SERVE_SCRIPT,
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    dsn = line.decode().strip()
    assert dsn.startswith("postgresql://"), (await process.communicate())[1].decode()
    assert await _query(dsn) == {"ok": [1, 2]}

    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    _assert_no_server_left((data_dir / "pgdata").resolve())


def test_rejects_whitespace_in_path(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match="whitespace"):
        EmbeddedPostgres(tmp_path / "with space").start()
