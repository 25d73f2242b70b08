"""Schedule tick arithmetic: cron in a time zone (across DST), intervals, jitter, and
the claim decisions (catch-up and overlap policies), all against an explicit clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from podium.server.engine.schedule_times import (
    Timing,
    cron_error,
    plan_claim,
    time_zone_error,
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_cron_ticks_in_a_time_zone_follow_local_time_across_dst() -> None:
    paris = Timing(schedule_id="s", cron="30 2 * * *", time_zone="Europe/Paris")
    # 2026-03-29: Paris skips 02:00-03:00 (CET -> CEST): the 02:30 tick fires at 03:00.
    first = paris.next_tick(utc(2026, 3, 28, 12, 0))
    assert first == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    second = paris.following(first)
    assert second == utc(2026, 3, 30, 0, 30)  # 02:30 CEST
    # Before the change, 02:30 CET is 01:30 UTC.
    assert paris.next_tick(utc(2026, 3, 26, 12, 0)) == utc(2026, 3, 27, 1, 30)


def test_cron_in_a_repeated_hour_fires_once() -> None:
    # 2026-10-25: Paris repeats 02:00-03:00 (CEST -> CET): 02:30 exists twice, fires once.
    paris = Timing(schedule_id="s", cron="30 2 * * *", time_zone="Europe/Paris")
    tick = paris.next_tick(utc(2026, 10, 24, 12, 0))
    after = paris.following(tick)
    assert after - tick >= timedelta(hours=23)
    assert tick.date() == datetime(2026, 10, 25).date()


def test_utc_cron_and_interval_ticks() -> None:
    hourly = Timing(schedule_id="s", cron="0 * * * *")
    assert hourly.next_tick(utc(2026, 1, 1, 10, 0)) == utc(2026, 1, 1, 11, 0)
    every = Timing(schedule_id="s", interval_seconds=90)
    assert every.next_tick(utc(2026, 1, 1)) == utc(2026, 1, 1, 0, 1, 30)
    # The phase of a past tick is kept when jumping over a gap.
    assert every.next_tick_from(utc(2026, 1, 1), utc(2026, 1, 1, 0, 10)) == utc(
        2026, 1, 1, 0, 10, 30
    )


def test_jitter_is_deterministic_and_bounded() -> None:
    timing = Timing(schedule_id="abc", interval_seconds=60, jitter_seconds=10)
    tick = utc(2026, 1, 1)
    fire = timing.fire_time(tick)
    assert fire == Timing(schedule_id="abc", interval_seconds=60, jitter_seconds=10).fire_time(tick)
    assert tick <= fire < tick + timedelta(seconds=10)
    assert Timing(schedule_id="abc", interval_seconds=60).fire_time(tick) == tick


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("* * *", "five fields"),
        ("61 * * * *", "invalid cron expression"),
        ("0 0 30 2 *", "invalid cron expression"),
    ],
)
def test_cron_errors(expression: str, problem: str) -> None:
    found = cron_error(expression)
    assert found is not None and problem in found
    assert cron_error("*/5 9-17 * * MON-FRI") is None


def test_time_zone_errors() -> None:
    assert time_zone_error("Europe/Paris") is None
    found = time_zone_error("Mars/Olympus")
    assert found is not None and "unknown time zone" in found


def claim(now: datetime, **overrides: object) -> object:
    values: dict[str, object] = {
        "next_tick": utc(2026, 1, 1, 0, 0),
        "buffered": None,
        "previous_run_active": False,
        "overlap_policy": "skip",
        "catch_up_policy": "skip",
        "max_catch_up_runs": 3,
        "now": now,
        "misfire_grace_seconds": 5.0,
        **overrides,
    }
    return plan_claim(Timing(schedule_id="s", interval_seconds=60), **values)  # type: ignore[arg-type]


def test_an_on_time_tick_fires_once_and_moves_on() -> None:
    plan = claim(utc(2026, 1, 1, 0, 0, 1))
    assert plan.fire == [utc(2026, 1, 1, 0, 0)]  # type: ignore[attr-defined]
    assert plan.next_tick == utc(2026, 1, 1, 0, 1)  # type: ignore[attr-defined]


def test_nothing_is_due_before_the_tick_even_when_the_clock_went_back() -> None:
    plan = claim(utc(2025, 12, 31, 23, 0))
    assert plan.fire == []  # type: ignore[attr-defined]
    assert plan.next_tick == utc(2026, 1, 1, 0, 0)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("policy", "fired"),
    [
        ("skip", []),
        ("run_once", [utc(2026, 1, 1, 0, 10)]),
        ("run_all", [utc(2026, 1, 1, 0, 8), utc(2026, 1, 1, 0, 9), utc(2026, 1, 1, 0, 10)]),
    ],
)
def test_catch_up_after_a_downtime(policy: str, fired: list[datetime]) -> None:
    # Down from before 00:00 until 00:10:30: ticks 00:00 .. 00:10 were missed.
    plan = claim(utc(2026, 1, 1, 0, 10, 30), catch_up_policy=policy, overlap_policy="allow")
    assert plan.fire == fired  # type: ignore[attr-defined]
    assert plan.next_tick == utc(2026, 1, 1, 0, 11)  # type: ignore[attr-defined]
    assert plan.missed == 11  # type: ignore[attr-defined]


def test_a_clock_jump_of_years_does_not_walk_every_tick() -> None:
    plan = claim(utc(2036, 1, 1, 0, 0, 30), catch_up_policy="run_all", overlap_policy="allow")
    assert len(plan.fire) == 3  # type: ignore[attr-defined]
    assert plan.next_tick == utc(2036, 1, 1, 0, 1)  # type: ignore[attr-defined]


def test_overlap_policies() -> None:
    now = utc(2026, 1, 1, 0, 0, 1)
    assert claim(now, previous_run_active=True).fire == []  # type: ignore[attr-defined]
    buffered = claim(now, previous_run_active=True, overlap_policy="buffer_one")
    assert buffered.fire == []  # type: ignore[attr-defined]
    assert buffered.buffered == utc(2026, 1, 1, 0, 0)  # type: ignore[attr-defined]
    allowed = claim(now, previous_run_active=True, overlap_policy="allow")
    assert allowed.fire == [utc(2026, 1, 1, 0, 0)]  # type: ignore[attr-defined]
    # The buffered tick fires once the previous run ended; a second tick is buffered then.
    later = claim(
        utc(2026, 1, 1, 0, 1, 1),
        next_tick=utc(2026, 1, 1, 0, 1),
        buffered=utc(2026, 1, 1, 0, 0),
        overlap_policy="buffer_one",
    )
    assert later.fire == [utc(2026, 1, 1, 0, 0)]  # type: ignore[attr-defined]
    assert later.buffered == utc(2026, 1, 1, 0, 1)  # type: ignore[attr-defined]
