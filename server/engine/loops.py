"""Loop steps (``loop: {until, max_iterations}``): one more iteration, or the end.

After an iteration of a loop step succeeded, :func:`loop_outcome` evaluates its
``until`` (CEL over ``output``, ``iteration`` and the variables of a condition, see
:mod:`.conditions`): true, or ``max_iterations`` reached, keeps the success (the step's
output is the last iteration's); otherwise the outcome becomes ``iterate``, which
``podium_iterate_step`` (``functions/55_conditions.sql``) records durably: the output,
``loop_iteration`` and ``loop_output`` in the spec, and the step queued again. The next
iteration's input may reference the previous output as ``${steps.ID.output}`` with the
step's own ID (:func:`loop_outputs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podium.server.engine.conditions import (
    CONDITION_ERROR,
    ConditionEvaluationError,
    claimed_run_variables,
    evaluate_condition,
)
from podium.server.engine.outcomes import OutcomePolicy
from podium.server.storage.runs import ClaimedStep, StepOutcome
from podium.server.storage.steps import Outcome, StepError

__all__ = ["MAX_ITERATIONS", "loop_outcome", "loop_outputs"]

MAX_ITERATIONS = 100


def loop_outputs(step: ClaimedStep) -> Mapping[str, Any]:
    """The outputs the step's input may reference: its upstream steps', plus, for a
    loop step, its own previous iteration's under its own id (null at first)."""
    if step.spec.loop is None:
        return step.upstream
    return {**step.upstream, step.step_id: step.spec.loop_output}


def loop_outcome(step: ClaimedStep, outcome: StepOutcome, outcomes: OutcomePolicy) -> StepOutcome:
    """The outcome of a loop step's iteration: ``iterate`` while ``until`` does not hold
    and iterations are left, else the outcome as it is; an ``until`` that cannot be
    evaluated fails the step (``CONDITION_ERROR``, its failure policy applies)."""
    loop = step.spec.loop
    if loop is None or outcome.outcome != Outcome.SUCCEEDED:
        return outcome
    iteration = (step.spec.loop_iteration or 0) + 1
    if iteration >= (loop.max_iterations or 1):
        return outcome
    if loop.until:
        run = claimed_run_variables(step)
        try:
            done = evaluate_condition(
                loop.until,
                run,
                step.upstream,
                extra={"output": outcome.output, "iteration": iteration},
            )
        except ConditionEvaluationError as error:
            failed = outcomes.outcome(
                step,
                resolved=outcome.input,
                error=StepError(CONDITION_ERROR, f"loop.until: {error}", False),
            )
            failed.input_tokens = outcome.input_tokens
            failed.output_tokens = outcome.output_tokens
            failed.cost_usd = outcome.cost_usd
            return failed
        if done:
            return outcome
    outcome.outcome = Outcome.ITERATE
    return outcome
