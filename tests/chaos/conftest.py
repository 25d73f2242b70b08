"""Collects the chaos scenarios' outcomes and prints them as one table at the end of
the session (``make chaos``; under pytest-xdist each worker keeps its own rows)."""

from __future__ import annotations

import pytest

from tests.chaos.harness import Outcome

OUTCOMES: list[Outcome] = []

COLUMNS = (
    ("scenario", 22),
    ("runs", 5),
    ("succeeded", 9),
    ("lost/stuck", 10),
    ("done twice", 10),
    ("event gaps", 10),
    ("re-executed", 11),
    ("stall s", 7),
)


def _row(outcome: Outcome) -> str:
    stall = "-" if outcome.stall_seconds is None else f"{outcome.stall_seconds:.2f}"
    scenario = outcome.scenario
    if outcome.poison_failed is not None:
        scenario += " (failed)" if outcome.poison_failed else " (NOT failed)"
    values = (
        scenario,
        outcome.runs,
        outcome.succeeded,
        outcome.lost_or_stuck,
        outcome.completed_twice,
        outcome.event_gaps,
        outcome.re_executed,
        stall,
    )
    return "  ".join(
        str(v).rjust(w) if i else str(v).ljust(w)
        for i, (v, (_, w)) in enumerate(zip(values, COLUMNS, strict=True))
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    terminalreporter.section("chaos")
    header = "  ".join(n.rjust(w) if i else n.ljust(w) for i, (n, w) in enumerate(COLUMNS))
    terminalreporter.write_line(header)
    for outcome in OUTCOMES:
        terminalreporter.write_line(_row(outcome))
