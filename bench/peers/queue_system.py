"""The raw queue ceiling: a ``FOR UPDATE SKIP LOCKED`` job table and 4 workers in this
process (asyncpg, one connection each), one transaction and so one commit per step:
claim the oldest job, (do nothing), record its completion (the next step of a chain;
a fan-out's join is enqueued with its members and claimable once none is left),
commit. What a durable step costs on this Postgres with nothing else around it: no
scheduler, no events, no agent call.

Workers that find the table empty wait on an in-process signal (set when a job is
enqueued by the driver or a worker), with a 50 ms fallback poll; an empty claim rolls
back, so it adds no commit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg

from bench.peers.common import System

WORKERS = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_jobs (
    id bigserial PRIMARY KEY,
    run_id bigint NOT NULL,
    step int NOT NULL,       -- 1..n of a chain; 0 a fan-out member; -1 the join
    steps int NOT NULL       -- a chain's length
);
CREATE INDEX IF NOT EXISTS bench_jobs_members ON bench_jobs (run_id) WHERE step = 0;
CREATE TABLE IF NOT EXISTS bench_runs (
    id bigserial PRIMARY KEY,
    done boolean NOT NULL DEFAULT false
);
"""

_CLAIM = """
DELETE FROM bench_jobs
WHERE id = (
    SELECT id FROM bench_jobs j
    WHERE j.step <> -1  -- a join waits until no member of its run is left
       OR NOT EXISTS (SELECT 1 FROM bench_jobs m WHERE m.run_id = j.run_id AND m.step = 0)
    ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING run_id, step, steps
"""


class QueueSystem(System):
    name = "queue"

    def __init__(self) -> None:
        self._conns: list[asyncpg.Connection[Any]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._done: dict[int, asyncio.Future[None]] = {}

    async def start(self, dsn: str) -> None:
        setup = await asyncpg.connect(dsn)
        try:
            await setup.execute(_SCHEMA)
        finally:
            await setup.close()
        self._conns = [await asyncpg.connect(dsn) for _ in range(WORKERS + 1)]
        self._workers = [asyncio.create_task(self._work(c)) for c in self._conns[1:]]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in self._conns:
            await conn.close()

    async def flush_stats(self) -> int:
        # The idle workers end a transaction every 50 ms (publishing their statistics at
        # most once a second): only the driver's connection needs a touch.
        await self._conns[0].fetchval("SELECT 1")
        return 1

    async def _work(self, conn: asyncpg.Connection[Any]) -> None:
        while True:
            tx = conn.transaction()
            await tx.start()
            job = await conn.fetchrow(_CLAIM)
            if job is None:
                await tx.rollback()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.05)
                continue
            run_id, step, steps = job["run_id"], job["step"], job["steps"]
            finished = False
            if 0 < step < steps:
                await conn.execute(
                    "INSERT INTO bench_jobs (run_id, step, steps) VALUES ($1, $2, $3)",
                    run_id,
                    step + 1,
                    steps,
                )
            elif step == 0:
                pass  # the member's row is gone: that is its completion
            else:
                await conn.execute("UPDATE bench_runs SET done = true WHERE id = $1", run_id)
                finished = True
            await tx.commit()
            if finished:
                self._done.pop(run_id).set_result(None)
            elif step > 0:
                self._wake.set()

    async def _start_chains(self, count: int, steps: int) -> list[asyncio.Future[None]]:
        conn = self._conns[0]
        async with conn.transaction():
            ids = [
                r["id"]
                for r in await conn.fetch(
                    "INSERT INTO bench_runs (done) SELECT false FROM generate_series(1, $1) "
                    "RETURNING id",
                    count,
                )
            ]
            await conn.execute(
                "INSERT INTO bench_jobs (run_id, step, steps) SELECT unnest($1::bigint[]), 1, $2",
                ids,
                steps,
            )
        return self._register(ids)

    def _register(self, ids: list[int]) -> list[asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        futures = []
        for run_id in ids:
            self._done[run_id] = future = loop.create_future()
            futures.append(future)
        self._wake.set()
        return futures

    async def w1(self, steps: int, repeats: int) -> list[float]:
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            await asyncio.gather(*await self._start_chains(1, steps))
            out.append(time.perf_counter() - t0)
        return out

    async def w2(self, runs: int, steps: int) -> None:
        await asyncio.gather(*await self._start_chains(runs, steps))

    async def w3(self, width: int) -> None:
        conn = self._conns[0]
        async with conn.transaction():
            run_id = await conn.fetchval("INSERT INTO bench_runs DEFAULT VALUES RETURNING id")
            await conn.execute(
                "INSERT INTO bench_jobs (run_id, step, steps) "
                "SELECT $1::bigint, 0, 0 FROM generate_series(1, $2) UNION ALL SELECT $1, -1, 0",
                run_id,
                width,
            )
        await asyncio.gather(*self._register([run_id]))

    async def warm(self) -> None:
        await self.w1(2, 2)
