"""The table of ``podium runs list --watch``, fed events by hand."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from podium.client.runs_table import RunsTable
from podium.orchestration.v1 import event_pb2, run_pb2

Run = run_pb2.Run
RunEvent = event_pb2.RunEvent


def event(
    run_id: str, kind: RunEvent.Type.ValueType, state: Run.State.ValueType, definition: str = "flow"
) -> RunEvent:
    e = RunEvent(run_id=run_id, type=kind, run_state=state, definition_name=definition)
    e.time.FromSeconds(1_700_000_000)
    return e


def render(table: RunsTable) -> str:
    out = StringIO()
    Console(file=out, width=120, no_color=True, force_terminal=False).print(table)
    return out.getvalue()


def test_rows_follow_events_new_runs_on_top_within_the_limit() -> None:
    old = Run(id="old", state=Run.STATE_RUNNING, definition_name="flow")
    table = RunsTable([old], limit=2)
    changed = table.apply(event("old", RunEvent.TYPE_RUN_COMPLETED, Run.STATE_SUCCEEDED))
    assert changed is not None and RunsTable.line(changed).startswith("old  SUCCEEDED")
    table.apply(event("new", RunEvent.TYPE_RUN_CREATED, Run.STATE_CREATED))
    table.apply(event("newer", RunEvent.TYPE_RUN_CREATED, Run.STATE_CREATED))
    assert list(table.rows) == ["newer", "new"]  # the oldest dropped off
    text = render(table)
    assert text.index("newer") < text.index("new ")
    assert "run.created" in text and "CREATED" in text


def test_state_and_definition_filters() -> None:
    table = RunsTable([], limit=10, states=frozenset({Run.STATE_FAILED}), definition="flow")
    assert table.apply(event("a", RunEvent.TYPE_RUN_STARTED, Run.STATE_RUNNING)) is None
    assert table.apply(event("b", RunEvent.TYPE_RUN_STARTED, Run.STATE_RUNNING, "x")) is None
    failed = table.apply(event("a", RunEvent.TYPE_RUN_FAILED, Run.STATE_FAILED))
    assert failed is not None and failed.state == Run.STATE_FAILED
    assert "b" not in table.rows
    assert "a" in render(table)
