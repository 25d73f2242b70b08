"""Validation of sleep and wait_for_event steps (``engine/timers.py`` runs them) and of
a definition's event triggers (``engine/triggers.py``)."""

from __future__ import annotations

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.conditions import check_event_filter
from podium.server.engine.external_events import EVENT_NAME_PATTERN, MAX_EVENT_KEY
from podium.server.engine.references import scan_references
from podium.server.engine.requests import json_violations
from podium.server.engine.validation_fields import FieldChecker

__all__ = ["MAX_WAIT_SECONDS", "TimerStepChecker"]

MAX_WAIT_SECONDS = 365 * 24 * 3600.0
"""The longest sleep and the longest wait_for_event timeout: a year."""

# Fields of a Step that mean nothing for a step that calls no agent: refused, not ignored.
_AGENT_ONLY_FIELDS = ("input", "checkpoint", "caching", "loop")

MAX_TRIGGERS = 16
MAX_PAYLOAD_MATCH_BYTES = 64 * 1024


class TimerStepChecker(FieldChecker):
    """The checks of a sleep or wait_for_event step's own fields."""

    def check_timer_step(self, path: str, step: definition_pb2.Step, target: str) -> None:
        present = {"input": step.HasField("input"), "checkpoint": step.HasField("checkpoint")}
        present["caching"] = step.HasField("caching")
        present["loop"] = step.HasField("loop")  # a loop repeats an agent or skill call
        for name in _AGENT_ONLY_FIELDS:
            if present[name]:
                self.add(
                    f"{path}.{name}",
                    f"a {target} step calls no agent: {name} is not allowed",
                    "NOT_ALLOWED",
                )
        if step.timeout_seconds:
            hint = (
                "use wait_for_event.timeout_seconds"
                if target == "wait_for_event"
                else "use sleep.seconds"
            )
            self.add(
                f"{path}.timeout_seconds",
                f"a {target} step calls no agent: timeout_seconds is not allowed ({hint})",
                "NOT_ALLOWED",
            )
        if target == "sleep":
            self._check_sleep(f"{path}.sleep", step.sleep)
        else:
            self._check_wait(f"{path}.wait_for_event", step.wait_for_event)

    def _check_sleep(self, path: str, sleep: definition_pb2.SleepStep) -> None:
        which = sleep.WhichOneof("deadline")
        if which is None:
            self.add(path, "set seconds or until", "REQUIRED")
        elif which == "seconds":
            if not 0 < sleep.seconds <= MAX_WAIT_SECONDS:  # also refuses NaN
                self.add(
                    f"{path}.seconds",
                    f"must be more than 0 and at most {MAX_WAIT_SECONDS:.0f} (got {sleep.seconds})",
                    "OUT_OF_RANGE",
                )
        else:
            try:
                sleep.until.ToDatetime()
            except (ValueError, OverflowError):
                self.add(f"{path}.until", "not a valid timestamp", "INVALID_TIMESTAMP")

    def _check_wait(self, path: str, wait: definition_pb2.WaitForEventStep) -> None:
        if not EVENT_NAME_PATTERN.fullmatch(wait.name):
            self.add(
                f"{path}.name",
                "required: 1 to 128 characters of letters, digits and _ . : / -",
                "INVALID_EVENT_NAME",
            )
        if len(wait.key) > MAX_EVENT_KEY:
            self.add(
                f"{path}.key",
                f"at most {MAX_EVENT_KEY} characters (got {len(wait.key)})",
                "TOO_LONG",
            )
        for error in scan_references(wait.key).errors:
            self.add(f"{path}.key", error.message, "MALFORMED_REFERENCE")
        self.check_number(f"{path}.timeout_seconds", wait.timeout_seconds, maximum=MAX_WAIT_SECONDS)
        self.check_enum(
            f"{path}.on_timeout",
            wait.on_timeout,
            definition_pb2.WaitForEventStep.DESCRIPTOR.enum_types_by_name["OnTimeout"],
        )

    def check_triggers(self, definition: definition_pb2.Definition) -> None:
        triggers = definition.triggers
        if not triggers:
            return
        if self.plan:
            self.add(
                "triggers",
                "event triggers start runs of a saved definition: not allowed in an inline plan",
                "NOT_ALLOWED",
            )
            return
        if len(triggers) > MAX_TRIGGERS:
            self.add(
                "triggers", f"at most {MAX_TRIGGERS} triggers (got {len(triggers)})", "TOO_MANY"
            )
            return
        for index, trigger in enumerate(triggers):
            path = f"triggers[{index}]"
            if not EVENT_NAME_PATTERN.fullmatch(trigger.event_name):
                self.add(
                    f"{path}.event_name",
                    "required: 1 to 128 characters of letters, digits and _ . : / -",
                    "INVALID_EVENT_NAME",
                )
            if len(trigger.key) > MAX_EVENT_KEY:
                self.add(
                    f"{path}.key",
                    f"at most {MAX_EVENT_KEY} characters (got {len(trigger.key)})",
                    "TOO_LONG",
                )
            for problem in check_event_filter(trigger.filter) if trigger.filter else ():
                self.add(f"{path}.filter", problem.describe(), problem.reason)
            size = trigger.payload_match.ByteSize()
            if size > MAX_PAYLOAD_MATCH_BYTES:
                self.add(
                    f"{path}.payload_match",
                    f"{size} bytes serialized; at most {MAX_PAYLOAD_MATCH_BYTES}",
                    "TOO_LARGE",
                )
            else:
                for violation in json_violations(trigger.payload_match, f"{path}.payload_match"):
                    self.add(violation.field, violation.description, "INVALID_VALUE")
