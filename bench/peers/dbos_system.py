"""DBOS Transact (``dbos``, a bench-only extra) in the side-by-side benchmark: durable
async workflows in this process whose steps are no-op in-process functions, on a
Postgres system database (the benchmark's), with the system database pool at the
shared budget. W3 runs its 1,000 steps with ``asyncio.gather`` inside one workflow,
at most 100 in flight (a semaphore), then the join step."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.peers.budget import INFLIGHT, POOL_SIZE
from bench.peers.common import System

_registered: dict[str, Any] = {}


def _functions() -> dict[str, Any]:
    """The workflows and the step, registered with DBOS once per process."""
    if _registered:
        return _registered
    from dbos import DBOS

    @DBOS.step()
    async def noop_step(i: int) -> int:
        return i

    @DBOS.workflow()
    async def chain(steps: int) -> int:
        for i in range(steps):
            await noop_step(i)
        return steps

    @DBOS.workflow()
    async def fanout(width: int) -> int:
        limit = asyncio.Semaphore(INFLIGHT)

        async def one(i: int) -> int:
            async with limit:
                result: int = await noop_step(i)
                return result

        await asyncio.gather(*(one(i) for i in range(width)))
        await noop_step(-1)  # the join
        return width

    _registered.update(chain=chain, fanout=fanout)
    return _registered


class DbosSystem(System):
    name = "dbos"

    def __init__(self) -> None:
        self._dbos: Any = None

    async def start(self, dsn: str) -> None:
        from dbos import DBOS

        functions = _functions()
        self._dbos = DBOS(
            config={
                "name": "podium-bench",
                "system_database_url": dsn,
                "sys_db_pool_size": POOL_SIZE,
                "log_level": "WARNING",
            }
        )
        DBOS.launch()
        assert functions

    async def stop(self) -> None:
        from dbos import DBOS

        DBOS.destroy(destroy_registry=False)
        # DBOS made its (now shut down) thread pool the event loop's default executor:
        # give the systems after it a working one.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())

    async def flush_stats(self) -> int:
        # Closing the pooled connections makes their backends publish at exit.
        self._dbos._sys_db.engine.dispose()
        return 0

    async def _chain(self, steps: int) -> None:
        from dbos import SetWorkflowID

        with SetWorkflowID(str(uuid.uuid4())):
            await _functions()["chain"](steps)

    async def w1(self, steps: int, repeats: int) -> list[float]:
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            await self._chain(steps)
            out.append(time.perf_counter() - t0)
        return out

    async def w2(self, runs: int, steps: int) -> None:
        await asyncio.gather(*(self._chain(steps) for _ in range(runs)))

    async def w3(self, width: int) -> None:
        await _functions()["fanout"](width)

    async def warm(self) -> None:
        await self.w1(2, 2)
