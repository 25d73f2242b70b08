"""The database side of a scenario: what the backends do while it runs (sampled from
``pg_stat_activity``) and the cumulative statistics of the benchmark database."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import asyncpg

_QUERY_KINDS: tuple[tuple[str, str], ...] = (
    ("podium_claim_steps", "claim"),
    ("podium_complete_step", "complete"),
    ("podium_requeue_expired", "leases"),
    ("lease_expires_at", "leases"),
    ("INSERT INTO orchestration_runs", "create run"),
    ("INSERT INTO orchestration_steps", "create run"),
    ("podium_emit_event", "create run"),
    ("podium_start_run", "create run"),
    ("FROM orchestration_events", "read events"),
    ("FROM orchestration_steps", "read run"),
    ("FROM step_attempts", "read run"),
    ("FROM deliverables", "read run"),
    ("FROM orchestration_runs", "read run"),
    ("FROM orchestration_definitions", "definitions"),
)


def _query_kind(query: str) -> str:
    head = query.lstrip()[:6].upper()
    if head.startswith(("COMMIT", "BEGIN")):
        return f"{head.rstrip(';').strip()} (any transaction)"
    for needle, kind in _QUERY_KINDS:
        if needle in query:
            return kind
    return "other"


class Sampler:
    """Samples, every ``interval`` seconds while a scenario runs: what the database's
    backends are doing (``pg_stat_activity``: on CPU, waiting on a lock, on WAL I/O,
    idle in transaction), how busy the engine's pool is, and the scheduler's in-flight
    steps and completion queue."""

    def __init__(
        self,
        admin: asyncpg.Connection[Any],
        dbname: str,
        scheduler: Any,
        pool: Any,
        interval: float = 0.02,
    ) -> None:
        self._admin = admin
        self._dbname = dbname
        self._scheduler = scheduler
        self._pool = pool
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._reset()

    def _reset(self) -> None:
        self.samples = 0
        self.activity: dict[str, float] = {}
        self.by_kind: dict[str, dict[str, float]] = {}
        self.inflight: list[int] = []
        self.completion_queue: list[int] = []
        self.pool_in_use: list[int] = []
        self.pool_exhausted = 0

    async def _sample(self) -> None:
        rows = await self._admin.fetch(
            "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity "
            "WHERE datname = $1 AND backend_type = 'client backend'",
            self._dbname,
        )
        self.samples += 1
        for row in rows:
            state = row["state"] or ""
            if state == "idle":
                continue
            if state.startswith("idle in transaction"):
                what = "idle in transaction (waiting for the engine)"
            elif row["wait_event_type"] is None:
                what = "active: on CPU"
            else:
                what = f"active: waiting {row['wait_event_type']}:{row['wait_event']}"
            self.activity[what] = self.activity.get(what, 0) + 1
            kind = self.by_kind.setdefault(_query_kind(row["query"] or ""), {})
            kind[what] = kind.get(what, 0) + 1
        completions = getattr(self._scheduler, "_completions", None)
        self.inflight.append(getattr(self._scheduler, "active_steps", 0))
        self.completion_queue.append(completions.qsize() if completions is not None else 0)
        if self._pool is not None:
            in_use = self._pool.get_size() - self._pool.get_idle_size()
            self.pool_in_use.append(in_use)
            self.pool_exhausted += in_use >= self._pool.get_max_size()

    async def _loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(asyncpg.PostgresError):
                await self._sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval)

    def start(self) -> None:
        self._reset()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stopping))

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
        n = max(self.samples, 1)

        def mean(values: list[int]) -> float:
            return round(sum(values) / len(values), 2) if values else 0.0

        slots = getattr(getattr(self._scheduler, "config", None), "slots", 0)
        return {
            "samples": self.samples,
            "interval_s": self._interval,
            "db_backends_mean_by_activity": {
                k: round(v / n, 3) for k, v in sorted(self.activity.items(), key=lambda kv: -kv[1])
            },
            "db_backends_mean_by_query": {
                kind: {k: round(v / n, 3) for k, v in sorted(acts.items(), key=lambda kv: -kv[1])}
                for kind, acts in sorted(self.by_kind.items())
            },
            "engine_inflight_steps_mean": mean(self.inflight),
            "engine_inflight_steps_max": max(self.inflight, default=0),
            "engine_slots": slots,
            "share_of_samples_at_slot_limit": round(
                sum(1 for x in self.inflight if slots and x >= slots) / n, 3
            ),
            "completion_queue_mean": mean(self.completion_queue),
            "completion_queue_max": max(self.completion_queue, default=0),
            "pool_in_use_mean": mean(self.pool_in_use),
            "share_of_samples_pool_exhausted": round(self.pool_exhausted / n, 3),
        }


_STATS_QUERY = """
SELECT json_build_object(
  'db', (SELECT row_to_json(d) FROM (
          SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted,
                 tup_updated, blks_hit, blks_read, deadlocks
            FROM pg_stat_database WHERE datname = current_database()) d),
  'functions', (SELECT json_object_agg(funcname, json_build_object(
                  'calls', calls, 'total_ms', total_time, 'self_ms', self_time))
                  FROM pg_stat_user_functions),
  'tables', (SELECT json_object_agg(relname, json_build_object(
               'n_tup_ins', n_tup_ins, 'n_tup_upd', n_tup_upd, 'n_tup_hot_upd', n_tup_hot_upd,
               'seq_scan', seq_scan, 'seq_tup_read', seq_tup_read, 'idx_scan', idx_scan,
               'idx_tup_fetch', idx_tup_fetch))
               FROM pg_stat_user_tables
              WHERE relname IN ('orchestration_runs', 'orchestration_steps',
                                'orchestration_events', 'step_attempts')))::text
