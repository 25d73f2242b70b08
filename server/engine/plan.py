"""Plan building: the step rows of a new run (``build_steps``), each with its effective
failure policy, its cache policy, the steps its input and its condition reference and
whether it is a sink; how many steps a run's start queues at once (``first_steps``); and
which steps a fork re-executes (``fork_redo``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2, run_pb2
from podium.server.engine.cache import step_policy
from podium.server.engine.conditions import step_mentions, uses_run_metadata
from podium.server.engine.mapping import response_skeleton
from podium.server.engine.references import (
    MissingReferenceError,
    ReferenceSyntaxError,
    find_references,
    normalize_numbers,
    resolve,
)
from podium.server.storage.runs import EncodedPlan, NewRun, NewStep, StepRow, encode_plan
from podium.server.storage.steps import Backoff, FailurePolicy, StepSpec

__all__ = ["RunTemplate", "build_steps", "first_steps", "fork_redo", "run_template"]


def _failure_policy(plan: definition_pb2.Definition, step: definition_pb2.Step) -> FailurePolicy:
    """The step's on_failure over the definition's on_step_failure, field by field."""
    base = plan.error_handling.on_step_failure
    own = step.on_failure
    policy: dict[str, Any] = {}
    for name in ("max_attempts", "notify_human", "allow_skip", "skip_dependents"):
        if own.HasField(name):
            policy[name] = getattr(own, name)
        elif base.HasField(name):
            policy[name] = getattr(base, name)
    backoff = {}
    for name in ("initial_seconds", "multiplier", "max_seconds"):
        value = getattr(own.backoff, name) or getattr(base.backoff, name)
        if value:
            backoff[name] = value
    return FailurePolicy(**policy, backoff=Backoff(**backoff) if backoff else None)


def build_steps(
    plan: definition_pb2.Definition,
    plan_dict: Mapping[str, Any] | None = None,
    *,
    caching_scope: dict[str, Any] | None = None,
    cache_ttl_seconds: float = 0.0,
    bypass_cache: bool = False,
    run_metadata: Mapping[str, Any] | None = None,
) -> list[NewStep]:
    """The step rows of a new run of ``plan`` (already validated); ``plan_dict`` is its
    JSON form when the caller has it (converting once is much cheaper than per step).

    ``caching_scope`` (None: no step is cached, e.g. ``bypass_cache``) enables the
    step-output cache: each cached step's spec gets its effective policy in
    ``caching`` (``engine/cache.py``), ``cache_ttl_seconds`` being the server default.
    ``bypass_cache`` (the run's flag) marks sub-orchestration steps so their child runs
    bypass the cache too. ``run_metadata`` (the run's) is copied into the spec of each
    step whose condition reads ``run.metadata``."""
    if plan_dict is None:
        plan_dict = json_format.MessageToDict(plan, preserving_proto_field_name=True)
    step_dicts = plan_dict.get("steps", [])
    needed_by: set[str] = set()
    for step in plan.steps:
        needed_by.update(step.depends_on)
    steps = []
    # Most steps have no on_failure of their own: they share the definition's policy
    # (frozen, so one object serves them all; a 10,000-step plan builds it once).
    shared_policy: FailurePolicy | None = None
    # The definition's routing rules, for the executor's check of the agent a skill is
    # routed to (engine/policies.py).
    routing = plan_dict.get("execution", {}).get("routing") or None
    for position, step in enumerate(plan.steps):
        if step.HasField("on_failure"):
            policy = _failure_policy(plan, step)
        else:
            if shared_policy is None:
                shared_policy = _failure_policy(plan, step)
            policy = shared_policy
        target = step.WhichOneof("target")
        spec = StepSpec.for_step(
            step_dicts[position],
            on_failure=policy,
            caching=(
                step_policy(plan, step, caching_scope, cache_ttl_seconds) if caching_scope else None
            ),
            bypass_cache=bypass_cache and target == "orchestration",
        )
        if routing is not None and target in ("agent", "skill"):
            spec = replace(spec, routing=routing)
        template = spec.input if spec.input is not None else {}
        if spec.wait_for_event is not None and spec.wait_for_event.key:
            template = [template, spec.wait_for_event.key]  # the key's references too
        refs = {r.step_id for r in find_references([template, step.for_each]) if r.step_id}
        expressions = [e for e in (step.when, step.loop.until) if e]
        for expression in expressions:
            refs.update(step_mentions(expression))  # the claim gives their outputs too
        if any(uses_run_metadata(e) for e in expressions):
            spec = replace(spec, run_metadata=dict(run_metadata or {}))
        refs.discard(step.id)  # a loop's previous output comes from its spec
        timeout = step.timeout_seconds or plan.execution.default_timeout_seconds or None
        steps.append(
            NewStep(
                step_id=step.id,
                position=position,
                # Every step starts pending; podium_start_run queues those without
                # dependencies when the run starts (at once, or on ContinueRun).
                state="pending",
                agent=step.agent
                if target == "agent"
                else (step.plan.agent if target == "plan" else None),
                skill=step.skill if target == "skill" else None,
                depends_on=list(step.depends_on),
                spec=spec,
                max_attempts=policy.attempts,
                timeout_seconds=timeout if timeout and math.isfinite(timeout) else None,
                input_refs=sorted(refs),
                is_sink=step.id not in needed_by,
            )
        )
    return steps


@dataclass(frozen=True, slots=True)
class RunTemplate:
    """What a run of one saved definition version takes from the version alone (and
    the run's ``bypass_cache`` flag), made once per replica and shared by its runs
    (StartRun, a schedule's tick): the plan's JSON form, the step rows, both encoded
    for ``podium_create_run``, and the steps' part of the response. Never mutated."""

    plan: dict[str, Any]
    """The plan's JSON form (``NewRun.plan``)."""
    steps: list[NewStep] | None
    """The step rows; None when a step's condition reads ``run.metadata`` (each run's
    metadata is then copied into that step's spec, so its rows are built per run)."""
    encoded: EncodedPlan | None
    """``plan`` and ``steps`` encoded (``NewRun.encoded``); None with ``steps``."""
    response: run_pb2.Run | None
    """What the StartRun responses of its runs share (``mapping.response_skeleton``);
    None with ``steps``."""


def run_template(
    plan: definition_pb2.Definition,
    *,
    caching_scope: dict[str, Any] | None,
    cache_ttl_seconds: float,
    bypass_cache: bool,
) -> RunTemplate:
    """The :class:`RunTemplate` of ``plan`` (a saved version, as ``build_steps`` takes
    it)."""
    plan_dict = json_format.MessageToDict(plan, preserving_proto_field_name=True)
    if any(uses_run_metadata(e) for s in plan.steps for e in (s.when, s.loop.until) if e):
        return RunTemplate(plan_dict, None, None, None)
    steps = build_steps(
        plan,
        plan_dict,
        caching_scope=caching_scope,
        cache_ttl_seconds=cache_ttl_seconds,
        bypass_cache=bypass_cache,
    )
    return RunTemplate(plan_dict, steps, encode_plan(plan_dict, steps), response_skeleton(steps))


def first_steps(run: NewRun) -> int:
    """How many steps of ``run`` its start makes runnable at once: those without
    dependencies, at most its ``max_parallel`` (all a StartRun's eager claim can take)."""
    roots = sum(1 for step in run.steps if not step.depends_on)
    return min(roots, run.max_parallel) if run.max_parallel > 0 else roots


def _downstream(steps: Sequence[StepRow], redo: set[str]) -> set[str]:
    """``redo`` with every step downstream of one of its steps."""
    redo = set(redo)
    changed = True
    while changed:
        changed = False
        for step in steps:
            if step.step_id not in redo and redo.intersection(step.depends_on):
                redo.add(step.step_id)
                changed = True
    return redo


def fork_redo(
    steps: Sequence[StepRow], forced: set[str], run_input: Any, source_input: Any
) -> set[str]:
    """The steps a fork re-executes: ``forced``, each succeeded step whose input resolves
    differently with ``run_input`` than it did in the source run (or no longer
    resolves; with a new run input, every ``for_each`` step), and everything downstream
    of them.

    A step kept for copying has only kept steps upstream, so its input resolves from the
    new run input and the source's outputs, as the executor would resolve it (an
    approval's extra input included)."""
    redo = _downstream(steps, forced)
    if normalize_numbers(run_input) == normalize_numbers(source_input):
        return redo
    outputs = {s.step_id: s.output for s in steps if s.state == "succeeded"}
    while True:
        changed: set[str] = set()
        for step in steps:
            if step.state != "succeeded" or step.step_id in redo:
                continue
            if step.spec.get("for_each"):
                # Its items' inputs are not comparable with one stored input: with a new
                # run input, a fan-out step runs again (the cache answers unchanged items).
                changed.add(step.step_id)
                continue
            template = step.spec.get("input", {})
            try:
                resolved = resolve(template, run_input=run_input, step_outputs=outputs)
            except (MissingReferenceError, ReferenceSyntaxError):
                changed.add(step.step_id)
                continue
            extra = step.spec.get("approved_input")
            if isinstance(extra, dict) and isinstance(resolved, dict):
                resolved = {**resolved, **extra}
            if normalize_numbers(resolved) != normalize_numbers(step.input):
                changed.add(step.step_id)
        if not changed:
            return redo
        redo = _downstream(steps, redo | changed)
