"""CPU and memory accounting: this process (all threads and the event-loop thread),
the agent process and the benchmark database's backends."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psutil

from bench.harness.agent import AgentProcess


@dataclass
class CpuSnapshot:
    wall: float
    bench: float
    loop_thread: float
    agent: float
    backends: dict[int, float] = field(default_factory=dict)


class CpuMeter:
    """CPU seconds of this process, the agent process and the database's backends."""

    def __init__(self, agent: AgentProcess, admin: asyncpg.Connection[Any], dbname: str) -> None:
        self._agent = agent
        self._admin = admin
        self._dbname = dbname
        self._me = psutil.Process()

    async def snapshot(self) -> CpuSnapshot:
        times = self._me.cpu_times()
        loop_tid = threading.get_native_id()
        loop_thread = sum(
            t.user_time + t.system_time for t in self._me.threads() if t.id == loop_tid
        )
        backends: dict[int, float] = {}
        pids = await self._admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self._dbname
        )
        for row in pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(row["pid"]).cpu_times()
                backends[row["pid"]] = t.user + t.system
        return CpuSnapshot(
            wall=time.time(),
            bench=times.user + times.system,
            loop_thread=loop_thread,
            agent=self._agent.cpu_seconds(),
            backends=backends,
        )

    @staticmethod
    def delta(before: CpuSnapshot, after: CpuSnapshot, steps: int) -> dict[str, Any]:
        wall = after.wall - before.wall
        pg = sum(t - before.backends.get(pid, 0.0) for pid, t in after.backends.items())
        seconds = {
            "engine_process": after.bench - before.bench,
            "engine_event_loop_thread": after.loop_thread - before.loop_thread,
            "agent_process": after.agent - before.agent,
            "postgres_backends": pg,
        }
        out: dict[str, Any] = {"window_s": round(wall, 3)}
        for key, value in seconds.items():
            out[f"{key}_cpu_s"] = round(value, 3)
            out[f"{key}_utilization"] = round(value / wall, 3) if wall > 0 else 0
            out[f"{key}_cpu_ms_per_step"] = round(1000 * value / steps, 4) if steps else 0
        total = sum(v for k, v in seconds.items() if k != "engine_event_loop_thread")
        out["total_cpu_utilization_of_all_cores"] = round(total / (wall * (os.cpu_count() or 1)), 3)
        return out


def rss_mb(process: psutil.Process | None = None) -> float:
    """Resident set size of ``process`` (this one by default), in MiB."""
    return round((process or psutil.Process()).memory_info().rss / 2**20, 1)


def cpu_seconds(process: psutil.Process | None = None) -> float:
    """User + system CPU seconds of ``process`` (this one by default)."""
    times = (process or psutil.Process()).cpu_times()
    return float(times.user + times.system)
