"""Schedules: CreateSchedule / GetSchedule / ListSchedules / PauseSchedule /
ResumeSchedule / DeleteSchedule, and the claim of due ticks (:meth:`fire_due`), which
the schedule loop (``engine/schedule_loop.py``) calls on every replica.

A tick's run has ``request_id`` ``schedule:<schedule id>:<tick>``: the claim inserts it
in the transaction that moves the schedule past the tick, and a replayed tick finds the
existing run instead of starting a second one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf import json_format

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import schedule_pb2
from podium.server.engine.errors import (
    EngineError,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from podium.server.engine.paging import bounded_keyset_page, decode_keyset, page_size
from podium.server.engine.references import normalize_numbers
from podium.server.engine.requests import struct_violations
from podium.server.engine.runs import MAX_LABELS, RunService
from podium.server.engine.schedule_times import (
    ClaimPlan,
    Timing,
    cron_error,
    plan_claim,
    time_zone_error,
)
from podium.server.engine.sizes import DEFAULT_MAX_RESPONSE_BYTES
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.runs import NewRun
from podium.server.storage.schedules import (
    NewSchedule,
    ScheduleRow,
    SchedulesRepository,
    TickRuns,
)

__all__ = ["SCHEDULE_LABEL", "ScheduleService", "tick_request_id"]

log = logging.getLogger("podium.schedules")

SCHEDULE_LABEL = "podium.schedule_id"
"""Label carried by every run a schedule starts: its schedule's id."""

MIN_INTERVAL_SECONDS = 1.0
MAX_INTERVAL_SECONDS = 366 * 86400.0
MAX_JITTER_SECONDS = 3600.0
MAX_CATCH_UP_RUNS = 100
DEFAULT_CATCH_UP_RUNS = 10
UPCOMING = 5

_OVERLAP = {
    schedule_pb2.Schedule.OVERLAP_POLICY_UNSPECIFIED: "skip",
    schedule_pb2.Schedule.OVERLAP_POLICY_SKIP: "skip",
    schedule_pb2.Schedule.OVERLAP_POLICY_BUFFER_ONE: "buffer_one",
    schedule_pb2.Schedule.OVERLAP_POLICY_ALLOW: "allow",
}
_OVERLAP_PROTO = {
    "skip": schedule_pb2.Schedule.OVERLAP_POLICY_SKIP,
    "buffer_one": schedule_pb2.Schedule.OVERLAP_POLICY_BUFFER_ONE,
    "allow": schedule_pb2.Schedule.OVERLAP_POLICY_ALLOW,
}
_CATCH_UP = {
    schedule_pb2.Schedule.CATCH_UP_POLICY_UNSPECIFIED: "skip",
    schedule_pb2.Schedule.CATCH_UP_POLICY_SKIP: "skip",
    schedule_pb2.Schedule.CATCH_UP_POLICY_RUN_ONCE: "run_once",
    schedule_pb2.Schedule.CATCH_UP_POLICY_RUN_ALL: "run_all",
}
_CATCH_UP_PROTO = {
    "skip": schedule_pb2.Schedule.CATCH_UP_POLICY_SKIP,
    "run_once": schedule_pb2.Schedule.CATCH_UP_POLICY_RUN_ONCE,
    "run_all": schedule_pb2.Schedule.CATCH_UP_POLICY_RUN_ALL,
}


def tick_request_id(schedule_id: uuid.UUID, tick: datetime) -> str:
    """The idempotency key of the run of a schedule's tick."""
    return f"schedule:{schedule_id}:{tick.astimezone(UTC).isoformat()}"


def timing_of(row: ScheduleRow) -> Timing:
    return Timing(
        schedule_id=str(row.id),
        cron=row.cron,
        time_zone=row.time_zone,
        interval_seconds=row.interval_seconds,
        jitter_seconds=row.jitter_seconds,
    )


