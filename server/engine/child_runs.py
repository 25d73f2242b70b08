"""Child runs of steps: the child run of a sub-orchestration step (a saved definition)
and of a ``plan`` step (its planner's output, validated as an inline plan).

Both are created by ``RunsRepository.create_child`` in one transaction fenced on the
parent step's attempt (linked both ways; the step then waits for the child without a
lease, and the schedulers' sweep completes it when the child ends). Runs an agent
starts with its step credential are StartRun's (``RunService.start`` with ``parent``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.server.config import Settings
from podium.server.engine.cache import cache_scope, caching_requested
from podium.server.engine.definitions import DefinitionService
from podium.server.engine.errors import FieldViolation, InvalidArgument, NotFound
from podium.server.engine.keys import run_keying
from podium.server.engine.plan import build_steps
from podium.server.engine.storage_errors import storage_errors
from podium.server.engine.validation import validate_plan
from podium.server.storage.runs import AttemptUsage, NewRun, RunsRepository

__all__ = ["ChildRuns"]


class ChildRuns:
    """Starts the child runs steps wait for (module docstring)."""

    def __init__(
        self,
        repository: RunsRepository,
        definitions: DefinitionService,
        settings: Settings,
        max_parallel: Callable[[definition_pb2.Definition], int],
    ) -> None:
        self._repository = repository
        self._definitions = definitions
        self._settings = settings
        self._max_parallel = max_parallel
        """A run's effective max_parallel (``RunService.effective_max_parallel``)."""

    async def start_child(
        self,
        parent: tuple[uuid.UUID, str, int],
        organization_id: str,
        ref: Mapping[str, Any],
        child_input: Any,
        trace_context: Mapping[str, str] | None,
        *,
        bypass_cache: bool = False,
    ) -> tuple[str, uuid.UUID | None, str]:
        """Start the child run of a sub-orchestration step.

        ``parent`` is the (run, step, attempt) waiting on it; ``ref`` the step's
        ``orchestration`` ({name, version}; version 0 or absent = the latest). Returns
        (status, child id, message): ``created``; ``fenced`` (the parent attempt is
        stale); ``too_deep`` (ORCHESTRATION_MAX_DEPTH); ``not_found`` or ``archived``
        (the definition).
        """
        name = str(ref.get("name", ""))
        version = int(ref.get("version", 0) or 0)
        try:
            plan = await self._definitions.get(organization_id, name, version, fresh=True)
        except NotFound as exc:
            return "not_found", None, str(exc)
        if plan.archived:
            return "archived", None, f"definition {name!r} is archived; new runs are refused"
        return await self._start_child_run(
            parent,
            organization_id,
            plan,
            (plan.name, plan.version),
            child_input,
            trace_context,
            bypass_cache=bypass_cache,
        )

    async def start_plan(
        self,
        parent: tuple[uuid.UUID, str, int],
        organization_id: str,
        planned: Any,
        child_input: Any,
        trace_context: Mapping[str, str] | None,
        usage: AttemptUsage | None = None,
    ) -> tuple[str, uuid.UUID | None, str]:
        """Start the child run of a ``plan`` step: ``planned`` is its planner's output,
        the JSON of a Definition, validated as an inline plan; ``usage`` the planner's,
        recorded on the attempt when the child starts. Returns (status, child id,
        message) like :meth:`start_child`, or ``invalid_plan`` (the message lists each
        violation with its field path) or ``plan_too_large``
        (ORCHESTRATION_MAX_PLAN_STEPS)."""
        plan = definition_pb2.Definition()
        if not isinstance(planned, dict):
            return "invalid_plan", None, "the planner's output is not a JSON object"
        try:
            json_format.ParseDict(planned, plan)
        except json_format.ParseError as exc:
            return "invalid_plan", None, f"the planner's output is not a definition: {exc}"
        limit = self._settings.max_plan_steps
        if len(plan.steps) > limit:
            return (
                "plan_too_large",
                None,
                f"the plan has {len(plan.steps)} steps; ORCHESTRATION_MAX_PLAN_STEPS={limit}",
            )
        found = validate_plan(plan, field_prefix="plan")
        if not plan.steps:
            found.append(FieldViolation(field="plan.steps", description="at least one step"))
        if found:
            problems = "; ".join(f"{v.field}: {v.description}" for v in found)
            return "invalid_plan", None, f"the plan is invalid ({len(found)}): {problems}"
        return await self._start_child_run(
            parent,
            organization_id,
            plan,
            None,
            child_input,
            trace_context,
            bypass_cache=False,
            usage=usage,
        )

    async def _start_child_run(
        self,
        parent: tuple[uuid.UUID, str, int],
        organization_id: str,
        plan: definition_pb2.Definition,
        definition: tuple[str, int] | None,
        child_input: Any,
        trace_context: Mapping[str, str] | None,
        *,
        bypass_cache: bool,
        usage: AttemptUsage | None = None,
    ) -> tuple[str, uuid.UUID | None, str]:
        """Create the child run of step ``parent`` executing ``plan`` (a saved
        ``definition`` (name, version), or None for a planned one)."""
        name, version = definition if definition is not None else (None, None)
        plan_dict = json_format.MessageToDict(plan, preserving_proto_field_name=True)
        run_input = child_input if isinstance(child_input, dict) else {"value": child_input}
        try:
            keying = run_keying(plan, run_input, None)
        except InvalidArgument as exc:
            return "invalid_input", None, str(exc.violations[0].description)
        new = NewRun(
            organization_id=organization_id,
            definition_name=name,
            definition_version=version,
            plan=plan_dict,
            input=run_input,
            metadata={},
            labels=dict(plan.labels),
            request_id=None,
            max_parallel=self._max_parallel(plan),
            bypass_cache=bypass_cache,
            webhook_url=None,
            # A child run caches like a run of its definition, unless the parent run
            # bypasses the cache (then its children do too).
            steps=build_steps(
                plan,
                plan_dict,
                caching_scope=cache_scope(plan, name, version)
                if caching_requested(plan) and not bypass_cache
                else None,
                cache_ttl_seconds=self._settings.cache_default_ttl_seconds,
                bypass_cache=bypass_cache,
            ),
            trace_context=trace_context,
            keying=keying,
        )
        async with storage_errors():
            status, child = await self._repository.create_child(
                parent, new, self._settings.max_orchestration_depth, usage=usage
            )
        message = ""
        if status == "too_deep":
            what = repr(name) if name is not None else "the plan"
            message = (
                f"starting {what} would nest child runs deeper than "
                f"ORCHESTRATION_MAX_DEPTH={self._settings.max_orchestration_depth}"
            )
        return status, child, message