"""


def _diff(after: Any, before: Any) -> Any:
    if isinstance(after, dict):
        b = before if isinstance(before, dict) else {}
        return {k: _diff(v, b.get(k)) for k, v in after.items()}
    if isinstance(after, int | float) and not isinstance(after, bool):
        return after - (before if isinstance(before, int | float) else 0)
    return after


class PgStats:
    """Cumulative statistics of the benchmark database (``pg_stat_database``,
    ``pg_stat_user_functions`` with ``track_functions = 'pl'`` set on the database,
    ``pg_stat_user_tables``). Backends publish their counters at most once a second, so
    :meth:`snapshot` first waits a second and has every pooled connection run a query."""

    def __init__(self, conn: asyncpg.Connection[Any], pool: Any) -> None:
        self._conn = conn
        self._pool = pool
        self.last: dict[str, Any] | None = None
        """The snapshot taken at the end of the last scenario, while nothing ran since."""

    async def _flush(self) -> None:
        await asyncio.sleep(1.1)
        if self._pool is None:
            return
        count = self._pool.get_size()
        held: list[Any] = []
        try:
            for _ in range(count):
                held.append(await asyncio.wait_for(self._pool.acquire(), timeout=5))
            for conn in held:
                await conn.fetchval("SELECT 1")
        except TimeoutError:
            pass
        finally:
            for conn in held:
                await self._pool.release(conn)

    async def snapshot(self) -> dict[str, Any]:
        await self._flush()
        data: dict[str, Any] = json.loads(await self._conn.fetchval(_STATS_QUERY))
        return data

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any], steps: int) -> dict[str, Any]:
        d = _diff(after, before)
        steps = max(steps, 1)
        db = d.get("db") or {}
        functions = {
            name: {
                "calls_per_step": round(f["calls"] / steps, 3),
                "total_ms_per_step": round(f["total_ms"] / steps, 4),
                "self_ms_per_step": round(f["self_ms"] / steps, 4),
                "mean_ms_per_call": round(f["total_ms"] / f["calls"], 3) if f["calls"] else 0,
            }
            for name, f in (d.get("functions") or {}).items()
            if f.get("calls")
        }
        tables = {
            name: {k: round(v / steps, 2) for k, v in t.items()}
            for name, t in (d.get("tables") or {}).items()
        }
        return {
            "commits_per_step": round(db.get("xact_commit", 0) / steps, 3),
            "rollbacks": db.get("xact_rollback", 0),
            "deadlocks": db.get("deadlocks", 0),
            "rows_fetched_per_step": round(db.get("tup_fetched", 0) / steps, 1),
            "rows_returned_per_step": round(db.get("tup_returned", 0) / steps, 1),
            "rows_inserted_per_step": round(db.get("tup_inserted", 0) / steps, 2),
            "rows_updated_per_step": round(db.get("tup_updated", 0) / steps, 2),
            "buffer_hits_per_step": round(db.get("blks_hit", 0) / steps, 1),
            "functions": functions,
            "tables_per_step": tables,
        }


async def wal_lsn(admin: asyncpg.Connection[Any]) -> str:
    return str(await admin.fetchval("SELECT pg_current_wal_lsn()::text"))
