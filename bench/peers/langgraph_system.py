"""LangGraph (``langgraph`` + ``langgraph-checkpoint-postgres``, bench-only extras) in
the side-by-side benchmark: graphs in this process whose nodes are no-op functions,
checkpointed by ``AsyncPostgresSaver`` on a psycopg pool of the shared size, with
durability "sync" (every step's checkpoint is written before the next step starts).
W1/W2: a chain of nodes; W3: one node sends 1,000 ``Send`` tasks to a worker node
(``max_concurrency`` 100), then a join node."""

from __future__ import annotations

import asyncio
import operator
import time
import uuid
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bench.peers.budget import INFLIGHT, POOL_SIZE
from bench.peers.common import System


class ChainState(TypedDict):
    n: int


class FanState(TypedDict):
    width: int
    done: Annotated[int, operator.add]


def chain_graph(steps: int, checkpointer: Any) -> Any:
    graph = StateGraph(ChainState)

    async def node(state: ChainState) -> dict[str, int]:
        return {"n": state["n"] + 1}

    names = [f"s{k}" for k in range(1, steps + 1)]
    for name in names:
        graph.add_node(name, node)
    graph.add_edge(START, names[0])
    for a, b in zip(names, names[1:], strict=False):
        graph.add_edge(a, b)
    graph.add_edge(names[-1], END)
    return graph.compile(checkpointer=checkpointer)


def fanout_graph(checkpointer: Any) -> Any:
    graph = StateGraph(FanState)

    def fan(state: FanState) -> list[Send]:
        return [Send("work", {"width": 0, "done": 0}) for _ in range(state["width"])]

    async def work(state: FanState) -> dict[str, int]:
        return {"done": 1}

    async def join(state: FanState) -> dict[str, int]:
        return {"done": 0}

    graph.add_node("work", work)
    graph.add_node("join", join)
    graph.add_conditional_edges(START, fan, ["work"])
    graph.add_edge("work", "join")
    graph.add_edge("join", END)
    return graph.compile(checkpointer=checkpointer)


class LangGraphSystem(System):
    name = "langgraph"

    def __init__(self) -> None:
        self._pool: Any = None
        self._saver: Any = None
        self._chains: dict[int, Any] = {}
        self._fanout: Any = None

    async def start(self, dsn: str) -> None:
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            open=False,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        )
        await self._pool.open(wait=True)
        self._saver = AsyncPostgresSaver(self._pool)
        await self._saver.setup()
        self._chains = {}
        self._fanout = fanout_graph(self._saver)

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def flush_stats(self) -> int:
        size = self._pool.get_stats().get("pool_size", POOL_SIZE)
        held: list[Any] = []
        gate = asyncio.Event()

        async def touch() -> None:
            async with self._pool.connection() as conn:
                held.append(conn)
                await conn.execute("SELECT 1")
                if len(held) >= size:
                    gate.set()
                await asyncio.wait_for(gate.wait(), 2)

        await asyncio.gather(*(touch() for _ in range(size)), return_exceptions=True)
        return len(held)

    def _config(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": str(uuid.uuid4())}, "max_concurrency": INFLIGHT}

    async def _chain(self, steps: int) -> None:
        if steps not in self._chains:
            self._chains[steps] = chain_graph(steps, self._saver)
        await self._chains[steps].ainvoke({"n": 0}, self._config(), durability="sync")

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
        result = await self._fanout.ainvoke(
            {"width": width, "done": 0}, self._config(), durability="sync"
        )
        if result["done"] != width:
            raise RuntimeError(f"LangGraph W3: {result['done']} of {width} steps done")

    async def warm(self) -> None:
        await self.w1(2, 2)
