"""Helpers of the integration tests' runs: building definitions and plans, starting
runs through the gRPC API, polling until a run, a step or any condition holds, reading
whole event logs, and the SQL checks of what the API does not expose (attempts' lease
history, events per step, the scheduler's LISTEN connections).

No timing assertions: waiting helpers poll every ``POLL_SECONDS`` up to a generous
deadline and fail with the last state seen, so a slow machine makes tests slower, not red.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
from google.protobuf import json_format, struct_pb2

from podium.client.agent import struct_to_dict
from podium.orchestration.v1 import definition_pb2, event_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

T = TypeVar("T")

POLL_SECONDS = 0.05
DEADLINE_SECONDS = 60.0
"""Generous deadline of every wait: waits poll, and never assert on timing."""

Run = run_pb2.Run
StepRun = run_pb2.StepRun
RunEvent = event_pb2.RunEvent

TERMINAL_RUN_STATES = (Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_CANCELLED)


def definition(name: str, steps: list[dict[str, Any]], **extra: Any) -> definition_pb2.Definition:
    """A Definition proto from its JSON form (``extra``: top-level fields such as
    ``execution``, ``error_handling`` or ``labels``)."""
    return json_format.ParseDict(
        {"name": name, "steps": steps, **extra}, definition_pb2.Definition()
    )


def plan(steps: list[dict[str, Any]], **extra: Any) -> definition_pb2.Definition:
    """An inline plan (a Definition without a name) from its JSON form."""
    return json_format.ParseDict({"steps": steps, **extra}, definition_pb2.Definition())


def struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A Struct holding ``value`` (empty for None)."""
    out = struct_pb2.Struct()
    if value:
        out.update(value)
    return out


def plain(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python, integral numbers as ``int``."""
    return struct_to_dict(message)


async def create_definition(
    stub: OrchestrationServiceAsyncStub,
    name: str,
    steps: list[dict[str, Any]],
    **extra: Any,
) -> definition_pb2.Definition:
    """Store a definition and return the stored version."""
    response = await stub.CreateDefinition(
        pb.CreateDefinitionRequest(definition=definition(name, steps, **extra))
    )
    return response.definition


async def start_run(
    stub: OrchestrationServiceAsyncStub,
    name: str | None = None,
    *,
    version: int = 0,
    inline: definition_pb2.Definition | None = None,
    input: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    request_id: str = "",
    start: bool = True,
) -> pb.StartRunResponse:
    """StartRun of the definition ``name`` (or of the ``inline`` plan)."""
    request = pb.StartRunRequest(
        input=struct(input),
        labels=dict(labels or {}),
        request_id=request_id,
        start=start,
    )
    if inline is not None:
        request.plan.CopyFrom(inline)
    else:
        assert name is not None, "give a definition name or an inline plan"
        request.definition.name = name
        request.definition.version = version
    return await stub.StartRun(request)


async def get_run(stub: OrchestrationServiceAsyncStub, run_id: str) -> Run:
    """GetRun."""
    return (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run


def _state_name(enum: Any, value: int) -> str:
    return str(enum.Name(value))


def describe(run: Run) -> str:
    """One line per step: enough to understand a timeout."""
    lines = [
        f"run {run.id} {_state_name(Run.State, run.state)} error={run.error.code or '-'}"
        f" {run.error.message}"
    ]
    for step in run.steps:
        lines.append(
            f"  {step.step_id}: {_state_name(StepRun.State, step.state)} attempt={step.attempt}"
            f" agent={step.agent or '-'} error={step.error.code or '-'} {step.error.message}"
        )
    return "\n".join(lines)


async def wait_until(
    check: Callable[[], Awaitable[bool] | bool],
    what: str,
    *,
    within: float = DEADLINE_SECONDS,
) -> None:
    """Poll ``check`` (plain or async) until it is true; AssertionError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)


