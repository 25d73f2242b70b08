"""Tick arithmetic of schedules, free of I/O: next ticks (cron in a time zone, or an
interval), deterministic jitter, and what a claimed tick does (:func:`plan_claim`).

Every decision takes the database's ``now`` as an argument: a replica's own clock is
never used to decide whether a tick is due, so replicas with skewed clocks agree, and
a tick is never fired twice because ``next_tick`` only moves forward.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = [
    "MAX_DUE_TICKS",
    "ClaimPlan",
    "Timing",
    "cron_error",
    "plan_claim",
    "time_zone_error",
]

MAX_DUE_TICKS = 1000
"""At most this many past ticks are walked one by one after a downtime; beyond that the
schedule jumps to its first tick after now (older ticks count as missed and dropped)."""


def cron_error(expression: str) -> str | None:
    """Why ``expression`` is not a valid five-field cron expression, None when it is."""
    if len(expression.split()) != 5:
        return "a cron expression has five fields: minute hour day-of-month month day-of-week"
    try:
        next(CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC)))
    except CronSimError as exc:
        return f"invalid cron expression: {exc}"
    except StopIteration:
        return "the cron expression never matches"
    return None


def time_zone_error(name: str) -> str | None:
    """Why ``name`` is not a known IANA time zone, None when it is."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')"
    return None


@dataclass(frozen=True)
class Timing:
    """When a schedule ticks: ``cron`` in ``time_zone``, or every ``interval_seconds``;
    each tick fires ``jitter_seconds`` * (a per-tick fraction in [0, 1)) later."""

    schedule_id: str
    cron: str | None = None
    time_zone: str = "UTC"
    interval_seconds: float | None = None
    jitter_seconds: float = 0.0

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (aware, UTC).

        Interval ticks are ``after`` + one interval; use :meth:`next_tick_from` to keep
        the phase of a previous tick. Cron ticks follow Debian's cron across DST
        transitions (a tick in a skipped hour fires at the hour after; a tick in a
        repeated hour fires once).
        """
        if self.interval_seconds is not None:
            return after + timedelta(seconds=self.interval_seconds)
        assert self.cron is not None
        zone = ZoneInfo(self.time_zone)
        local = after.astimezone(zone)
        try:
            found = next(CronSim(self.cron, local))
        except StopIteration:
            # No match in the next 50 years: never (far future).
            return datetime.max.replace(tzinfo=UTC) - timedelta(days=1)
        return found.astimezone(UTC)

    def next_tick_from(self, tick: datetime, after: datetime) -> datetime:
        """The first tick strictly after ``after``, in the phase of ``tick`` (a past
        tick of this schedule)."""
        if self.interval_seconds is not None:
            if after < tick:
                return tick
            step = timedelta(seconds=self.interval_seconds)
            count = math.floor((after - tick) / step) + 1
            return tick + step * count
        return self.next_tick(after)

    def following(self, tick: datetime) -> datetime:
        """The tick after ``tick``."""
        return self.next_tick(tick)

    def fire_time(self, tick: datetime) -> datetime:
        """When ``tick`` fires: the tick plus its jitter (the same on every replica)."""
        if self.jitter_seconds <= 0:
            return tick
        digest = hashlib.sha256(f"{self.schedule_id}:{tick.isoformat()}".encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2.0**64
        return tick + timedelta(seconds=self.jitter_seconds * fraction)

    def upcoming(self, tick: datetime, count: int) -> list[datetime]:
        """Fire times of ``tick`` and the ``count - 1`` ticks after it."""
        times = []
        for _ in range(count):
            times.append(self.fire_time(tick))
            tick = self.following(tick)
        return times


@dataclass
class ClaimPlan:
    """What a claimed schedule does now: start a run per tick of ``fire`` (oldest
    first), keep ``buffered`` as its buffered tick, and wait for ``next_tick``."""

    fire: list[datetime] = field(default_factory=list)
    buffered: datetime | None = None
    next_tick: datetime | None = None
    missed: int = 0
    skipped_overlap: int = 0


def plan_claim(
    timing: Timing,
    *,
    next_tick: datetime,
    buffered: datetime | None,
    previous_run_active: bool,
    overlap_policy: str,
    catch_up_policy: str,
    max_catch_up_runs: int,
    now: datetime,
    misfire_grace_seconds: float,
) -> ClaimPlan:
    """Decide what a schedule does when claimed at the database time ``now``.

    The due ticks are those whose fire time is <= ``now``. The latest one is on time
    when it is at most ``misfire_grace_seconds`` late; the others (a later tick is
    already due) and a late latest one are missed, and the catch-up policy decides:
    ``skip`` fires only an on-time tick, ``run_once`` fires the latest due tick once
    for all, ``run_all`` fires each due tick (the ``max_catch_up_runs`` most recent).
    Then the overlap policy applies to each tick to fire, in order: while a run of
    the schedule is active (the previous one, or one just fired), ``skip`` drops the
    tick, ``buffer_one`` keeps it as the buffered tick (if none is kept yet) and
    ``allow`` fires it. A buffered tick fires first, once no run is active.
    """
    plan = ClaimPlan(buffered=buffered)
    due: list[datetime] = []
    tick = next_tick
    while timing.fire_time(tick) <= now and len(due) < MAX_DUE_TICKS:
        due.append(tick)
        tick = timing.following(tick)
    if timing.fire_time(tick) <= now:
        # Too many ticks passed: go on from the first tick after now.
        tick = timing.next_tick_from(tick, now)
        while timing.fire_time(tick) <= now:
            tick = timing.following(tick)
    plan.next_tick = tick

    candidates: list[datetime] = []
    if due:
        latest = due[-1]
        late = (now - timing.fire_time(latest)).total_seconds()
        on_time = late <= misfire_grace_seconds
        plan.missed = len(due) - (1 if on_time else 0)
        if catch_up_policy == "run_all":
            candidates = due[-max(1, max_catch_up_runs) :]
        elif catch_up_policy == "run_once" or on_time:
            candidates = [latest]

    active = previous_run_active
    if plan.buffered is not None and not active:
        plan.fire.append(plan.buffered)
        plan.buffered = None
        active = True
    for candidate in candidates:
        if not active or overlap_policy == "allow":
            plan.fire.append(candidate)
            active = True
        elif overlap_policy == "buffer_one" and plan.buffered is None:
            plan.buffered = candidate
        else:
            plan.skipped_overlap += 1
    return plan
