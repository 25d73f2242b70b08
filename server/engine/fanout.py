"""Dynamic fan-out: a step with ``for_each`` runs once per item of a list.

When the step executes, :meth:`FanOut.start` resolves its ``for_each`` reference to the
list of items (not a list: ``FOR_EACH_NOT_A_LIST``; more than
``ORCHESTRATION_FOR_EACH_MAX_ITEMS``: ``FOR_EACH_TOO_MANY_ITEMS``; both final), resolves
the step's input once per item (``${item...}``, ``${item_index}``, and the usual
``${run.input...}`` / ``${steps...}``), and starts a child run with one step per item,
``item-0``, ``item-1``, ... (no dependencies; the step's target, failure policy,
timeout and caching; ``max_parallel`` the step's, capped by the run's). An empty list
succeeds at once with ``{"items": []}``. From then on the step waits on the child like a
sub-orchestration step (docs/ARCHITECTURE.md, "Sub-orchestrations"): no lease, completed
by the sweep, cancelled with its run. :meth:`FanOut.finished` turns the finished child
into the step's outcome: ``{"items": [...]}``, the items' outputs in order (null for an
item skipped by ``allow_skip``; a step's output is an object, hence the wrapper), or
``CHILD_RUN_FAILED`` / ``CHILD_RUN_CANCELLED``, which fail the step (the items applied
the failure policy already: a failed item was retried, reviewed by a human when
``notify_human``, and only then failed the child).

Each item is a step of its own: attempts, events, retries and a cache key that names
the ``for_each`` step instead of ``item-N`` (``CachePolicy.key_step``), so identical
items share one cached output, across runs of the same definition too.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from podium.server.config import Settings
from podium.server.engine.outcomes import OutcomePolicy
from podium.server.engine.references import MissingReferenceError, resolve
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.runs import (
    ClaimedStep,
    FinishedChild,
    NewRun,
    NewStep,
    RunsRepository,
    StepOutcome,
)
from podium.server.storage.steps import Outcome, StepError, StepSpec

log = logging.getLogger("podium.scheduler")

__all__ = ["FanOut", "escape_references", "item_step_id"]

_UNBOUNDED = 2**31 - 1


def item_step_id(index: int) -> str:
    """The id of item ``index``'s step in the child run."""
    return f"item-{index}"


def escape_references(value: Any) -> Any:
    """``value`` with every ``${`` written ``$${``: an item's resolved input is data, the
    child's executor must not read references in it."""
    if isinstance(value, str):
        return value.replace("${", "$${") if "${" in value else value
    if isinstance(value, dict):
        return {key: escape_references(v) for key, v in value.items()}
    if isinstance(value, list):
        return [escape_references(v) for v in value]
    return value