async def wait_for(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    *,
    within: float = DEADLINE_SECONDS,
    interval: float = POLL_SECONDS,
) -> T:
    """Poll ``check`` until it returns something truthy (a run, a non-empty list, True),
    and return that; AssertionError with the last value after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within:g} s waiting for {what} (last: {last!r})")


async def wait_for_run(
    stub: OrchestrationServiceAsyncStub,
    run_id: str,
    states: Collection[int] = TERMINAL_RUN_STATES,
    *,
    within: float = DEADLINE_SECONDS,
) -> Run:
    """Poll GetRun until the run is in one of ``states`` (default: any terminal state)."""
    deadline = time.monotonic() + within
    while True:
        run = await get_run(stub, run_id)
        if run.state in states:
            return run
        if time.monotonic() > deadline:
            wanted = ", ".join(_state_name(Run.State, s) for s in states)
            raise AssertionError(f"run not in {{{wanted}}} after {within:g} s:\n{describe(run)}")
        await asyncio.sleep(POLL_SECONDS)


async def wait_for_step(
    stub: OrchestrationServiceAsyncStub,
    run_id: str,
    step_id: str,
    states: Collection[int],
    *,
    within: float = DEADLINE_SECONDS,
) -> Run:
    """Poll GetRun until step ``step_id`` is in one of ``states``; returns the run."""
    deadline = time.monotonic() + within
    while True:
        run = await get_run(stub, run_id)
        if step_of(run, step_id).state in states:
            return run
        if time.monotonic() > deadline:
            wanted = ", ".join(_state_name(StepRun.State, s) for s in states)
            raise AssertionError(
                f"step {step_id} not in {{{wanted}}} after {within:g} s:\n{describe(run)}"
            )
        await asyncio.sleep(POLL_SECONDS)


async def scheduler_passes(
    stub: OrchestrationServiceAsyncStub, count: int = 2, *, agent: str = "noop"
) -> None:
    """Run ``count`` one-step runs of ``agent`` (inline plans) to success, one after the
    other: the positive signal, instead of a sleep, that something did NOT happen.

    The scheduler claims the oldest queued step first and commits outcomes in order, so
    when the first run succeeds, every outcome of steps running before this call was
    committed (a step it wrongly made runnable is queued by then), and when the second
    succeeds, such a step was claimed before it (its attempt and ``step.started``
    event are recorded).
    """
    for _ in range(count):
        marker = plan([{"id": "marker", "agent": agent, "input": {}}])
        run = await wait_for_run(stub, (await start_run(stub, inline=marker)).run.id)
        assert run.state == Run.STATE_SUCCEEDED, describe(run)


def step_of(run: Run, step_id: str) -> StepRun:
    """The step ``step_id`` of a run read with GetRun."""
    for step in run.steps:
        if step.step_id == step_id:
            return step
    raise AssertionError(f"run {run.id} has no step {step_id!r}: {[s.step_id for s in run.steps]}")


def steps_by_id(run: Run) -> dict[str, StepRun]:
    """The steps of a run by id."""
    return {step.step_id: step for step in run.steps}


def step_states(run: Run) -> dict[str, str]:
    """``{step id: state name}`` of a run, for readable assertion messages."""
    return {s.step_id: _state_name(StepRun.State, s.state) for s in run.steps}


async def all_events(
    stub: OrchestrationServiceAsyncStub, run_id: str, *, page_size: int = 0
) -> list[RunEvent]:
    """The whole event log of a run, following ``next_after_sequence``."""
    events: list[RunEvent] = []
    after = 0
    while True:
        page = await stub.ListRunEvents(
            pb.ListRunEventsRequest(run_id=run_id, after_sequence=after, page_size=page_size)
        )
        events.extend(page.events)
        if not page.next_after_sequence:
            return events
        assert page.next_after_sequence > after, "next_after_sequence must move forward"
        after = page.next_after_sequence


def event_type(event: RunEvent) -> str:
    """``run.created``, ``step.queued``, ... for an event."""
    return _state_name(RunEvent.Type, event.type).removeprefix("TYPE_").lower().replace("_", ".", 1)


def event_summary(events: Iterable[RunEvent]) -> list[tuple[str, str]]:
    """(type, step id) of each event, in order."""
    return [(event_type(e), e.step_id) for e in events]


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
        # The watch hub's own listener (podium_events) and the schedule loop's
        # (podium_schedules) are not the scheduler's.
        " AND query NOT IN ('LISTEN \"podium_events\"', 'LISTEN \"podium_schedules\"')",
        database,
    )
    return [r["pid"] for r in rows]