def schedule_to_proto(row: ScheduleRow) -> schedule_pb2.Schedule:
    timing = timing_of(row)
    out = schedule_pb2.Schedule(
        id=str(row.id),
        definition_name=row.definition_name,
        definition_version=row.definition_version,
        time_zone=row.time_zone if row.cron is not None else "",
        jitter_seconds=row.jitter_seconds,
        overlap_policy=_OVERLAP_PROTO[row.overlap_policy],
        catch_up_policy=_CATCH_UP_PROTO[row.catch_up_policy],
        max_catch_up_runs=row.max_catch_up_runs,
        labels=row.labels,
        paused=row.paused,
        last_run_id=str(row.last_run_id) if row.last_run_id else "",
        runs_started=row.runs_started,
        tick_buffered=row.buffered_tick_at is not None,
    )
    if row.cron is not None:
        out.cron = row.cron
    else:
        assert row.interval_seconds is not None
        out.interval_seconds = row.interval_seconds
    json_format.ParseDict(row.input, out.input)
    if not row.paused:
        out.next_fire_time.FromDatetime(row.next_fire_at)
        for when in timing.upcoming(row.next_tick_at, UPCOMING):
            out.upcoming_fire_times.add().FromDatetime(when)
    if row.last_fire_at is not None:
        out.last_fire_time.FromDatetime(row.last_fire_at)
    out.create_time.FromDatetime(row.created_at)
    out.update_time.FromDatetime(row.updated_at)
    return out


def _violations(schedule: schedule_pb2.Schedule) -> list[FieldViolation]:
    found: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        found.append(FieldViolation(field=f"schedule.{field}", description=description))

    if not schedule.definition_name:
        bad("definition_name", "required: the saved definition to run")
    if schedule.definition_version < 0:
        bad("definition_version", "must be >= 0 (0: the latest version)")
    spec = schedule.WhichOneof("spec")
    if spec is None:
        bad("cron", "set `cron` (with an optional `time_zone`) or `interval_seconds`")
    elif spec == "cron":
        problem = cron_error(schedule.cron)
        if problem:
            bad("cron", problem)
        if schedule.time_zone:
            problem = time_zone_error(schedule.time_zone)
            if problem:
                bad("time_zone", problem)
    else:
        if not MIN_INTERVAL_SECONDS <= schedule.interval_seconds <= MAX_INTERVAL_SECONDS:
            bad(
                "interval_seconds",
                f"must be between {MIN_INTERVAL_SECONDS:g} and {MAX_INTERVAL_SECONDS:g} seconds",
            )
        if schedule.time_zone:
            bad("time_zone", "applies to `cron` only")
    if not 0 <= schedule.jitter_seconds <= MAX_JITTER_SECONDS:
        bad("jitter_seconds", f"must be between 0 and {MAX_JITTER_SECONDS:g}")
    if schedule.overlap_policy not in _OVERLAP:
        bad("overlap_policy", "unknown overlap policy")
    if schedule.catch_up_policy not in _CATCH_UP:
        bad("catch_up_policy", "unknown catch-up policy")
    if not 0 <= schedule.max_catch_up_runs <= MAX_CATCH_UP_RUNS:
        bad("max_catch_up_runs", f"must be between 0 and {MAX_CATCH_UP_RUNS}")
    if len(schedule.labels) > MAX_LABELS:
        bad("labels", f"at most {MAX_LABELS} labels")
    if SCHEDULE_LABEL in schedule.labels:
        bad(f"labels[{SCHEDULE_LABEL}]", "set by the server")
    found.extend(struct_violations(schedule.input, "schedule.input"))
    return found


