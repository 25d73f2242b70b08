"""The executor of one claimed step: what happens between its claim and its outcome.

:meth:`StepExecutor.execute` first evaluates the step's condition (``when:``,
``engine/conditions.py``: false skips it, an error fails it); then it resolves the
step's ``${...}`` references (and merges the input given with a checkpoint's approval);
parks a step with ``checkpoint: before`` on an approval of its resolved input instead of
dispatching it (no attempt is used); starts the child run of a sub-orchestration step
(which then waits for it without a lease); consults the step-output cache when the step
is cached (``engine/cache.py``: a hit completes the step without calling the agent);
otherwise calls the agent with the step's deadline, streaming its progress into
:class:`~.streams.StreamBuffers`. The result becomes a :class:`StepOutcome` through the
step's policy (:mod:`.outcomes`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from podium.agent.v1 import agent_pb2
from podium.server.agents.a2a import TaskInputRequired
from podium.server.agents.client import DEADLINE_EXCEEDED, TaskFailed, TaskSucceeded
from podium.server.agents.dispatch import AgentDispatcher
from podium.server.engine.cache import CacheHit, StepCache
from podium.server.engine.conditions import condition_outcome
from podium.server.engine.fanout import FanOut
from podium.server.engine.loops import loop_outcome, loop_outputs
from podium.server.engine.outcomes import OutcomePolicy, deliverables
from podium.server.engine.policies import RoutingPolicies
from podium.server.engine.references import MissingReferenceError, resolve
from podium.server.engine.streams import StepKey, StreamBuffers
from podium.server.engine.timers import TimerSteps, is_timer_step
from podium.server.storage.runs import AttemptUsage, ClaimedStep, FinishedChild, StepOutcome
from podium.server.storage.steps import CheckpointWhen, Outcome, StepError
from podium.server.telemetry.metrics import Metrics
from podium.server.telemetry.tracing import Tracing

log = logging.getLogger("podium.scheduler")

__all__ = ["StartChild", "StartPlan", "StepExecutor"]


class StartChild(Protocol):
    """Starts the child run of a sub-orchestration step; see ``ChildRuns.start_child``."""

    def __call__(
        self,
        parent: StepKey,
        organization_id: str,
        ref: Mapping[str, Any],
        child_input: Any,
        trace_context: Mapping[str, str] | None,
        *,
        bypass_cache: bool = False,
    ) -> Awaitable[tuple[str, uuid.UUID | None, str]]: ...


class StartPlan(Protocol):
    """Starts the child run of a plan step from its planner's output; see
    ``ChildRuns.start_plan``."""

    def __call__(
        self,
        parent: StepKey,
        organization_id: str,
        planned: Any,
        child_input: Any,
        trace_context: Mapping[str, str] | None,
        usage: AttemptUsage | None = None,
    ) -> Awaitable[tuple[str, uuid.UUID | None, str]]: ...


_CHILD_ERRORS = {
    "too_deep": "MAX_DEPTH_EXCEEDED",
    "not_found": "DEFINITION_NOT_FOUND",
    "invalid_input": "INVALID_CHILD_INPUT",
    "invalid_plan": "INVALID_PLAN",
    "plan_too_large": "PLAN_TOO_LARGE",
}
"""The error code of a child run that could not start, by ``start_child`` /
``start_plan`` status (any other: DEFINITION_ARCHIVED)."""


class StepExecutor:
    """Runs claimed steps to their outcome (module docstring); one per scheduler."""

    def __init__(
        self,
        agents: AgentDispatcher,
        outcomes: OutcomePolicy,
        streams: StreamBuffers,
        *,
        default_timeout_seconds: float,
        start_child: StartChild | None = None,
        cache: StepCache | None = None,
        timers: TimerSteps | None = None,
    ) -> None:
        self._agents = agents
        self._outcomes = outcomes
        self._streams = streams
        self._default_timeout = default_timeout_seconds
        self._start_child = start_child
        self.cache = cache
        self.timers = timers
        self.fanout: FanOut | None = None
        """Starts the items of ``for_each`` steps (``engine/fanout.py``); set by the
        engine."""
        self.budget_gate: Callable[[ClaimedStep], Awaitable[str]] | None = None
        """Checks the budget of a ``budgeted`` step's run before dispatch
        (``RunsRepository.budget_gate``: ``ok``, ``paused``, ``failed``, ``stale``); set
        by the engine."""
        self.routing: RoutingPolicies | None = None
        """Checks an agent or skill step against the routing policies before dispatch
        (``engine/policies.py``); set by the engine."""
        self.start_plan: StartPlan | None = None
        """Starts the child run of a ``plan`` step (``ChildRuns.start_plan``); set by
        the engine."""
        self.podium_address = ""
        """Sent with each agent call as ``podium_address``; set by the server."""
        self.metrics = Metrics()
        self.tracing = Tracing()

    async def execute(self, step: ClaimedStep) -> StepOutcome | None:
        """The outcome of this attempt, in the step's span; None when a child run was
        started (the step waits for it) or the attempt turned out to be stale. A crash
        of the executor is a retryable INTERNAL failure; cancellation propagates."""
        attributes = (
            {
                "podium.run_id": str(step.run_id),
                "podium.step_id": step.step_id,
                "podium.attempt": step.attempt,
                "podium.agent": step.agent or "",
            }
            if self.tracing.enabled
            else {}
        )
        outcome: StepOutcome | None
        with self.tracing.step_span(step.trace_context, attributes) as span:
            try:
                outcome = await self._run_step(step)
                if outcome is not None and step.spec.loop is not None:
                    outcome = loop_outcome(step, outcome, self._outcomes)  # another iteration?
            except asyncio.CancelledError:
                self.tracing.step_result(span, "cancelled", None)
                raise
            except Exception:
                log.exception(
                    "step executor crashed",
                    extra={"run_id": str(step.run_id), "step_id": step.step_id},
                )
                error = StepError("INTERNAL", "the step executor failed; see the server log", True)
                outcome = self._outcomes.outcome(step, error=error)
            if outcome is not None:
                self.tracing.step_result(
                    span, outcome.outcome, outcome.error.code if outcome.error else None
                )
            else:
                self.tracing.step_result(span, "waiting_child", None)
        return outcome

    async def _run_step(self, step: ClaimedStep) -> StepOutcome | None:
        spec = step.spec
        if spec.when is not None:  # a condition (``when:``) may skip or fail the step
            decided = condition_outcome(step, self._outcomes)
            if decided is not None:
                return decided
        if self.timers is not None and is_timer_step(step):
            return await self.timers.execute(step)  # sleep, wait_for_event: no agent
        approval = False
        if self.routing is not None and spec.orchestration is None and (step.agent or step.skill):
            # Against the current policy: it may have changed since StartRun.
            verdict = await self.routing.gate(
                step.organization_id, step.agent, step.skill, spec.routing, spec.refused_agents
            )
            if verdict.refusal is not None:
                log.info(
                    "step refused by the routing policy",
                    extra={"run_id": str(step.run_id), "step_id": step.step_id},
                )
                error = StepError("POLICY_DENIED", verdict.refusal, False)
                return self._outcomes.outcome(step, error=error)
            approval = verdict.approval
        if spec.budgeted and self.budget_gate is not None:
            # A run over its budget starts nothing more: the attempt is given back and
            # the run paused or failed (functions/65_budgets.sql, podium_budget_gate).
            gate = await self.budget_gate(step)
            if gate != "ok":
                log.info(
                    "step held by its run's budget",
                    extra={"run_id": str(step.run_id), "step_id": step.step_id, "gate": gate},
                )
                return None
        if spec.for_each is not None:
            if self.fanout is None:
                message = "for_each is not enabled on this replica"
                return self._outcomes.outcome(step, error=StepError("UNSUPPORTED", message, False))
            return await self.fanout.start(step, self._outcomes)
        try:
            resolved = resolve(
                spec.input if spec.input is not None else {},
                run_input=step.run_input,
                step_outputs=loop_outputs(step),
            )
        except MissingReferenceError as exc:
            return self._outcomes.outcome(
                step, error=StepError("MISSING_REFERENCE", str(exc), False)
            )
        extra = spec.approved_input
        if isinstance(extra, dict) and isinstance(resolved, dict):
            resolved = {**resolved, **extra}  # given with the checkpoint's approval
        before = spec.checkpoint_when is CheckpointWhen.BEFORE or approval
        if before and not spec.checkpoint_passed:
            # A checkpoint, or an agent of the routing policy's approval_agents.
            # The claim's task id fences the park (its attempt number is given back).
            return self._outcomes.outcome(
                step,
                output={"task_id": str(step.task_id)},
                resolved=resolved,
                park=Outcome.CHECKPOINT_BEFORE,
            )
        if spec.orchestration is not None:
            return await self._run_child(step, resolved)
        cache = self.cache
        policy = cache.policy(step) if cache is not None else None
        if spec.answer_for(step.attempt) is not None:
            policy = None  # answers an agent's question: its output depends on the answer
        if cache is None or policy is None:
            return await self._call_agent(step, resolved)
        found = await cache.acquire(step, policy, resolved)
        if isinstance(found, CacheHit):
            self.metrics.cache_hit()
            return self._outcomes.outcome(step, output=found.output, resolved=resolved)
        if found is None:  # stale attempt, or the cache is unreachable
            return await self._call_agent(step, resolved)
        self.metrics.cache_miss()
        try:
            outcome = await self._call_agent(step, resolved)
        except BaseException:
            cache.release_later(found)
            raise
        succeeded = outcome is not None and outcome.outcome == Outcome.SUCCEEDED
        await cache.release(found, outcome.output if outcome is not None and succeeded else None)
        return outcome

    def _timeout(self, step: ClaimedStep) -> tuple[float, str]:
        """The deadline of the step's agent call and the setting it comes from (the
        step's own, the definition's default, the agent's default, the server's)."""
        if step.timeout_seconds:
            if step.spec.timeout_seconds:
                return step.timeout_seconds, "the step's timeout_seconds"
            return step.timeout_seconds, "the definition's execution.default_timeout_seconds"
        if step.agent_timeout_seconds:
            return (
                step.agent_timeout_seconds,
                f"agent {step.agent!r}'s default_timeout_seconds",
            )
        return self._default_timeout, "the server's ORCHESTRATION_DEFAULT_STEP_TIMEOUT_SECONDS"

    async def _call_agent(self, step: ClaimedStep, resolved: Any) -> StepOutcome | None:
        if step.endpoint is None:
            if step.skill:
                message = f"no registered agent offers skill {step.skill!r}"
                error = StepError("NO_AGENT_FOR_SKILL", message, True)
            else:
                message = f"agent {step.agent!r} is not registered"
                error = StepError("AGENT_NOT_FOUND", message, True)
            return self._outcomes.outcome(step, resolved=resolved, error=error)
        timeout, timeout_source = self._timeout(step)
        request = agent_pb2.ExecuteTaskRequest(
            task_id=str(step.task_id),
            run_id=str(step.run_id),
            step_id=step.step_id,
            attempt=step.attempt,
            conversation_id=str(step.conversation_id),
            organization_id=step.organization_id,
            labels=step.labels,
            definition_name=step.definition_name or "",
            definition_version=step.definition_version or 0,
            skill=step.skill or "",
            podium_address=self.podium_address,
        )
        if step.credential:
            # Made by the claim, valid while this attempt runs (engine/step_credentials.py).
            request.credential = step.credential
        answer = step.spec.answer_for(step.attempt)
        resume_task_id = ""
        if answer is not None:
            # This attempt answers the agent's question (A2A INPUT_REQUIRED).
            resume_task_id = str(answer.task_id)
            resolved = answer.input or {}
        if isinstance(resolved, dict):
            request.input.update(resolved)
        on_progress, on_chunk = self._streams.callbacks((step.run_id, step.step_id, step.attempt))
        with self.tracing.agent_call_span(
            step.agent or "", step.endpoint, request.conversation_id
        ) as (span, metadata):
            result = await self._agents.execute(
                step.endpoint,
                request,
                protocol=step.protocol,
                resume_task_id=resume_task_id,
                timeout=timeout,
                metadata=metadata,
                on_progress=on_progress,
                on_output_chunk=on_chunk,
            )
            if span.is_recording():
                failure = result if isinstance(result, TaskFailed) else None
                self.tracing.agent_call_result(
                    span,
                    error_code=failure.code
                    if failure
                    else ("INPUT_REQUIRED" if isinstance(result, TaskInputRequired) else None),
                    grpc_status=failure.grpc_status if failure else None,
                    input_tokens=result.usage.input_tokens if result.usage else None,
                    output_tokens=result.usage.output_tokens if result.usage else None,
                )
        if isinstance(result, TaskSucceeded):
            if step.spec.plan is not None:
                return await self._run_plan(step, resolved, result)
            return self._outcomes.outcome(
                step, output=result.output, resolved=resolved, result=result
            )
        if isinstance(result, TaskFailed) and result.code == DEADLINE_EXCEEDED:
            # Say which limit was hit: the transport only knows that a deadline passed.
            result = dataclasses.replace(
                result,
                message=f"step {step.step_id!r} timed out after {timeout:g} s "
                f"({timeout_source}): {result.message}",
            )
        if isinstance(result, TaskInputRequired):
            # A2A INPUT_REQUIRED: the step parks on an input_required approval; the
            # answer (DecideApproval or ContinueRun) continues the same A2A task.
            question = {
                "question": result.message,
                "data": list(result.data),
                "task_id": result.task_id,
                "context_id": result.context_id,
            }
            outcome = self._outcomes.outcome(
                step, output=question, resolved=resolved, park=Outcome.INPUT_REQUIRED
            )
            outcome.error = StepError("INPUT_REQUIRED", result.message, False)
            outcome.deliverables = deliverables(result.artifacts)
            return outcome
        return self._outcomes.outcome(
            step,
            resolved=resolved,
            result=result,
            error=StepError(result.code, result.message, result.retryable),
        )

    async def _run_child(self, step: ClaimedStep, resolved: Any) -> StepOutcome | None:
        """Start the step's child run; None when it started (the step then waits for
        it, see :meth:`child_finished`) or when this attempt turned out to be stale."""
        target = step.spec.orchestration
        if self._start_child is None or target is None:
            message = "sub-orchestrations are not enabled on this replica"
            return self._outcomes.outcome(
                step, resolved=resolved, error=StepError("UNSUPPORTED", message, False)
            )
        started = await self._start_child(
            (step.run_id, step.step_id, step.attempt),
            step.organization_id,
            target.to_json(),
            resolved,
            step.trace_context,
            bypass_cache=bool(step.spec.bypass_cache),
        )
        return self._child_started(step, resolved, started, None)

    def _child_started(
        self,
        step: ClaimedStep,
        resolved: Any,
        started: tuple[str, uuid.UUID | None, str],
        planner: TaskSucceeded | None,
    ) -> StepOutcome | None:
        """None when the child run ``started`` (the step waits for it) or the attempt was
        stale; otherwise the step fails (not retried) with why the child did not start."""
        status, child, message = started
        if status == "created":
            log.info(
                "child run started",
                extra={"run_id": str(step.run_id), "step_id": step.step_id, "child": str(child)},
            )
            return None
        if status == "fenced":
            return None
        code = _CHILD_ERRORS.get(status, "DEFINITION_ARCHIVED")
        return self._outcomes.outcome(
            step, resolved=resolved, result=planner, error=StepError(code, message, False)
        )

    async def _run_plan(
        self, step: ClaimedStep, resolved: Any, planner: TaskSucceeded
    ) -> StepOutcome | None:
        """A plan step's planner answered: start its output (a definition) as the step's
        child run; None when it started (the step waits for it, as a sub-orchestration
        does) or the attempt is stale. An invalid plan fails the step (not retried)."""
        if self.start_plan is None:
            message = "plan steps are not enabled on this replica"
            error = StepError("UNSUPPORTED", message, False)
            return self._outcomes.outcome(step, resolved=resolved, result=planner, error=error)
        used = planner.usage
        started = await self.start_plan(
            (step.run_id, step.step_id, step.attempt),
            step.organization_id,
            planner.output,
            resolved,
            step.trace_context,
            None
            if used is None
            else (used.input_tokens, used.output_tokens, used.cost_usd, used.model),
        )
        return self._child_started(step, resolved, started, planner)

    def child_finished(self, child: FinishedChild) -> StepOutcome:
        """The outcome of a step whose child run finished: its output, or a failure."""
        if child.spec.for_each is not None:
            return FanOut.finished(child, self._outcomes)
        if child.child_state == "succeeded":
            return self._outcomes.outcome(child, output=child.child_output, resolved=child.input)
        cause = child.child_error or {}
        reason = f": {cause.get('message')}" if cause.get("message") else ""
        code = "CHILD_RUN_CANCELLED" if child.child_state == "cancelled" else "CHILD_RUN_FAILED"
        message = f"child run {child.child_run_id} {child.child_state}{reason}"
        return self._outcomes.outcome(
            child, resolved=child.input, error=StepError(code, message, False)
        )