class FanOut:
    """Starts the child run of a ``for_each`` step and reads its result (module
    docstring); one per scheduler."""

    def __init__(self, repository: RunsRepository, settings: Settings) -> None:
        self._repository = repository
        self._settings = settings

    async def start(self, step: ClaimedStep, outcomes: OutcomePolicy) -> StepOutcome | None:
        """The step's outcome, or None when its child run started (or the attempt is
        stale)."""
        spec = step.spec
        assert spec.for_each is not None

        def failed(code: str, message: str) -> StepOutcome:
            return outcomes.outcome(step, error=StepError(code, message, False))

        try:
            items = resolve(spec.for_each, run_input=step.run_input, step_outputs=step.upstream)
        except MissingReferenceError as exc:
            return failed("MISSING_REFERENCE", f"for_each: {exc}")
        if not isinstance(items, list):
            kind = "null" if items is None else type(items).__name__
            return failed(
                "FOR_EACH_NOT_A_LIST",
                f"for_each {spec.for_each} is {kind}, not a list",
            )
        limit = self._settings.for_each_max_items
        if len(items) > limit:
            return failed(
                "FOR_EACH_TOO_MANY_ITEMS",
                f"for_each {spec.for_each} has {len(items)} items; at most {limit} are "
                "allowed (ORCHESTRATION_FOR_EACH_MAX_ITEMS)",
            )
        if not items:
            return outcomes.outcome(step, output={"items": []}, resolved={"items": []})
        template = spec.input if spec.input is not None else {}
        inputs = []
        for index, item in enumerate(items):
            try:
                inputs.append(
                    resolve(
                        template,
                        run_input=step.run_input,
                        step_outputs=step.upstream,
                        item=(item, index),
                    )
                )
            except MissingReferenceError as exc:
                return failed("MISSING_REFERENCE", f"item {index}: {exc}")
        child = self._child_run(step, items, inputs)
        async with storage_errors():
            status, child_id = await self._repository.create_child(
                (step.run_id, step.step_id, step.attempt),
                child,
                self._settings.max_orchestration_depth,
                cap_max_parallel=True,
            )
        if status == "too_deep":
            return failed(
                "MAX_DEPTH_EXCEEDED",
                f"the items of step {step.step_id!r} would nest child runs deeper than "
                f"ORCHESTRATION_MAX_DEPTH={self._settings.max_orchestration_depth}",
            )
        if status == "created":
            log.info(
                "fan-out started",
                extra={
                    "run_id": str(step.run_id),
                    "step_id": step.step_id,
                    "child": str(child_id),
                    "items": len(items),
                },
            )
        return None

    def _child_run(self, step: ClaimedStep, items: list[Any], inputs: list[Any]) -> NewRun:
        spec = step.spec
        policy = spec.failure
        caching = spec.caching
        if caching is not None:
            caching = dataclasses.replace(caching, key_step=step.step_id)
        plan_steps: list[dict[str, Any]] = []
        rows = []
        for index, resolved in enumerate(inputs):
            item_input = escape_references(resolved)
            item = StepSpec(
                id=item_step_id(index),
                agent=spec.agent,
                skill=spec.skill,
                input=item_input,
                on_failure=spec.on_failure,
                timeout_seconds=spec.timeout_seconds,
                caching=caching,
                routing=spec.routing,  # the definition's rules apply to each item
            )
            plan_step = item.to_json()
            plan_step.pop("caching", None)  # the effective policy, not the author's form
            plan_step.pop("routing", None)  # engine state, not a field of Step
            plan_steps.append(plan_step)
            rows.append(
                NewStep(
                    step_id=item.id or "",
                    position=index,
                    state="pending",
                    agent=spec.agent,
                    skill=spec.skill,
                    depends_on=[],
                    spec=item,
                    max_attempts=policy.attempts,
                    timeout_seconds=step.timeout_seconds,
                    input_refs=[],
                    is_sink=True,
                )
            )
        description = f"for_each of step {step.step_id}"
        return NewRun(
            organization_id=step.organization_id,
            definition_name=None,
            definition_version=None,
            plan={"description": description, "steps": plan_steps},
            input={"items": items},
            metadata={},
            labels=dict(step.labels),
            request_id=None,
            max_parallel=spec.max_parallel or _UNBOUNDED,
            bypass_cache=False,
            webhook_url=None,
            steps=rows,
            trace_context=step.trace_context,
        )

    @staticmethod
    def finished(child: FinishedChild, outcomes: OutcomePolicy) -> StepOutcome:
        """The outcome of a ``for_each`` step whose child run finished."""
        if child.child_state == "succeeded":
            found = child.child_output or {}
            output = [found.get(item_step_id(i)) for i in range(len(found))]
            return outcomes.outcome(child, output={"items": output}, resolved=child.input)
        cause = child.child_error or {}
        reason = f": {cause.get('message')}" if cause.get("message") else ""
        code = "CHILD_RUN_CANCELLED" if child.child_state == "cancelled" else "CHILD_RUN_FAILED"
        message = f"the items' run {child.child_run_id} {child.child_state}{reason}"
        outcome = outcomes.outcome(
            child, resolved=child.input, error=StepError(code, message, False)
        )
        outcome.outcome = Outcome.FAILED  # the items applied the failure policy already
        return outcome
