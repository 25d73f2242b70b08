"""Plan building: the step rows of a new run (``build_steps``), each with its effective
failure policy, its cache policy, the steps its input and its condition reference and
whether it is a sink."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.cache import step_policy
from podium.server.engine.conditions import step_mentions, uses_run_metadata
from podium.server.engine.references import find_references
from podium.server.storage.runs import NewStep
from podium.server.storage.steps import Backoff, FailurePolicy, StepSpec

__all__ = ["build_steps"]


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
    for position, step in enumerate(plan.steps):
        policy = _failure_policy(plan, step)
        target = step.WhichOneof("target")
        spec = StepSpec.for_step(
            step_dicts[position],
            on_failure=policy,
            caching=(
                step_policy(plan, step, caching_scope, cache_ttl_seconds) if caching_scope else None
            ),
            bypass_cache=bypass_cache and target == "orchestration",
        )
        template = spec.input if spec.input is not None else {}
        refs = {r.step_id for r in find_references(template) if r.step_id}
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
                agent=step.agent if target == "agent" else None,
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