def _parse_id(schedule_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(schedule_id)
    except ValueError:
        raise InvalidArgument(
            f"schedule_id must be a schedule id (a UUID), got {schedule_id!r}",
            violations=[FieldViolation(field="schedule_id", description="must be a UUID")],
        ) from None


def _not_found(schedule_id: str) -> NotFound:
    return NotFound(
        f"schedule {schedule_id} not found",
        reason="SCHEDULE_NOT_FOUND",
        metadata={"schedule_id": schedule_id},
    )


class ScheduleService:
    """Use cases behind the Schedule RPCs, and the tick claims of the schedule loop."""

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    """What one page may take (``sizes.response_budget``; the engine sets it)."""

    def __init__(
        self, repository: SchedulesRepository, runs: RunService, misfire_grace_seconds: float
    ) -> None:
        self._repository = repository
        self._runs = runs
        self.misfire_grace_seconds = misfire_grace_seconds
        self.fired_total = 0

    @property
    def repository(self) -> SchedulesRepository:
        return self._repository

    async def create(
        self, organization_id: str, schedule: schedule_pb2.Schedule
    ) -> schedule_pb2.Schedule:
        """CreateSchedule: validate, check the definition exists, store with its first
        tick (the next cron match, or one interval after now)."""
        violations = _violations(schedule)
        if violations:
            raise InvalidArgument(
                f"schedule is invalid: {len(violations)} problem(s)", violations=violations
            )
        try:
            # The schedule's input: a definition's concurrency key must resolve in it.
            await self._runs.scheduled_run(
                organization_id,
                (schedule.definition_name, schedule.definition_version),
                normalize_numbers(json_format.MessageToDict(schedule.input)),
                {},
                "",
            )
        except InvalidArgument as exc:
            raise InvalidArgument(
                "the schedule's input lacks the definition's concurrency key",
                violations=[
                    FieldViolation(field=f"schedule.{v.field}", description=v.description)
                    for v in exc.violations
                ],
            ) from None
        except NotFound:
            raise InvalidArgument(
                f"definition {schedule.definition_name!r} "
                f"(version {schedule.definition_version or 'latest'}) not found",
                reason="DEFINITION_NOT_FOUND",
                violations=[
                    FieldViolation(
                        field="schedule.definition_name", description="no such definition"
                    )
                ],
            ) from None
        is_cron = schedule.WhichOneof("spec") == "cron"
        time_zone = (schedule.time_zone or "UTC") if is_cron else "UTC"
        async with storage_errors():
            now = await self._repository.now()
        timing = Timing(
            schedule_id="",
            cron=schedule.cron if is_cron else None,
            time_zone=time_zone,
            interval_seconds=None if is_cron else schedule.interval_seconds,
        )
        first = timing.next_tick(now)
        schedule_id = uuid.uuid4()
        jittered = Timing(
            schedule_id=str(schedule_id),
            interval_seconds=1.0,
            jitter_seconds=schedule.jitter_seconds,
        )
        new = NewSchedule(
            id=schedule_id,
            organization_id=organization_id,
            definition_name=schedule.definition_name,
            definition_version=schedule.definition_version,
            cron=timing.cron,
            time_zone=time_zone,
            interval_seconds=timing.interval_seconds,
            jitter_seconds=schedule.jitter_seconds,
            overlap_policy=_OVERLAP[schedule.overlap_policy],
            catch_up_policy=_CATCH_UP[schedule.catch_up_policy],
            max_catch_up_runs=schedule.max_catch_up_runs or DEFAULT_CATCH_UP_RUNS,
            input=normalize_numbers(json_format.MessageToDict(schedule.input)),
            labels=dict(schedule.labels),
            next_tick_at=first,
            next_fire_at=jittered.fire_time(first),
        )
        async with storage_errors():
            row = await self._repository.insert(new)
        return schedule_to_proto(row)

    async def get(self, organization_id: str, schedule_id: str) -> schedule_pb2.Schedule:
        async with storage_errors():
            row = await self._repository.get(organization_id, _parse_id(schedule_id))
        if row is None:
            raise _not_found(schedule_id)
        return schedule_to_proto(row)

    async def list_page(
        self, organization_id: str, request: pb.ListSchedulesRequest
    ) -> tuple[list[schedule_pb2.Schedule], str]:
        size = page_size(request.page_size)
        filters = {"definition": request.definition_name}
        after = decode_keyset(request.page_token, filters)
        async with storage_errors():
            rows = await self._repository.list_page(
                organization_id,
                definition_name=request.definition_name or None,
                after=after,
                limit=size + 1,
            )
        return bounded_keyset_page(rows, size, filters, schedule_to_proto, self.max_response_bytes)

    async def pause(self, organization_id: str, schedule_id: str) -> schedule_pb2.Schedule:
        """PauseSchedule (pausing a paused schedule changes nothing); a buffered tick is
        dropped."""

        def position(row: ScheduleRow, _now: datetime) -> tuple[datetime, datetime]:
            return row.next_tick_at, row.next_fire_at

        return await self._set_paused(organization_id, schedule_id, True, position)

    async def resume(self, organization_id: str, schedule_id: str) -> schedule_pb2.Schedule:
        """ResumeSchedule: fire from the first tick after now (ticks during the pause are
        not caught up); resuming an active schedule changes nothing."""

        def position(row: ScheduleRow, now: datetime) -> tuple[datetime, datetime]:
            if not row.paused:
                return row.next_tick_at, row.next_fire_at
            timing = timing_of(row)
            tick = timing.next_tick_from(row.next_tick_at, now)
            return tick, timing.fire_time(tick)

        return await self._set_paused(organization_id, schedule_id, False, position)

    async def _set_paused(
        self,
        organization_id: str,
        schedule_id: str,
        paused: bool,
        position: Callable[[ScheduleRow, datetime], tuple[datetime, datetime]],
    ) -> schedule_pb2.Schedule:
        sid = _parse_id(schedule_id)
        async with storage_errors():
            row = await self._repository.set_paused(organization_id, sid, paused, position)
        if row is None:
            raise _not_found(schedule_id)
        return schedule_to_proto(row)

    async def delete(self, organization_id: str, schedule_id: str) -> None:
        async with storage_errors():
            found = await self._repository.delete(organization_id, _parse_id(schedule_id))
        if not found:
            raise _not_found(schedule_id)

    # -- ticks -----------------------------------------------------------------------

    async def fire_due(self, limit: int = 100) -> list[uuid.UUID]:
        """Claim every due schedule this replica can lock and start its tick's runs.
        Returns the ids of the runs started."""
        started: list[uuid.UUID] = []
        for schedule_id in await self._repository.due(limit):
            result = await self._repository.claim(schedule_id, self._decide)
            started.extend(result.run_ids)
        self.fired_total += len(started)
        return started

    async def _decide(self, row: ScheduleRow, now: datetime, active: bool) -> TickRuns | None:
        timing = timing_of(row)
        plan: ClaimPlan = plan_claim(
            timing,
            next_tick=row.next_tick_at,
            buffered=row.buffered_tick_at,
            previous_run_active=active,
            overlap_policy=row.overlap_policy,
            catch_up_policy=row.catch_up_policy,
            max_catch_up_runs=row.max_catch_up_runs,
            now=now,
            misfire_grace_seconds=self.misfire_grace_seconds,
        )
        assert plan.next_tick is not None
        if not plan.fire and plan.next_tick == row.next_tick_at:
            if plan.buffered == row.buffered_tick_at:
                return None  # nothing due (another replica moved it, or still buffered)
        runs: list[tuple[datetime, NewRun]] = []
        for tick in plan.fire:
            try:
                run = await self._runs.scheduled_run(
                    row.organization_id,
                    (row.definition_name, row.definition_version),
                    dict(row.input),
                    {**row.labels, SCHEDULE_LABEL: str(row.id)},
                    tick_request_id(row.id, tick),
                )
            except EngineError as exc:
                # The definition is gone or archived: the tick is dropped, the schedule
                # goes on (the next tick may find it restored).
                log.warning(
                    "schedule tick dropped",
                    extra={"schedule_id": str(row.id), "tick": tick.isoformat(), "error": str(exc)},
                )
                continue
            runs.append((tick, run))
        if plan.missed or plan.skipped_overlap:
            log.info(
                "schedule ticks not run",
                extra={
                    "schedule_id": str(row.id),
                    "missed": plan.missed,
                    "skipped_overlap": plan.skipped_overlap,
                },
            )
        return TickRuns(
            runs=runs,
            next_tick_at=plan.next_tick,
            next_fire_at=timing.fire_time(plan.next_tick),
            buffered_tick_at=plan.buffered,
        )
