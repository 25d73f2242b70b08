"""The live view of ``podium runs start --watch`` (and ``podium runs watch``), with rich.

A table of the run's steps (state, attempt, duration, agent, detail), a progress bar of
finished steps, and the agents' streamed output printed above them line by line. In a
terminal the view refreshes in place; otherwise (a pipe, a file, CI) rich prints the
output lines as they come and the final view once, without control codes.

Human moments are also printed as lines above the view, so a log shows them in order
and gives the command that answers them: a step awaiting an approval (checkpoint,
failure review) or an answer (an A2A agent's question), a decision, a run resumed
(ResumeRun) or continued with more input (ContinueRun).

The view is built from the run's events only (plus one GetRun for the step list), so
replaying a finished run draws the same picture as watching it live.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from podium.client.common import to_dict
from podium.orchestration.v1 import event_pb2, run_pb2

__all__ = ["RunView", "state_name"]

RunEvent = event_pb2.RunEvent
StepRun = run_pb2.StepRun

_FINISHED_STEP_STATES = frozenset(
    {
        StepRun.STATE_SUCCEEDED,
        StepRun.STATE_FAILED,
        StepRun.STATE_SKIPPED,
        StepRun.STATE_CANCELLED,
    }
)
_STYLES = {
    "SUCCEEDED": "green",
    "FAILED": "bold red",
    "CANCELLED": "red",
    "SKIPPED": "yellow",
    "RUNNING": "cyan",
    "WAITING_RETRY": "yellow",
    "AWAITING_APPROVAL": "magenta",
    "PAUSED": "magenta",
}


def state_name(state: int, enum: type[run_pb2.Run] | type[StepRun] = run_pb2.Run) -> str:
    """``Run.State`` (or ``StepRun.State``) value as ``SUCCEEDED``."""
    return str(enum.State.Name(state)).removeprefix("STATE_")  # type: ignore[arg-type]


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f"{max(0.0, (end - start).total_seconds()):.1f}s"


@dataclass
class _Step:
    step_id: str
    agent: str
    max_attempts: int
    depends_on: tuple[str, ...] = ()
    state: int = StepRun.STATE_PENDING
    attempt: int = 0
    start: datetime | None = None
    end: datetime | None = None
    detail: str = ""
    cached: bool = False
    pending_output: str = ""
    outputs: list[str] = field(default_factory=list)


class RunView:
    """Renders one run from its events.

    Args:
        run: The run as GetRun returns it (its steps give the rows, in order).
        console: Where output lines and the final summary are printed.
    """

    def __init__(self, run: run_pb2.Run, console: Console) -> None:
        self.run_id = run.id
        self.title = (
            f"{run.definition_name} v{run.definition_version}"
            if run.definition_name
            else "inline plan"
        )
        self.console = console
        self.run_state = run.state
        self._now: datetime | None = None
        self._steps = {
            step.step_id: _Step(step.step_id, step.agent, step.max_attempts, tuple(step.depends_on))
            for step in run.steps
        }

    def apply(self, event: event_pb2.RunEvent) -> None:
        """Update the view with the next event; prints agent output lines as they end."""
        self._now = event.time.ToDatetime()
        if event.run_state:
            self.run_state = event.run_state
        kind = event.type
        data = to_dict(event.data) if event.HasField("data") else {}
        if kind == RunEvent.TYPE_RUN_RESUMED:
            self._resumed()
            previous = data.get("previous_state")
            self._notice(
                None,
                f"resumed (run attempt {data.get('run_attempt', '?')}"
                + (f", was {previous})" if previous else ")"),
            )
            return
        if kind == RunEvent.TYPE_RUN_WAITING_FOR_KEY:
            self._notice(
                None,
                f"waiting for concurrency key {data.get('key')!r} "
                f"({data.get('running', '?')} of {data.get('max_runs_per_key', '?')} running)",
            )
            return
        if kind == RunEvent.TYPE_RUN_ADMITTED:
            self._notice(None, f"admitted by concurrency key {data.get('key')!r}")
            return
        if kind == RunEvent.TYPE_RUN_CONTINUED:
            keys = [str(key) for key in data.get("input_keys") or []]
            self._notice(
                None, "continued " + (f"with input {', '.join(keys)}" if keys else "(no input)")
            )
            return
        step = self._steps.get(event.step_id) if event.step_id else None
        if step is None:
            return
        if event.step_state:
            step.state = event.step_state
        if event.attempt:
            step.attempt = event.attempt
        if kind == RunEvent.TYPE_STEP_STARTED:
            step.start, step.end, step.detail = event.time.ToDatetime(), None, ""
            if isinstance(data.get("agent"), str) and data["agent"]:
                step.agent = data["agent"]
        elif kind == RunEvent.TYPE_STEP_PROGRESS:
            fraction = event.progress.fraction
            step.detail = event.progress.message + (f" {fraction:.0%}" if fraction >= 0 else "")
        elif kind == RunEvent.TYPE_STEP_OUTPUT_CHUNK:
            self._output(step, event.output_chunk.text)
        elif kind == RunEvent.TYPE_STEP_CACHED:
            step.cached = True
        elif kind == RunEvent.TYPE_STEP_RETRYING:
            step.detail = f"retrying after {event.error.code}: {event.error.message}"
        elif kind == RunEvent.TYPE_STEP_AWAITING_APPROVAL:
            self._awaiting(step, event, data)
        elif kind == RunEvent.TYPE_APPROVAL_DECIDED:
            self._decided(step, event, data)
        elif kind == RunEvent.TYPE_STEP_WAITING:
            until = f" until {data['until']}" if data.get("until") else ""
            if data.get("kind") == "wait_for_event":
                event_name, key = data.get("event"), data.get("key")
                step.detail = f"waiting for event {event_name} key {key!r}{until}"
            else:
                step.detail = f"sleeping{until}"
        elif kind == RunEvent.TYPE_EVENT_RECEIVED:
            step.detail = f"event {data.get('event_id')} received"
        if step.state in _FINISHED_STEP_STATES and kind != RunEvent.TYPE_STEP_OUTPUT_CHUNK:
            step.end = event.time.ToDatetime()
            self._flush(step)
            if step.state in (StepRun.STATE_FAILED, StepRun.STATE_SKIPPED) and event.error.code:
                # e.g. CONDITION_FALSE: the step's `when` condition was false
                step.detail = f"{event.error.code}: {event.error.message}"
            elif step.state == StepRun.STATE_SUCCEEDED:
                step.detail = "cached" if step.cached else ""

    def _awaiting(self, step: _Step, event: RunEvent, data: dict[str, Any]) -> None:
        approval_id = event.approval.approval_id
        kind = str(data.get("kind") or "")
        prompt = str(data.get("prompt") or "")
        if kind == "input_required":
            step.detail = f"input required: {prompt}" if prompt else "input required"
            self._notice(
                step.step_id,
                f"input required: {prompt or '(no question)'}  [approval {approval_id}; answer "
                f"with: podium runs continue {self.run_id} --input JSON]",
            )
        elif kind == "failure_review":
            step.detail = f"failure review {approval_id} pending"
            error = f"{event.error.code}: {event.error.message}" if event.error.code else "failed"
            self._notice(
                step.step_id,
                f"{error}  [failure review {approval_id}; decide with: podium approvals "
                f"decide {approval_id} retry|skip|fail]",
            )
        else:
            when = kind.removeprefix("checkpoint_") if kind.startswith("checkpoint_") else ""
            step.detail = f"approval {approval_id} pending"
            self._notice(
                step.step_id,
                f"awaiting approval{f' ({when})' if when else ''}: {prompt or '(no prompt)'}  "
                f"[approval {approval_id}; podium approvals approve|reject {approval_id}]",
            )

    def _decided(self, step: _Step, event: RunEvent, data: dict[str, Any]) -> None:
        decision = event.approval.decision.removeprefix("DECISION_").lower() or "decided"
        actor = event.approval.actor
        comment = data.get("comment")
        if decision == "retry":  # the server gives the step one more attempt
            step.max_attempts = max(step.max_attempts, step.attempt + 1)
        text = "decided " + decision + (f" by {actor}" if actor else "")
        step.detail = text
        if data.get("expired"):
            text += " (expired)"
        if comment:
            text += f": {comment}"
        self._notice(step.step_id, f"approval {event.approval.approval_id} {text}")

    def _resumed(self) -> None:
        """ResumeRun sets the unfinished steps and everything downstream of them back to
        pending (without a step event each)."""
        redo = {s.step_id for s in self._steps.values() if s.state != StepRun.STATE_SUCCEEDED}
        grew = True
        while grew:
            more = {
                s.step_id for s in self._steps.values() if redo.intersection(s.depends_on)
            } - redo
            redo |= more
            grew = bool(more)
        for step_id in redo:
            step = self._steps[step_id]
            self._flush(step)
            step.state = StepRun.STATE_PENDING
            step.start = step.end = None
            step.detail = ""
            step.cached = False
            # Each re-run step gets its full attempts again (exact numbers: sync()).
            step.max_attempts = max(step.max_attempts, step.attempt + 1)

    def _notice(self, step_id: str | None, message: str) -> None:
        prefix = Text(f"{step_id} │ " if step_id else "run │ ", style="dim")
        self.console.print(prefix + Text(message, style="bold"), highlight=False, soft_wrap=True)

    def _output(self, step: _Step, text: str) -> None:
        *lines, step.pending_output = (step.pending_output + text).split("\n")
        for line in lines:
            self._print_output(step, line)

    def _flush(self, step: _Step) -> None:
        if step.pending_output:
            self._print_output(step, step.pending_output)
            step.pending_output = ""

    def _print_output(self, step: _Step, line: str) -> None:
        prefix = Text(f"{step.step_id} │ ", style="dim")
        self.console.print(prefix + Text(line), highlight=False, soft_wrap=True)

    def sync(self, run: run_pb2.Run) -> None:
        """Take the attempt counts of the run as GetRun returns it at the end (a retry
        decision or ResumeRun raises ``max_attempts`` without an event saying by how
        much)."""
        for got in run.steps:
            step = self._steps.get(got.step_id)
            if step is not None:
                step.attempt, step.max_attempts = got.attempt, got.max_attempts

    def tick(self, now: datetime) -> None:
        """Set the time running steps' durations are counted to (live refresh)."""
        self._now = now

    def __rich__(self) -> RenderableType:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("STEP", "STATE", "ATTEMPT", "DURATION", "AGENT", "DETAIL"):
            table.add_column(column, no_wrap=column != "DETAIL")
        done = 0
        for step in self._steps.values():
            name = state_name(step.state, StepRun)
            finished = step.state in _FINISHED_STEP_STATES
            done += finished
            most = max(step.max_attempts, step.attempt)
            attempts = f"{step.attempt}/{most}" if step.attempt else ""
            end = step.end if finished else self._now
            table.add_row(
                step.step_id,
                Text(name, style=_STYLES.get(name, "")),
                attempts,
                _seconds(step.start, end) if step.start else "",
                step.agent,
                step.detail,
            )
        total = len(self._steps)
        state = state_name(self.run_state)
        header = Text.assemble(
            ("run ", "bold"),
            (self.run_id, "bold"),
            f"  {self.title}  ",
            (state, _STYLES.get(state, "bold")),
        )
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(total, 1), completed=done, width=40), f"{done}/{total} steps"
        )
        return Group(header, table, bar)

    def finish(self, run: run_pb2.Run) -> None:
        """Print the run's outcome after the live view: state, error, output."""
        for step in self._steps.values():
            self._flush(step)
        state = state_name(run.state)
        self.console.print(Text(f"run {state}", style=_STYLES.get(state, "bold")))
        if run.error.code:
            where = f" (step {run.error.step_id})" if run.error.step_id else ""
            self.console.print(f"error{where}: {run.error.code}: {run.error.message}", markup=False)
        if run.HasField("output") and run.output.fields:
            output = json.dumps(to_dict(run.output), indent=2, sort_keys=True)
            self.console.print("output: " + output, markup=False, highlight=False)
