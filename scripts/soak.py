"""Soak: steady load on one real ``podium serve`` process with run retention on, to see
whether the database, the server's memory and its connections stay flat.

    .venv/bin/python scripts/soak.py --duration 300 --retention-seconds 20

A fresh database ``deploy_soak_<hex>`` on ``--database-url`` (dropped at the end unless
``--keep``); the example ``echo`` agent in this process; the server in a child process
with ``PODIUM_RUN_RETENTION_DAYS`` set to ``--retention-seconds``; ``--concurrency``
loops each start a run of a ``--steps``-step chain and wait for it, for ``--duration``
seconds (bounded: the loops stop by themselves). Every ``--sample-interval`` seconds it
records the database size, the live rows of the run tables, the server's RSS, the
database connections, and the runs deleted by retention (from /metrics).

Autovacuum: production keeps it on, and the space that retention frees is reused only
after a VACUUM. On a database with autovacuum off (as in this repository's CI) pass
``--vacuum-interval`` to run a plain ``VACUUM`` (never FULL) of the soak database at that
cadence, standing in for autovacuum.

HOT updates: the summary gives ``n_tup_hot_upd / n_tup_upd`` of orchestration_runs and
orchestration_steps; ``--no-fillfactor`` resets the tables to the default fillfactor
first (the layout before migration 0006), for a before/after comparison.

Prints one JSON document on stdout (samples and summary); progress on stderr. Sends
traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from podium.client import PodiumClient
from podium.client.demo import agents_setting
from podium.client.examples.agents import serve_examples

ROOT = Path(__file__).resolve().parent.parent
PODIUM = str(Path(sys.executable).parent / "podium")
TABLES = ("orchestration_runs", "orchestration_steps", "step_attempts", "orchestration_events")


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def sample_database(conn: asyncpg.Connection[asyncpg.Record], name: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT pg_database_size(current_database()) AS size, "
        "(SELECT count(*) FROM pg_stat_activity WHERE datname = $1) AS connections",
        name,
    )
    assert row is not None
    out: dict[str, Any] = {"db_bytes": row["size"], "connections": row["connections"] - 1}
    for table in TABLES:
        out[f"{table}_rows"] = await conn.fetchval(f"SELECT count(*) FROM {table}")
        out[f"{table}_bytes"] = await conn.fetchval("SELECT pg_table_size($1::regclass)", table)
        out[f"{table}_index_bytes"] = await conn.fetchval(
            "SELECT pg_indexes_size($1::regclass)", table
        )
    return out


async def hot_stats(conn: asyncpg.Connection[asyncpg.Record]) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
        "WHERE relname = ANY($1::text[])",
        ["orchestration_runs", "orchestration_steps"],
    )
    return {
        r["relname"]: {
            "updates": r["n_tup_upd"],
            "hot_updates": r["n_tup_hot_upd"],
            "hot_ratio": round(r["n_tup_hot_upd"] / r["n_tup_upd"], 3) if r["n_tup_upd"] else None,
        }
        for r in rows
    }


def retention_deleted(metrics_address: str) -> float:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('orchestration_retention_deleted_total{kind="runs"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def load(address: str, args: argparse.Namespace, stop_at: float) -> dict[str, int]:
    counts = {"runs": 0, "failed": 0}
    steps = [{"id": "s0", "agent": "echo", "input": {"i": 0, "pad": "x" * 200}}]
    for i in range(1, args.steps):
        steps.append(
            {"id": f"s{i}", "agent": "echo", "depends_on": [f"s{i - 1}"], "input": {"i": i}}
        )
    async with PodiumClient(address) as client:
        await client.create_definition({"name": "soak", "steps": steps})

        async def loop() -> None:
            while time.monotonic() < stop_at:
                run = await client.start_run("soak", input={})
                done = await client.wait_run(run.id, timeout=120)
                counts["runs"] += 1
                if done.state != done.STATE_SUCCEEDED:
                    counts["failed"] += 1

        await asyncio.gather(*(loop() for _ in range(args.concurrency)))
    return counts


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    name = f"deploy_soak_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(args.database_url, name)
    agents = await serve_examples(names=["echo"])
    grpc_address = f"127.0.0.1:{args.port}"
    metrics_address = f"127.0.0.1:{args.port + 1}"
    env = {
        **os.environ,
        "PODIUM_DATABASE_URL": url,
        "PODIUM_LISTEN_ADDRESS": grpc_address,
        "PODIUM_METRICS_ADDRESS": metrics_address,
        "PODIUM_AGENTS": agents_setting(agents, ["echo"]),
        "PODIUM_AGENT_ALLOWED_NETWORKS": "loopback",
        "PODIUM_RUN_RETENTION_DAYS": repr(args.retention_seconds / 86400),
        "PODIUM_EVENT_RETENTION_HOURS": "0",
        "PODIUM_RETENTION_INTERVAL_SECONDS": str(args.retention_interval),
        "PODIUM_LOG_LEVEL": "warning",
        "PODIUM_SHUTDOWN_GRACE_SECONDS": "2",
    }
    if args.retention_seconds <= 0:
        env["PODIUM_RUN_RETENTION_DAYS"] = "0"
    server: asyncio.subprocess.Process | None = None
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {"database": name, "settings": vars(args)}
    conn = await asyncpg.connect(url)
    try:
        server = await asyncio.create_subprocess_exec(PODIUM, "serve", env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:  # migrated and serving once the metrics answer
            with contextlib.suppress(OSError):
                await asyncio.to_thread(retention_deleted, metrics_address)
                break
            if time.monotonic() > deadline or server.returncode is not None:
                raise RuntimeError("the server did not start")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        if args.no_fillfactor:
            for table in ("orchestration_runs", "orchestration_steps"):
                await conn.execute(f"ALTER TABLE {table} RESET (fillfactor)")
        process = psutil.Process(server.pid)
        started = time.monotonic()
        stop_at = started + args.duration
        work = asyncio.create_task(load(grpc_address, args, stop_at))
        last_vacuum = started
        while not work.done():
            await asyncio.wait({work}, timeout=args.sample_interval)
            now = time.monotonic()
            if args.vacuum_interval and now - last_vacuum >= args.vacuum_interval:
                await conn.execute("VACUUM")
                last_vacuum = now
            sample = {
                "t": round(now - started, 1),
                "rss_bytes": process.memory_info().rss,
                "runs_deleted": await asyncio.to_thread(retention_deleted, metrics_address),
                **await sample_database(conn, name),
            }
            samples.append(sample)
            log(
                f"t={sample['t']:>6}s db={sample['db_bytes'] / 1e6:.1f} MB "
                f"runs={sample['orchestration_runs_rows']} "
                f"deleted={sample['runs_deleted']:.0f} rss={sample['rss_bytes'] / 1e6:.0f} MB "
                f"conns={sample['connections']}"
            )
        result["load"] = work.result()
    finally:
        if server is not None and server.returncode is None:
            server.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(server.wait(), timeout=30)
            except TimeoutError:
                server.kill()
                await server.wait()
        await agents.stop(0)
    await asyncio.sleep(1.5)  # statistics are flushed at the end of the server's sessions
    result["hot"] = await hot_stats(conn)
    await conn.close()
    if not args.keep:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()
    result["samples"] = samples
    if samples:
        half = samples[len(samples) // 2 :]
        result["summary"] = {
            key: {"first": samples[0][key], "mid": half[0][key], "last": samples[-1][key]}
            for key in ("db_bytes", "rss_bytes", "connections", "orchestration_runs_rows")
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "PODIUM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a database of the server to create the soak database on",
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=8, help="runs in flight")
    parser.add_argument("--steps", type=int, default=5, help="steps per run (a chain)")
    parser.add_argument(
        "--retention-seconds", type=float, default=20.0, help="run retention; 0 keeps runs"
    )
    parser.add_argument("--retention-interval", type=float, default=5.0)
    parser.add_argument("--sample-interval", type=float, default=15.0)
    parser.add_argument(
        "--vacuum-interval", type=float, default=0.0, help="plain VACUUM every N s (0: never)"
    )
    parser.add_argument("--no-fillfactor", action="store_true", help="the layout before 0006")
    parser.add_argument("--port", type=int, default=23810, help="gRPC port; metrics on +1")
    parser.add_argument("--keep", action="store_true", help="keep the soak database")
    args = parser.parse_args()
    if not 1 <= args.concurrency <= 200 or not 1 <= args.steps <= 100:
        parser.error("--concurrency must be 1..200 and --steps 1..100")
    if not 0 < args.duration <= 3600:
        parser.error("--duration must be in (0, 3600] seconds")
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
