"""Helpers of ``test_durability.py``: ``podium serve`` processes whose JSON logs go to a
file (no pipe to fill up during long runs), definitions, polling, and the SQL the
durability checks need (the API does not expose attempts' lease history or events
counts per step).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.processes import PODIUM

T = TypeVar("T")

DEADLINE = 60.0
"""Generous deadline of every wait: waits poll, and never assert on timing."""

TERMINAL_RUN_STATES = frozenset(
    {run_pb2.Run.STATE_SUCCEEDED, run_pb2.Run.STATE_FAILED, run_pb2.Run.STATE_CANCELLED}
)


# -- podium serve as an OS process ------------------------------------------------------


@dataclass
class PodiumProcess:
    """A ``podium serve`` child process logging JSON lines to ``log_path``."""

    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> list[dict[str, Any]]:
        """Every log line printed so far (non-JSON lines as ``{"message": line}``)."""
        entries = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"message": line})
        return entries

    def messages(self) -> list[str]:
        return [str(entry.get("message")) for entry in self.logs()]

    def kill(self) -> int:
        """SIGKILL and reap; returns the exit code (``-9``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=DEADLINE)

    def cleanup(self) -> None:
        """Kill the process if it still runs (for ``finally`` blocks)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=DEADLINE)


def spawn_podium(env: dict[str, str], log_path: Path) -> PodiumProcess:
    """Start ``podium serve`` on a free port with ``env`` over ``os.environ``."""
    full_env = {**os.environ, "PODIUM_LOG_FORMAT": "json", **env}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [PODIUM, "serve", "--listen-address", "127.0.0.1:0"],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    return PodiumProcess(process, log_path)


async def start_podium(env: dict[str, str], log_path: Path) -> PodiumProcess:
    """Start ``podium serve`` and wait until it logs "Podium serving"."""
    serve = await asyncio.to_thread(spawn_podium, env, log_path)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            ready = [e for e in serve.logs() if e.get("message") == "Podium serving"]
            if ready:
                serve.address = str(ready[0]["address"])
                return serve
            if serve.process.poll() is not None:
                raise AssertionError(f"podium serve exited early: {serve.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"podium serve not serving in {DEADLINE}s: {serve.logs()}")
            await asyncio.sleep(0.05)
    except BaseException:
        await asyncio.to_thread(serve.cleanup)
        raise


async def wait_exit(serve: PodiumProcess, within: float = DEADLINE) -> int:
    """The exit code of ``serve`` once it exits (fails after ``within`` seconds)."""
    return await asyncio.to_thread(serve.process.wait, within)


# -- definitions, runs, polling ---------------------------------------------------------


def definition(
    name: str, steps: Sequence[dict[str, Any]], *, max_parallel: int = 0
) -> definition_pb2.Definition:
    """A definition proto from the JSON form of its steps."""
    spec: dict[str, Any] = {"name": name, "steps": list(steps)}
    if max_parallel:
        spec["execution"] = {"concurrency": {"max_parallel": max_parallel}}
    return json_format.ParseDict(spec, definition_pb2.Definition())


async def wait_for(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    *,
    within: float = DEADLINE,
    interval: float = 0.05,
) -> T:
    """Poll ``check`` until it returns something truthy (a run, a non-empty list, True)."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")


async def wait_until(condition: Callable[[], bool], what: str, *, within: float = DEADLINE) -> None:
    """Poll a plain predicate (e.g. an in-process agent's stats) until it holds."""

    async def check() -> bool:
        return condition()

    await wait_for(check, what, within=within)


async def start_run(
    stub: pb_grpc.OrchestrationServiceAsyncStub, name: str, **input: Any
) -> run_pb2.Run:
    """Start a run of the latest version of definition ``name``."""
    request = pb.StartRunRequest(definition=pb.DefinitionRef(name=name), start=True)
    request.input.update(input)
    response = await stub.StartRun(request, timeout=30)
    return response.run


async def get_run(stub: pb_grpc.OrchestrationServiceAsyncStub, run_id: str) -> run_pb2.Run:
    return (await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)).run


async def wait_run_finished(
    stub: pb_grpc.OrchestrationServiceAsyncStub, run_id: str, within: float = DEADLINE
) -> run_pb2.Run:
    """The run once it reaches a terminal state."""

    async def finished() -> run_pb2.Run | None:
        run = await get_run(stub, run_id)
        return run if run.state in TERMINAL_RUN_STATES else None

    return await wait_for(finished, f"run {run_id} to finish", within=within, interval=0.1)


def step_states(run: run_pb2.Run) -> dict[str, str]:
    """``{step id: state name}`` of a run, for readable assertion messages."""
    return {s.step_id: run_pb2.StepRun.State.Name(s.state) for s in run.steps}


# -- direct database checks -------------------------------------------------------------


async def completed_events(
    conn: asyncpg.Connection[asyncpg.Record], run_ids: Sequence[uuid.UUID]
) -> dict[tuple[uuid.UUID, str], int]:
    """``step.completed`` events per (run, step)."""
    rows = await conn.fetch(
        "SELECT run_id, step_id, count(*) AS n FROM orchestration_events"
        " WHERE run_id = ANY($1::uuid[]) AND type = 'step.completed'"
        " GROUP BY run_id, step_id",
        list(run_ids),
    )
    return {(r["run_id"], r["step_id"]): r["n"] for r in rows}


async def event_types(conn: asyncpg.Connection[asyncpg.Record], run_id: uuid.UUID) -> list[str]:
    """The types of a run's events, in sequence order."""
    rows = await conn.fetch(
        "SELECT type FROM orchestration_events WHERE run_id = $1 ORDER BY sequence", run_id
    )
    return [r["type"] for r in rows]


async def attempts(
    conn: asyncpg.Connection[asyncpg.Record], run_ids: Sequence[uuid.UUID]
) -> dict[tuple[uuid.UUID, str], list[tuple[int, str | None, bool]]]:
    """(attempt, error code, ended) of every step attempt, per (run, step), in order."""
    rows = await conn.fetch(
        "SELECT run_id, step_id, attempt, error ->> 'code' AS code, ended_at IS NOT NULL AS ended"
        " FROM step_attempts WHERE run_id = ANY($1::uuid[]) ORDER BY run_id, step_id, attempt",
        list(run_ids),
    )
    out: dict[tuple[uuid.UUID, str], list[tuple[int, str | None, bool]]] = {}
    for r in rows:
        out.setdefault((r["run_id"], r["step_id"]), []).append(
            (r["attempt"], r["code"], r["ended"])
        )
    return out


async def listener_backends(conn: asyncpg.Connection[asyncpg.Record], database: str) -> list[int]:
    """Pids of the scheduler's LISTEN backends of ``database``."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = $1 AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'"
        # The watch hub's own listener (podium_events) is not the scheduler's.
        " AND query <> 'LISTEN \"podium_events\"'",
        database,
    )
    return [r["pid"] for r in rows]
