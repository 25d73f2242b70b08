"""What an attempt leads to: the step's policy applied to its result.

After an attempt, :meth:`OutcomePolicy.outcome` decides: a retryable failure with
attempts left waits for its retry (full-jitter exponential backoff); after the last
attempt ``notify_human`` parks the step on a failure review, ``allow_skip`` skips it,
otherwise the run fails. A success of a step with ``checkpoint: after`` parks it on an
approval of its output. The result is a :class:`StepOutcome` for the completer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from podium.agent.v1 import agent_pb2
from podium.server.agents.client import TaskOutcome
from podium.server.storage.runs import ClaimedStep, FinishedChild, NewDeliverable, StepOutcome
from podium.server.storage.steps import CheckpointWhen, FailurePolicy, Outcome, StepError

log = logging.getLogger("podium.scheduler")

__all__ = [
    "DEFAULT_BACKOFF",
    "MAX_INLINE_ARTIFACT_BYTES",
    "OutcomePolicy",
    "attempt_metrics",
    "backoff_delay",
    "deliverables",
]

DEFAULT_BACKOFF = {"initial_seconds": 1.0, "multiplier": 2.0, "max_seconds": 60.0}
MAX_INLINE_ARTIFACT_BYTES = 1024 * 1024

# Outcome -> (attempt outcome, final step state or None) for the metrics.
_ATTEMPT_METRICS: dict[Outcome, tuple[str, str | None]] = {
    Outcome.RETRY: ("retry", None),
    Outcome.CHECKPOINT_AFTER: ("succeeded", None),  # the step waits on its approval
    Outcome.REVIEW: ("failed", None),  # the step waits on a failure review
    Outcome.SKIPPED: ("failed", "skipped"),
    Outcome.INPUT_REQUIRED: ("input_required", None),  # the step waits for an answer
    Outcome.ITERATE: ("succeeded", None),  # a loop's iteration: the step runs again
}


def attempt_metrics(outcome: Outcome) -> tuple[str, str | None]:
    """The attempt's outcome label and the step's final state (None: not final) of a
    committed outcome, for the metrics."""
    return _ATTEMPT_METRICS.get(outcome, (str(outcome), str(outcome)))


def backoff_delay(policy: FailurePolicy, attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff before attempt ``attempt + 1`` (seconds)."""
    own = policy.backoff
    initial = own.initial_seconds if own and own.initial_seconds is not None else None
    multiplier = own.multiplier if own and own.multiplier is not None else None
    maximum = own.max_seconds if own and own.max_seconds is not None else None
    ceiling = min(
        float(DEFAULT_BACKOFF["max_seconds"] if maximum is None else maximum),
        float(DEFAULT_BACKOFF["initial_seconds"] if initial is None else initial)
        * float(DEFAULT_BACKOFF["multiplier"] if multiplier is None else multiplier)
        ** (attempt - 1),
    )
    return rng.uniform(0, max(0.0, ceiling))


class OutcomePolicy:
    """Builds the outcome of each attempt of one replica; remembers the earliest retry
    it scheduled (``next_retry``) so the claim loop wakes up for it."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.next_retry: datetime | None = None

    def outcome(
        self,
        step: ClaimedStep | FinishedChild,
        *,
        output: Any = None,
        error: StepError | None = None,
        resolved: Any = None,
        result: TaskOutcome | None = None,
        park: Outcome | None = None,
    ) -> StepOutcome:
        """The outcome of an attempt, with the step's policy applied: retry, or after
        the last attempt review (notify_human), skip (allow_skip) or fail; a success of
        a step with ``checkpoint: after`` parks it. ``park`` forces an outcome
        (``checkpoint_before``, ``input_required``)."""
        outcome = StepOutcome(
            run_id=step.run_id,
            step_id=step.step_id,
            attempt=step.attempt,
            outcome=Outcome.SUCCEEDED,
            organization_id=step.organization_id,
            run_created_at=step.run_created_at,
            conversation_id=step.conversation_id,
            output=output,
            input=resolved,
        )
        if result is not None:
            if result.usage is not None:
                outcome.input_tokens = result.usage.input_tokens
                outcome.output_tokens = result.usage.output_tokens
                outcome.cost_usd = result.usage.cost_usd
                outcome.model = result.usage.model
            outcome.deliverables = deliverables(result.artifacts)
        if park is not None:
            outcome.outcome = park
        elif error is not None:
            outcome.error = error
            policy = step.spec.failure
            if error.retryable and step.attempt < step.max_attempts:
                delay = backoff_delay(policy, step.attempt, self._rng)
                outcome.outcome = Outcome.RETRY
                outcome.next_attempt_at = datetime.now(UTC) + timedelta(seconds=delay)
                if self.next_retry is None or outcome.next_attempt_at < self.next_retry:
                    self.next_retry = outcome.next_attempt_at
            elif policy.notify_human:
                outcome.outcome = Outcome.REVIEW
            elif policy.allow_skip:
                outcome.outcome = Outcome.SKIPPED
            else:
                outcome.outcome = Outcome.FAILED
        elif step.spec.checkpoint_when is CheckpointWhen.AFTER:
            outcome.outcome = Outcome.CHECKPOINT_AFTER
        return outcome


def deliverables(artifacts: Sequence[agent_pb2.Artifact]) -> list[NewDeliverable]:
    """Artifacts as deliverables; inline content above the limit is refused (kept as a
    record with its size and no data, so the operator sees what was dropped)."""
    out = []
    for artifact in artifacts:
        data: bytes | None = artifact.data or None
        uri = artifact.uri or None
        size = len(artifact.data)
        if data is not None and size > MAX_INLINE_ARTIFACT_BYTES:
            log.warning("artifact %r too large to store inline (%d bytes)", artifact.name, size)
            data = None
            uri = uri or f"podium:dropped:{artifact.name}"
        if data is None and uri is None:
            data = b""
        out.append(
            NewDeliverable(
                name=artifact.name or "artifact",
                media_type=artifact.media_type or "application/octet-stream",
                size_bytes=size,
                uri=uri,
                data=data,
            )
        )
    return out
