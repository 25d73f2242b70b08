"""Runs: StartRun / GetRun / ListRuns / CancelRun / ContinueRun and the run log.

A run is created with all its steps in one transaction (``RunsRepository.create``),
all ``pending``; starting it (at once, or on ContinueRun) queues the steps without
dependencies. The step rows come from ``engine/plan.py`` (``build_steps``); the API
form of stored rows from ``engine/mapping.py``; request checks shared with other
services from ``engine/requests.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format, struct_pb2

from podium.orchestration.v1 import definition_pb2, event_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.config import Settings
from podium.server.engine.cache import cache_scope, caching_requested
from podium.server.engine.definitions import DefinitionService
from podium.server.engine.delayed import delayed_start, start_time_violations
from podium.server.engine.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from podium.server.engine.keys import run_keying, waiting_reason
from podium.server.engine.lru import LRUCache
from podium.server.engine.mapping import (
    RUN_STATE_NAMES,
    created_to_proto,
    deliverable_to_proto,
    event_to_proto,
    run_to_proto,
    running_agents,
    set_agent_waits,
    set_organization_waits,
    set_rate_waits,
)
from podium.server.engine.paging import bounded_keyset_page, decode_keyset, page_size
from podium.server.engine.plan import RunTemplate, build_steps, first_steps, fork_redo, run_template
from podium.server.engine.policies import RoutingPolicies
from podium.server.engine.references import normalize_numbers
from podium.server.engine.requests import (
    parse_run_id,
    request_id_violations,
    struct_violations,
)
from podium.server.engine.sizes import fit_run, fitting_count, response_budget
from podium.server.engine.start_rate import StartRateLimiter
from podium.server.engine.step_credentials import StepAttemptRef
from podium.server.engine.storage_errors import storage_errors
from podium.server.engine.usage import UsageService
from podium.server.engine.validation import validate_plan
from podium.server.storage.agents import AgentsRepository
from podium.server.storage.runs import (
    CreatedRun,
    NewRun,
    RunRow,
    RunsRepository,
)
from podium.server.telemetry.metrics import Metrics
from podium.server.telemetry.tracing import Tracing

if TYPE_CHECKING:
    from podium.server.engine.scheduler import Scheduler

__all__ = ["MAX_LABELS", "RunService"]

MAX_LABELS = 64


class RunService:
    """Use cases behind the Run RPCs."""

    def __init__(
        self,
        repository: RunsRepository,
        definitions: DefinitionService,
        settings: Settings,
        agents: AgentsRepository | None = None,
    ) -> None:
        self._repository = repository
        self._agents = agents
        self._definitions = definitions
        self._settings = settings
        self.metrics = Metrics()
        self.tracing = Tracing()
        self.scheduler: Scheduler | None = None
        """This replica's scheduler: StartRun claims a run's first steps for it."""
        self.max_response_bytes = response_budget(settings.max_message_bytes)
        """What one run, event or page may take in a response."""
        self.start_rate: StartRateLimiter | None = None
        """The per-organization StartRun rate limit, when PODIUM_START_RUN_RATE is set."""
        self.usage: UsageService | None = None
        """Quotas (StartRun) and the usage and budget of a run (GetRun); set by the
        engine."""
        self.unavailable_agents: (
            Callable[[str, Sequence[str]], Awaitable[Collection[str]]] | None
        ) = None
        """Of an organization's agents, those this replica sees not serving
        (``AgentService.unavailable``): GetRun says why their running steps wait; set by
        the engine."""
        self.policies: RoutingPolicies | None = None
        """The organizations' routing policies, checked at StartRun; set by the engine."""
        self._templates: LRUCache[tuple[str, str, int, str, bool], RunTemplate] = LRUCache(
            settings.cache_max_definitions
        )

    def instrument(self, metrics: Metrics, tracing: Tracing) -> None:
        """Record into the server's ``metrics`` and ``tracing`` instead of the private
        defaults."""
        self.metrics = metrics
        self.tracing = tracing

    # -- start -----------------------------------------------------------------------

    async def start(
        self,
        organization_id: str,
        request: pb.StartRunRequest,
        trace_carrier: Mapping[str, str] | None = None,
        parent: StepAttemptRef | None = None,
    ) -> tuple[run_pb2.Run, bool]:
        """Create (and unless ``start`` is false, start) a run; see StartRunRequest.

        ``trace_carrier``: the caller's W3C ``traceparent``/``tracestate`` (StartRun call
        metadata); the run joins that trace and stores its context for its steps.
        ``parent``: the step attempt whose credential the caller holds; the run becomes a
        child run of that step (started at once, never delayed).
        """
        violations = request_id_violations(request.request_id)
        if parent is not None and (not request.start or request.HasField("start_time")):
            violations.append(
                FieldViolation(
                    field="start" if not request.start else "start_time",
                    description="a run started with a step credential starts at once: set "
                    "`start` true, without `start_time`",
                )
            )
        if len(request.labels) > MAX_LABELS:
            violations.append(
                FieldViolation(field="labels", description=f"at most {MAX_LABELS} labels")
            )
        violations.extend(struct_violations(request.input, "input"))
        violations.extend(struct_violations(request.metadata, "metadata"))
        source = request.WhichOneof("source")
        if source is None:
            violations.append(
                FieldViolation(
                    field="definition",
                    description="set `definition` (a saved definition) or `plan` (an inline plan)",
                )
            )
        violations.extend(start_time_violations(request))
        if violations:
            raise InvalidArgument("StartRun request is invalid", violations=violations)
        if self.start_rate is not None:
            await self.start_rate.check(organization_id)
        if self.usage is not None:
            await self.usage.check_quota(organization_id)

        if source == "definition":
            ref = request.definition
            if not ref.name:
                raise InvalidArgument(
                    "definition.name is required",
                    violations=[FieldViolation(field="definition.name", description="required")],
                )
            # Fresh: the archived flag can change on another replica.
            plan = await self._definitions.get(organization_id, ref.name, ref.version, fresh=True)
            if plan.archived:
                raise FailedPrecondition(
                    f"definition {plan.name!r} is archived; new runs are refused",
                    reason="DEFINITION_ARCHIVED",
                    metadata={"name": plan.name},
                )
            definition_name: str | None = plan.name
            definition_version: int | None = plan.version
        else:
            plan = request.plan
            found = validate_plan(plan, field_prefix="plan")
            if found:
                raise InvalidArgument(
                    f"plan is invalid: {len(found)} problem(s)",
                    reason="INVALID_DEFINITION",
                    violations=found,
                )
            definition_name = definition_version = None
        if self.policies is not None:
            # Against the current policy: it may have changed since the definition was
            # saved. A saved definition's violations name its steps (`steps[i].agent`).
            refused = await self.policies.plan_violations(
                organization_id, plan, "plan" if source == "plan" else ""
            )
            if refused:
                raise InvalidArgument(
                    f"the routing policy refuses {len(refused)} step(s) of the plan",
                    reason="POLICY_DENIED",
                    violations=refused,
                )

        run_input = normalize_numbers(json_format.MessageToDict(request.input))
        keying = run_keying(
            plan, run_input, request.priority if request.HasField("priority") else None
        )
        metadata = normalize_numbers(json_format.MessageToDict(request.metadata))
        labels = {**dict(plan.labels), **dict(request.labels)}
        if source == "definition":
            template: RunTemplate | None = self.template(
                organization_id, plan, bypass_cache=request.bypass_cache
            )
            assert template is not None
            plan_dict = template.plan
        else:
            template = None
            plan_dict = json_format.MessageToDict(plan, preserving_proto_field_name=True)
        attributes = (
            {
                "podium.organization_id": organization_id,
                "podium.definition.name": definition_name or "",
                "podium.definition.version": definition_version or 0,
            }
            if self.tracing.enabled
            else {}
        )
        # The run span covers the creation; its context is stored with the run.
        with self.tracing.run_span(trace_carrier, attributes) as (span, trace_context):
            new = NewRun(
                organization_id=organization_id,
                definition_name=definition_name,
                definition_version=definition_version,
                plan=plan_dict,
                input=run_input,
                metadata=metadata,
                labels=labels,
                request_id=request.request_id or None,
                max_parallel=self.effective_max_parallel(plan),
                bypass_cache=request.bypass_cache,
                webhook_url=request.webhook_url or None,
                steps=template.steps
                if template is not None and template.steps is not None
                else build_steps(
                    plan,
                    plan_dict,
                    caching_scope=None
                    if request.bypass_cache or not caching_requested(plan)
                    else cache_scope(plan, definition_name, definition_version),
                    cache_ttl_seconds=self._settings.cache_default_ttl_seconds,
                    bypass_cache=request.bypass_cache,
                    run_metadata=metadata,
                ),
                trace_context=trace_context,
                keying=keying,
                encoded=template.encoded if template is not None else None,
            )
            start_at = delayed_start(request)
            async with storage_errors():
                if parent is not None:
                    stored = await self._create_linked(parent, new)
                elif start_at is not None:
                    stored = await self._repository.create_delayed(new, start_at)
                else:
                    stored = await self._create(new, start=request.start)
            if span.is_recording():
                span.set_attribute("podium.run_id", str(stored.run.id))
                span.set_attribute("podium.run.existing", not stored.created)
        skeleton = template.response if template is not None else None
        return self._created(stored, plan, skeleton), not stored.created

    async def _create_linked(self, parent: StepAttemptRef, new: NewRun) -> CreatedRun:
        """Create the run as a child of the step attempt ``parent``, or raise."""
        status, stored = await self._repository.create_linked(
            (parent.run_id, parent.step_id, parent.attempt),
            new,
            self._settings.max_orchestration_depth,
            self._settings.max_runs_per_step,
        )
        metadata = {"run_id": str(parent.run_id), "step_id": parent.step_id}
        if status == "too_deep":
            raise FailedPrecondition(
                "the run would nest child runs deeper than "
                f"ORCHESTRATION_MAX_DEPTH={self._settings.max_orchestration_depth}",
                reason="MAX_DEPTH_EXCEEDED",
                metadata=metadata,
            )
        if status == "too_many":
            raise ResourceExhausted(
                f"step {parent.step_id!r} already started "
                f"ORCHESTRATION_MAX_RUNS_PER_STEP={self._settings.max_runs_per_step} runs",
                reason="STEP_RUN_LIMIT",
                metadata=metadata,
            )
        if status == "request_id_taken":
            raise AlreadyExists(
                "the request_id is taken by another run of the organization; use another",
                reason="REQUEST_ID_TAKEN",
            )
        if stored is None:
            raise FailedPrecondition(
                f"step {parent.step_id!r} of run {parent.run_id} no longer runs attempt "
                f"{parent.attempt}",
                reason="STEP_ATTEMPT_ENDED",
                metadata=metadata,
            )
        return stored

    async def _create(self, new: NewRun, *, start: bool) -> CreatedRun:
        """Create the run; when started, its runnable steps are claimed for this
        replica's scheduler in the same statement and handed to it (eager dispatch),
        even if the caller is cancelled once the statement is sent."""
        scheduler = self.scheduler
        claim = scheduler.eager_claim(first_steps(new)) if scheduler is not None and start else None
        if scheduler is None or claim is None:
            return await self._repository.create(new, start=start)
        created = asyncio.ensure_future(self._repository.create(new, start=start, claim=claim))

        def dispatch(task: asyncio.Future[CreatedRun]) -> None:
            if task.cancelled() or task.exception() is not None:
                scheduler.dispatch(claim, [])
                return
            scheduler.dispatch(claim, task.result().claimed)

        created.add_done_callback(dispatch)
        return await asyncio.shield(created)

    async def fork(
        self,
        organization_id: str,
        request: pb.ForkRunRequest,
        trace_carrier: Mapping[str, str] | None = None,
    ) -> tuple[run_pb2.Run, bool]:
        """ForkRun ("rerun from here"): a new run of a finished run's plan that re-executes
        ``step_ids``, every step whose input resolves differently with the new ``input``
        (unset: the original input), and everything downstream of them; it copies the
        outputs of the other succeeded steps. Steps that did not succeed in the source
        run execute too. Returns (run, existing) like StartRun (``request_id`` makes it
        idempotent)."""
        rid = parse_run_id(request.run_id)
        violations = request_id_violations(request.request_id)
        if request.HasField("input"):
            violations.extend(struct_violations(request.input, "input"))
        if not request.step_ids and not request.HasField("input"):
            violations.append(
                FieldViolation(
                    field="step_ids",
                    description="name at least one step to re-run, or give a new input",
                )
            )
        if violations:
            raise InvalidArgument("ForkRun request is invalid", violations=violations)
        async with storage_errors():
            stored = await self._repository.get_with_steps(organization_id, rid)
        if stored is None:
            raise NotFound(
                f"run {request.run_id} not found",
                reason="RUN_NOT_FOUND",
                metadata={"run_id": request.run_id},
            )
        source, steps, _, _ = stored
        if source.state not in ("succeeded", "failed", "cancelled"):
            raise FailedPrecondition(
                f"run {request.run_id} is {source.state}; only a finished run can be forked",
                reason="RUN_NOT_FINISHED",
                metadata={"run_id": request.run_id, "state": source.state},
            )
        known = {s.step_id for s in steps}
        unknown = [
            FieldViolation(field=f"step_ids[{i}]", description=f"run has no step {step_id!r}")
            for i, step_id in enumerate(request.step_ids)
            if step_id not in known
        ]
        if unknown:
            raise InvalidArgument("ForkRun names unknown steps", violations=unknown)
        run_input = (
            normalize_numbers(json_format.MessageToDict(request.input))
            if request.HasField("input")
            else source.input
        )
        # Re-execute the named steps, the steps whose input a new run input changes, and
        # everything downstream; copy the rest that succeeded.
        redo = fork_redo(steps, set(request.step_ids), run_input, source.input)
        copied = [s.step_id for s in steps if s.state == "succeeded" and s.step_id not in redo]
        if len(copied) == len(steps):
            raise FailedPrecondition(
                f"forking run {request.run_id} would re-execute no step: the new input "
                "changes no step's input; name a step to re-run in step_ids",
                reason="NOTHING_TO_RERUN",
                metadata={"run_id": request.run_id},
            )
        plan = definition_pb2.Definition()
        json_format.ParseDict(source.plan, plan, ignore_unknown_fields=True)
        # The fork's key comes from its own input; it keeps the source run's priority.
        keying = run_keying(plan, run_input, source.priority)
        with self.tracing.run_span(trace_carrier, {}) as (_, trace_context):
            new = NewRun(
                organization_id=organization_id,
                definition_name=source.definition_name,
                definition_version=source.definition_version,
                plan=source.plan,
                input=run_input,
                metadata=source.metadata,
                labels=source.labels,
                request_id=request.request_id or None,
                max_parallel=source.max_parallel,
                bypass_cache=source.bypass_cache,
                webhook_url=source.webhook_url,
                steps=build_steps(
                    plan,
                    source.plan,
                    caching_scope=None
                    if source.bypass_cache or not caching_requested(plan)
                    else cache_scope(plan, source.definition_name, source.definition_version),
                    cache_ttl_seconds=self._settings.cache_default_ttl_seconds,
                    bypass_cache=source.bypass_cache,
                    run_metadata=source.metadata,
                ),
                trace_context=trace_context,
                forked_from_run_id=rid,
                copied_steps=copied,
                keying=keying,
            )
            async with storage_errors():
                forked = await self._repository.create(new, start=True)
        return self._created(forked, plan), not forked.created

    async def scheduled_run(
        self,
        organization_id: str,
        definition: tuple[str, int],
        run_input: dict[str, Any],
        labels: Mapping[str, str],
        request_id: str,
    ) -> NewRun:
        """The run a schedule's tick starts: the definition ``(name, version)`` (0: the
        latest) with ``run_input``, ``labels`` merged over the definition's, and the
        tick's ``request_id``. Raises NotFound / FailedPrecondition (archived)."""
        name, version = definition
        plan = await self._definitions.get(organization_id, name, version, fresh=True)
        if plan.archived:
            raise FailedPrecondition(
                f"definition {plan.name!r} is archived; new runs are refused",
                reason="DEFINITION_ARCHIVED",
                metadata={"name": plan.name},
            )
        template = self.template(organization_id, plan, bypass_cache=False)
        return NewRun(
            organization_id=organization_id,
            definition_name=plan.name,
            definition_version=plan.version,
            plan=template.plan,
            input=run_input,
            metadata={},
            labels={**dict(plan.labels), **dict(labels)},
            request_id=request_id,
            max_parallel=self.effective_max_parallel(plan),
            bypass_cache=False,
            webhook_url=None,
            steps=template.steps
            if template.steps is not None
            else build_steps(
                plan,
                template.plan,
                caching_scope=cache_scope(plan, plan.name, plan.version)
                if caching_requested(plan)
                else None,
                cache_ttl_seconds=self._settings.cache_default_ttl_seconds,
                bypass_cache=False,
            ),
            trace_context=None,
            keying=run_keying(plan, run_input, None),
            encoded=template.encoded,
        )

    def template(
        self, organization_id: str, plan: definition_pb2.Definition, *, bypass_cache: bool
    ) -> RunTemplate:
        """The run template of saved version ``plan`` (``engine/plan.py``), from this
        replica's cache when it has it. Keyed by (organization, name, version, content
        hash, ``bypass_cache``): a version never changes, and the hash guards against a
        reused (organization, name, version) of another database. What may change is
        checked by the caller on every run: the archived flag (read fresh) and the
        routing policy."""
        key = (organization_id, plan.name, plan.version, plan.content_hash, bypass_cache)
        template = self._templates.get(key)
        if template is None:
            template = run_template(
                plan,
                caching_scope=None
                if bypass_cache or not caching_requested(plan)
                else cache_scope(plan, plan.name, plan.version),
                cache_ttl_seconds=self._settings.cache_default_ttl_seconds,
                bypass_cache=bypass_cache,
            )
            self._templates.put(key, template)
        return template

    def _created(
        self,
        stored: CreatedRun,
        plan: definition_pb2.Definition,
        skeleton: run_pb2.Run | None = None,
    ) -> run_pb2.Run:
        """The response of StartRun / ForkRun, fitted to ``max_response_bytes``
        (``skeleton``: the run template's, ``mapping.response_skeleton``)."""
        run = created_to_proto(stored, plan, skeleton)
        steps = {s.step_id: s for s in stored.steps}

        def source(step_id: str, field: str) -> Any:
            return getattr(steps[step_id] if step_id else stored.run, field)

        fit_run(run, self.max_response_bytes, source)
        return run

    def effective_max_parallel(self, plan: definition_pb2.Definition) -> int:
        """definition, then ORCHESTRATION_DEFAULT_MAX_PARALLEL, then
        ORCHESTRATION_MAX_CONCURRENCY, then 1 (sequential)."""
        return (
            plan.execution.concurrency.max_parallel
            or self._settings.default_max_parallel
            or self._settings.max_concurrency
            or 1
        )

    # -- reads -----------------------------------------------------------------------

    async def get(
        self, organization_id: str, run_id: str, view: int = run_pb2.RUN_VIEW_FULL
    ) -> run_pb2.Run:
        """The run with its steps, attempts and deliverables, in ``view`` (a
        ``RunView``; unspecified is FULL); a FULL run too large for one response leaves
        out its largest payloads (``sizes.fit_run``)."""
        basic = _is_basic(view, default=run_pb2.RUN_VIEW_FULL)
        rid = parse_run_id(run_id)
        async with storage_errors():
            found = await self._repository.get_with_steps(organization_id, rid)
        if found is None:
            raise NotFound(
                f"run {run_id} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
            )
        run = run_to_proto(*found, basic=basic)
        row = found[0]
        if not row.key_admitted and row.state == "running" and row.concurrency_key is not None:
            async with storage_errors():
                running = await self._repository.key_running(organization_id, row.concurrency_key)
            run.waiting_reason = waiting_reason(row.concurrency_key, running, row.max_runs_per_key)
        if not basic:
            stored, steps = found[0], {s.step_id: s for s in found[1]}

            def source(step_id: str, field: str) -> Any:
                return getattr(steps[step_id] if step_id else stored, field)

            fit_run(run, self.max_response_bytes, source)
        queued = [s for s in found[1] if s.state == "queued" and (s.agent or s.skill)]
        if queued and self._agents is not None:
            async with storage_errors():
                waits = await self._agents.step_rate_waits(
                    organization_id,
                    rid,
                    [(s.step_id, s.agent, s.skill) for s in queued],
                    row.concurrency_key,
                )
            set_rate_waits(run, waits)
        cap = self._settings.max_running_steps_per_org
        if cap > 0 and any(s.state == "queued" for s in found[1]):
            async with storage_errors():
                at_cap = await self._repository.org_running(organization_id) >= cap
            if at_cap:
                set_organization_waits(run)
        attempts_on = running_agents(run)
        if attempts_on and self.unavailable_agents is not None:
            down = await self.unavailable_agents(organization_id, sorted(set(attempts_on.values())))
            set_agent_waits(run, {s: a for s, a in attempts_on.items() if a in down})
        if self.usage is not None:
            await self.usage.fill_run(organization_id, run)
        return run

    async def check_scope(
        self, organization_id: str, run_id: str, scope: StepAttemptRef | None
    ) -> None:
        """NotFound unless run ``run_id`` is a child run of the step credential's step
        (``scope``); nothing to check without one."""
        if scope is None:
            return
        rid = parse_run_id(run_id)
        async with storage_errors():
            row = await self._repository.get(organization_id, rid)
        if row is None or row.parent_run_id != scope.run_id or row.parent_step_id != scope.step_id:
            raise NotFound(
                f"run {run_id} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
            )

    async def list_runs(
        self,
        organization_id: str,
        request: pb.ListRunsRequest,
        scope: StepAttemptRef | None = None,
    ) -> tuple[list[run_pb2.Run], str]:
        """A page of runs (without steps), newest first, in the request's view
        (unspecified is BASIC), bounded by ``max_response_bytes``. ``scope``: a step
        credential's attempt, which lists only the child runs of its step."""
        if scope is not None:
            scoped = pb.ListRunsRequest()
            scoped.CopyFrom(request)
            scoped.parent_run_id = str(scope.run_id)
            scoped.parent_step_id = scope.step_id
            request = scoped
        if request.parent_step_id and not request.parent_run_id:
            raise InvalidArgument(
                "parent_step_id needs parent_run_id",
                violations=[
                    FieldViolation(field="parent_step_id", description="set parent_run_id with it")
                ],
            )
        basic = _is_basic(request.view, default=run_pb2.RUN_VIEW_BASIC)
        size = page_size(request.page_size)
        states = []
        for i, state in enumerate(request.states):
            if state not in RUN_STATE_NAMES:
                raise InvalidArgument(
                    "unknown run state",
                    violations=[
                        FieldViolation(field=f"states[{i}]", description="unknown run state")
                    ],
                )
            states.append(RUN_STATE_NAMES[state])
        parent = (
            parse_run_id(request.parent_run_id, "parent_run_id") if request.parent_run_id else None
        )
        filters: dict[str, Any] = {
            "states": sorted(states),
            "definition": request.definition_name,
            "labels": dict(sorted(request.labels.items())),
            "parent": request.parent_run_id,
        }
        if request.parent_step_id:  # (tokens of lists without it stay as they were)
            filters["parent_step"] = request.parent_step_id
        after = decode_keyset(request.page_token, filters)
        async with storage_errors():
            rows = await self._repository.list_runs(
                organization_id,
                states=states,
                definition_name=request.definition_name or None,
                labels=dict(request.labels),
                parent_run_id=parent,
                after=after,
                limit=size + 1,
                payloads=not basic,
                parent_step_id=request.parent_step_id or None,
            )

        def convert(row: RunRow) -> run_pb2.Run:
            run = run_to_proto(row, basic=basic)
            if not basic:
                fit_run(run, self.max_response_bytes, lambda _, field: getattr(row, field))
            return run

        return bounded_keyset_page(rows, size, filters, convert, self.max_response_bytes)

    # -- commands --------------------------------------------------------------------

    async def cancel(self, organization_id: str, run_id: str, reason: str) -> run_pb2.Run:
        """Cancel a run; cancelling a cancelled run is a no-op, a finished one an error."""
        rid = parse_run_id(run_id)
        async with storage_errors():
            before, state = await self._repository.cancel_transition(organization_id, rid, reason)
        if state is None:
            raise NotFound(
                f"run {run_id} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
            )
        if state in ("succeeded", "failed"):
            raise FailedPrecondition(
                f"run {run_id} already {state}; only unfinished runs can be cancelled",
                reason="RUN_FINISHED",
                metadata={"run_id": run_id, "state": state},
            )
        run = await self.get(organization_id, run_id)
        if before != state:  # this call cancelled it
            start = run.start_time if run.HasField("start_time") else run.create_time
            seconds = (run.end_time.ToNanoseconds() - start.ToNanoseconds()) / 1e9
            self.metrics.run_ended("cancelled", seconds if run.HasField("end_time") else None)
        return run

    async def continue_(
        self, organization_id: str, run_id: str, extra_input: struct_pb2.Struct
    ) -> run_pb2.Run:
        """ContinueRun (seed mode continue): start a run created with ``start=false``, or
        give more input to a running run that waits on a checkpoint. ``extra_input`` is
        merged over the run's input; steps resolved afterwards (a checkpointed step
        once approved, and every later step) see it."""
        rid = parse_run_id(run_id)
        problems = struct_violations(extra_input, "input")
        if problems:
            raise InvalidArgument("ContinueRun input is invalid", violations=problems)
        async with storage_errors():
            status = await self._repository.continue_run(
                organization_id,
                rid,
                normalize_numbers(json_format.MessageToDict(extra_input)) or None,
            )
        if status is None:
            raise NotFound(
                f"run {run_id} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
            )
        if status not in ("started", "continued"):
            raise FailedPrecondition(
                f"run {run_id} is {status}; ContinueRun starts a run created with start=false "
                "or gives input to a running run that waits on a checkpoint",
                reason="RUN_NOT_CONTINUABLE",
                metadata={"run_id": run_id, "state": status},
            )
        return await self.get(organization_id, run_id)

    async def resume(self, organization_id: str, run_id: str) -> run_pb2.Run:
        """ResumeRun: run a failed or cancelled run again. Its failed, cancelled and
        skipped steps and everything downstream of them are queued again; succeeded
        steps keep their outputs; ``run_attempt`` grows by one."""
        rid = parse_run_id(run_id)
        async with storage_errors():
            before = await self._repository.resume(organization_id, rid)
        if before is None:
            raise NotFound(
                f"run {run_id} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
            )
        if before == "child":
            raise FailedPrecondition(
                f"run {run_id} is the child run of a sub-orchestration; resume its parent run, "
                "which starts a new child",
                reason="RUN_IS_CHILD",
                metadata={"run_id": run_id},
            )
        if before not in ("failed", "cancelled"):
            raise FailedPrecondition(
                f"run {run_id} is {before}; only a failed or cancelled run can be resumed",
                reason="RUN_NOT_RESUMABLE",
                metadata={"run_id": run_id, "state": before},
            )
        return await self.get(organization_id, run_id)

    async def list_events(
        self, organization_id: str, run_id: str, after_sequence: int, limit: int
    ) -> tuple[list[event_pb2.RunEvent], int]:
        """A page of a run's event log and the sequence to continue after (0 at the end)."""
        rid = parse_run_id(run_id)
        size = page_size(limit, default=100, maximum=1000)
        if after_sequence < 0:
            raise InvalidArgument(
                "after_sequence must not be negative",
                violations=[FieldViolation(field="after_sequence", description="must be >= 0")],
            )
        async with storage_errors():
            run = await self._repository.get(organization_id, rid)
            if run is None:
                raise NotFound(
                    f"run {run_id} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
                )
            rows = await self._repository.list_events(organization_id, rid, after_sequence, size)
        name = run.definition_name or ""
        events = [event_to_proto(e, name, max_bytes=self.max_response_bytes) for e in rows]
        count = fitting_count(events, self.max_response_bytes)
        if count < len(events):  # the page stops early: more follows
            return events[:count], rows[count - 1].sequence
        more = bool(rows) and len(rows) == size and rows[-1].sequence < run.last_event_sequence
        return events, (rows[-1].sequence if more else 0)

    async def list_deliverables(
        self, organization_id: str, request: pb.ListDeliverablesRequest
    ) -> tuple[list[run_pb2.Deliverable], str]:
        """A page of a run's deliverables."""
        rid = parse_run_id(request.run_id)
        size = page_size(request.page_size)
        filters = {"run": request.run_id, "step": request.step_id, "data": request.include_data}
        after = decode_keyset(request.page_token, filters)
        async with storage_errors():
            if await self._repository.get(organization_id, rid) is None:
                raise NotFound(f"run {request.run_id} not found", reason="RUN_NOT_FOUND")
            rows = await self._repository.list_deliverables(
                organization_id,
                rid,
                step_id=request.step_id or None,
                include_data=request.include_data,
                after=after,
                limit=size + 1,
            )
        return bounded_keyset_page(
            rows, size, filters, deliverable_to_proto, self.max_response_bytes
        )


def _is_basic(view: int, *, default: int) -> bool:
    """Whether ``view`` (a ``RunView``, ``default`` when unspecified) is BASIC; an
    unknown value is INVALID_ARGUMENT."""
    if view not in run_pb2.RunView.values():
        raise InvalidArgument(
            "unknown run view",
            violations=[
                FieldViolation(
                    field="view",
                    description="RUN_VIEW_UNSPECIFIED, RUN_VIEW_BASIC or RUN_VIEW_FULL",
                )
            ],
        )
    return (view or default) == run_pb2.RUN_VIEW_BASIC
