"""What every system of the side-by-side benchmark shares: the workloads' sizes, the
``System`` interface, and the accounting of one measured window (CPU per process,
the database's backends, commits from ``pg_stat_database``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psutil

# Seconds to wait before reading pg_stat_database after a window: a backend publishes
# its statistics at most once a second, and one that went idle just after publishing
# does so 10 s later (PostgreSQL 15). The systems' touches do not reach every backend
# (DBOS's and Podium's listeners, connections held elsewhere), so wait it out.
SETTLE_S = 10.5


@dataclass(frozen=True)
class Sizes:
    """W1: one run of ``w1_steps`` sequential steps (``w1_repeats`` times, one after the
    other); W2: ``w2_runs`` runs of ``w2_steps`` sequential steps started at once; W3:
    one run of ``w3_width`` parallel steps and a join."""

    w1_steps: int = 10
    w1_repeats: int = 20
    w2_runs: int = 100
    w2_steps: int = 10
    w3_width: int = 1000

    def steps(self, workload: str) -> int:
        if workload == "w1":
            return self.w1_steps * self.w1_repeats
        if workload == "w2":
            return self.w2_runs * self.w2_steps
        return self.w3_width + 1


class System:
    """One system under test, started on its own fresh database for a round.

    ``w1`` returns each run's end-to-end seconds (the caller's view: from starting the
    run to knowing it finished); ``w2`` and ``w3`` return nothing (the window's wall
    time is measured around them)."""

    name = ""

    async def start(self, dsn: str) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def w1(self, steps: int, repeats: int) -> list[float]:
        raise NotImplementedError

    async def w2(self, runs: int, steps: int) -> None:
        raise NotImplementedError

    async def w3(self, width: int) -> None:
        raise NotImplementedError

    async def warm(self) -> None:
        """Connections, caches and prepared statements warm (not measured)."""

    def processes(self) -> dict[str, psutil.Process]:
        """The system's own processes other than this one (the driver), by role."""
        return {}

    def excluded_backends(self) -> set[int]:
        """Backends of the benchmark's own bookkeeping (not the system's work)."""
        return set()

    async def flush_stats(self) -> int:
        """Make the system's idle backends publish their statistics (a backend reports
        at most once a second, an idle one up to 10 s later); returns the transactions
        that doing so committed (subtracted from the window's commits)."""
        return 0

    def bookkeeping_commits(self) -> int:
        """Commits made so far by the benchmark's own queries (e.g. completion polls)."""
        return 0


@dataclass
class Snapshot:
    wall: float
    cpu: dict[str, float]
    backends: dict[int, float] = field(default_factory=dict)
    commits: int = 0


def _cpu(process: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        t = process.cpu_times()
        return float(t.user + t.system)
    return 0.0


class Meter:
    """CPU seconds of the driver (this process), the system's own processes and the
    benchmark database's backends; commits of the database."""

    def __init__(self, admin: asyncpg.Connection[Any], dbname: str, system: System) -> None:
        self._admin = admin
        self._dbname = dbname
        self._system = system
        self._me = psutil.Process()
        self._procs: dict[int, psutil.Process] = {}
        self.idle_commits_per_s = 0.0
        self._last = (0, time.perf_counter())

    def _backend(self, pid: int) -> psutil.Process | None:
        if pid not in self._procs:
            try:
                self._procs[pid] = psutil.Process(pid)
            except psutil.Error:
                return None
        return self._procs[pid]

    async def _settled_commits(self) -> tuple[int, float]:
        """The database's commits once every backend published them (waiting
        ``SETTLE_S``, then the system's touch), less the benchmark's own; and when."""
        await asyncio.sleep(SETTLE_S)
        touched = await self._system.flush_stats()
        await asyncio.sleep(0.3)
        commits = await self._admin.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", self._dbname
        )
        own = touched + self._system.bookkeeping_commits()
        return int(commits or 0) - own, time.perf_counter()

    async def calibrate(self) -> float:
        """The system's idle commits per second (its background work: polls, leases),
        measured over one settling period; subtracted from every settling period."""
        first, t_first = await self._settled_commits()
        second, t_second = await self._settled_commits()
        self.idle_commits_per_s = max(0.0, (second - first) / (t_second - t_first))
        self._last = (second, t_second)
        return self.idle_commits_per_s

    async def _cpu_snapshot(self) -> Snapshot:
        cpu = {"driver": _cpu(self._me)}
        for role, process in self._system.processes().items():
            cpu[role] = _cpu(process)
        excluded = self._system.excluded_backends()
        backends: dict[int, float] = {}
        rows = await self._admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self._dbname
        )
        for row in rows:
            if row["pid"] in excluded:
                continue
            backend = self._backend(row["pid"])
            if backend is not None:
                backends[row["pid"]] = _cpu(backend)
        return Snapshot(time.perf_counter(), cpu, backends)

    async def before(self) -> Snapshot:
        """CPU now; commits: the last settled count plus the idle ones since."""
        snapshot = await self._cpu_snapshot()
        commits, at = self._last
        snapshot.commits = round(commits + self.idle_commits_per_s * (snapshot.wall - at))
        return snapshot

    async def after(self) -> Snapshot:
        """CPU right at the window's end; then the settled commits, less the idle ones
        of the settling period."""
        snapshot = await self._cpu_snapshot()
        commits, at = await self._settled_commits()
        self._last = (commits, at)
        snapshot.commits = round(commits - self.idle_commits_per_s * (at - snapshot.wall))
        return snapshot


def window_figures(before: Snapshot, after: Snapshot, steps: int, wall: float) -> dict[str, Any]:
    """CPU ms per step per process and commits per step between two snapshots."""
    per_step: dict[str, float] = {}
    for role, seconds in after.cpu.items():
        per_step[role] = 1000 * (seconds - before.cpu.get(role, 0.0)) / steps
    pg = sum(t - before.backends.get(pid, 0.0) for pid, t in after.backends.items())
    per_step["postgres"] = 1000 * pg / steps
    own = sum(v for k, v in per_step.items() if k != "postgres")
    return {
        "wall_s": round(wall, 4),
        "steps_per_s": round(steps / wall, 1) if wall > 0 else None,
        "cpu_ms_per_step": {k: round(v, 3) for k, v in per_step.items()},
        "cpu_ms_per_step_own_processes": round(own, 3),
        "cpu_ms_per_step_total": round(own + per_step["postgres"], 3),
        "commits_per_step": round((after.commits - before.commits) / steps, 3),
    }
