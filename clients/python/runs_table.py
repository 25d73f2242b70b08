"""``podium runs list --watch``: the run list kept current from WatchRuns.

The list is read once (ListRuns, with the command's filters), then every event of the
organization's runs (WatchRuns from just before that read, so nothing is missed)
updates its row: state, last event, and new runs at the top. In a terminal the table
refreshes in place; elsewhere (a pipe, a file) each change is printed as a line. With
``-o json`` each event is a JSON line ``{"event": {...}}``. It runs until interrupted.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime

from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from podium.client.cli_output import EXIT_OK, event_kind, labels_arg, print_item
from podium.client.client import PodiumClient
from podium.client.run_view import state_name
from podium.orchestration.v1 import event_pb2, run_pb2

__all__ = ["RunsTable", "follow_runs"]

_STYLES = {
    "SUCCEEDED": "green",
    "FAILED": "bold red",
    "CANCELLED": "red",
    "RUNNING": "cyan",
    "PAUSED": "magenta",
}


@dataclass
class _Row:
    run_id: str
    state: int
    created: datetime | None
    definition: str
    last_event: str = ""


class RunsTable:
    """The rows of the watched list, newest first, at most ``limit``.

    Args:
        runs: The runs ListRuns returned (newest first).
        limit: Rows kept; older runs drop off the bottom as new ones start.
        states: Only runs in these states are shown (empty: all), as ``Run.State`` values.
        definition: Only runs of this definition (empty: all).
    """

    def __init__(
        self,
        runs: list[run_pb2.Run],
        *,
        limit: int,
        states: frozenset[int] = frozenset(),
        definition: str = "",
    ) -> None:
        self.limit = limit
        self.states = states
        self.definition = definition
        self.rows: dict[str, _Row] = {}
        for run in runs:
            created = run.create_time.ToDatetime() if run.HasField("create_time") else None
            self.rows[run.id] = _Row(
                run.id, run.state, created, run.definition_name or "(inline plan)"
            )

    def apply(self, event: event_pb2.RunEvent) -> _Row | None:
        """Update the table with an event; returns the row when it changed."""
        if self.definition and event.definition_name != self.definition:
            return None
        row = self.rows.get(event.run_id)
        if row is None:
            row = _Row(
                event.run_id,
                event.run_state,
                event.time.ToDatetime(),
                event.definition_name or "(inline plan)",
            )
            self.rows = {row.run_id: row, **self.rows}
        if event.run_state:
            row.state = event.run_state
        row.last_event = event_kind(event) + (f" {event.step_id}" if event.step_id else "")
        while len(self.rows) > self.limit:
            self.rows.pop(next(reversed(self.rows)))
        return row if self.shown(row) else None

    def shown(self, row: _Row) -> bool:
        return not self.states or row.state in self.states

    @staticmethod
    def line(row: _Row) -> str:
        created = row.created.isoformat(timespec="seconds") if row.created else ""
        state = state_name(row.state) if row.state else ""
        return f"{row.run_id}  {state:<10} {created}  {row.definition}  {row.last_event}".rstrip()

    def __rich__(self) -> RenderableType:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("RUN", "STATE", "CREATED", "DEFINITION", "LAST EVENT"):
            table.add_column(column, no_wrap=True)
        for row in self.rows.values():
            if not self.shown(row):
                continue
            state = state_name(row.state) if row.state else ""
            table.add_row(
                row.run_id,
                Text(state, style=_STYLES.get(state, "")),
                row.created.isoformat(timespec="seconds") if row.created else "",
                row.definition,
                row.last_event,
            )
        return table


async def follow_runs(
    client: PodiumClient, runs: list[run_pb2.Run], args: argparse.Namespace, *, since: float
) -> int:
    """Keep the list of ``runs`` current from WatchRuns events committed after ``since``
    (a POSIX time taken before the list was read). Runs until interrupted."""
    states = frozenset(
        run_pb2.Run.State.Value("STATE_" + s.upper().removeprefix("STATE_"))
        for s in args.state or ()
    )
    events = client.watch_runs(
        definition_name=args.definition or "", labels=labels_arg(args.label), start_time=since
    )
    if args.output != "text":
        for run in runs:
            print_item("run", run, args.output)
        async for event in events:
            print_item("event", event, args.output)
        return EXIT_OK
    table = RunsTable(runs, limit=args.limit, states=states, definition=args.definition or "")
    console = Console(highlight=False)
    if not console.is_terminal:
        for row in table.rows.values():
            if table.shown(row):
                print(RunsTable.line(row), flush=True)
        async for event in events:
            changed = table.apply(event)
            if changed is not None:
                print(RunsTable.line(changed), flush=True)
        return EXIT_OK
    with Live(table, console=console, refresh_per_second=4):
        async for event in events:
            table.apply(event)
    return EXIT_OK
