"""Sleep and wait_for_event steps: what the executor does with them once claimed.

Neither calls an agent, and neither keeps its claim while it waits: the SQL parks the
step (``functions/80_events_in.sql``: state ``waiting_retry`` with ``next_attempt_at``
its deadline, the claim's attempt number given back, no lease) and the claim's due-retry
path hands it to a replica again when the deadline passes, or at once when SendEvent
delivered an event to it. Nothing sleeps in memory, so a restart keeps every timer.

On each claim: a sleep step whose deadline passed succeeds with ``{"slept_until": t}``;
a wait_for_event step succeeds with the event delivered to it (or one kept from before
it started waiting), or applies ``on_timeout`` once its deadline passed
(``EVENT_TIMEOUT``: fail, continue with ``{"timed_out": true}``, or skip).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from podium.server.engine.outcomes import OutcomePolicy
from podium.server.engine.references import MissingReferenceError, resolve
from podium.server.storage.external_events import ExternalEventsRepository, TimerKey
from podium.server.storage.runs import ClaimedStep, StepOutcome
from podium.server.storage.steps import OnTimeout, Outcome, StepError
from podium.server.telemetry.metrics import Metrics

__all__ = ["TimerSteps", "event_key_text", "is_timer_step"]

TIMEOUT_CODE = "EVENT_TIMEOUT"


def is_timer_step(step: ClaimedStep) -> bool:
    """Whether the step is a sleep or a wait_for_event step."""
    return step.spec.sleep is not None or step.spec.wait_for_event is not None


def event_key_text(value: Any) -> str:
    """A resolved correlation key as the text events are matched on: strings as they are,
    whole numbers without a fraction, other numbers and bools as JSON spells them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    raise ValueError(f"the key resolved to {type(value).__name__}, not a string or number")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class TimerSteps:
    """Executes claimed sleep and wait_for_event steps (module docstring)."""

    def __init__(self, repository: ExternalEventsRepository, outcomes: OutcomePolicy) -> None:
        self._repository = repository
        self._outcomes = outcomes
        self.metrics = Metrics()

    def _wake_at(self, due: datetime | None) -> None:
        """Let this replica's claim loop wake at ``due`` (as for a retry it scheduled)."""
        policy = self._outcomes
        if due is not None and (policy.next_retry is None or due < policy.next_retry):
            policy.next_retry = due

    async def execute(self, step: ClaimedStep) -> StepOutcome | None:
        """The step's outcome, or None when it was parked (or the claim was stale)."""
        key = TimerKey(step.run_id, step.step_id, step.attempt, step.task_id)
        sleep = step.spec.sleep
        if sleep is not None:
            until = _parse_time(sleep.until) if sleep.until else None
            status, wake_at = await self._repository.sleep(key, sleep.seconds or 0.0, until)
            self.metrics.step_wait("sleep", status)
            if status != "due" or wake_at is None:
                self._wake_at(wake_at)
                return None
            return self._outcomes.outcome(step, output={"slept_until": wake_at.isoformat()})
        wait = step.spec.wait_for_event
        assert wait is not None
        try:
            resolved = resolve(wait.key or "", run_input=step.run_input, step_outputs=step.upstream)
        except MissingReferenceError as exc:
            error = StepError("MISSING_REFERENCE", f"wait_for_event.key: {exc}", False)
            return self._outcomes.outcome(step, error=error)
        try:
            event_key = event_key_text(resolved)
        except ValueError as exc:
            error = StepError("INVALID_EVENT_KEY", f"wait_for_event.key: {exc}", False)
            return self._outcomes.outcome(step, error=error)
        status, event = await self._repository.wait(
            key, step.organization_id, wait.name, event_key, wait.timeout_seconds or 0.0
        )
        self.metrics.step_wait("wait_for_event", status)
        if status == "received":
            return self._outcomes.outcome(step, output=event)
        if status != "timeout":
            return None
        message = f"no event {wait.name!r} with key {event_key!r} arrived in time"
        error = StepError(TIMEOUT_CODE, message, False)
        if wait.on_timeout is OnTimeout.CONTINUE:
            return self._outcomes.outcome(step, output={"timed_out": True})
        if wait.on_timeout is OnTimeout.SKIP:
            outcome = self._outcomes.outcome(step, park=Outcome.SKIPPED)
            outcome.error = error
            return outcome
        return self._outcomes.outcome(step, error=error)
