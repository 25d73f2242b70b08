"""Runs: StartRun / GetRun / ListRuns / CancelRun / ContinueRun and the run log.

A run is created with all its steps in one transaction (``RunsRepository.create``),
all ``pending``; starting it (at once, or on ContinueRun) queues the steps without
dependencies. Each step row stores
its effective failure policy (the step's ``on_failure`` over the definition's, field by
field), the ids of the steps its input references (so the claim returns their outputs)
and whether it is a sink (its output is part of the run output).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from podium.orchestration.v1 import definition_pb2, event_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.config import Settings
from podium.server.engine.cache import cache_scope, caching_requested, step_policy
from podium.server.engine.definitions import DefinitionService
from podium.server.engine.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from podium.server.engine.paging import decode_keyset, keyset_page, page_size
from podium.server.engine.references import find_references, normalize_numbers
from podium.server.engine.storage_errors import storage_errors
from podium.server.engine.validation import validate_plan
from podium.server.storage.runs import (
    AttemptRow,
    CreatedRun,
    DeliverableRow,
    EventRow,
    NewRun,
    NewStep,
    RunRow,
    RunsRepository,
    StepRow,
)
from podium.server.storage.steps import Backoff, FailurePolicy, StepSpec
from podium.server.telemetry.metrics import Metrics
from podium.server.telemetry.tracing import Tracing

MAX_INPUT_BYTES = 1024 * 1024
MAX_REQUEST_ID_LENGTH = 128
MAX_LABELS = 64

_RUN_STATES = {
    "created": run_pb2.Run.STATE_CREATED,
    "running": run_pb2.Run.STATE_RUNNING,
    "paused": run_pb2.Run.STATE_PAUSED,
    "succeeded": run_pb2.Run.STATE_SUCCEEDED,
    "failed": run_pb2.Run.STATE_FAILED,
    "cancelled": run_pb2.Run.STATE_CANCELLED,
}
_RUN_STATE_NAMES = {v: k for k, v in _RUN_STATES.items()}
_STEP_STATES = {
    "pending": run_pb2.StepRun.STATE_PENDING,
    "queued": run_pb2.StepRun.STATE_QUEUED,
    "running": run_pb2.StepRun.STATE_RUNNING,
    "waiting_retry": run_pb2.StepRun.STATE_WAITING_RETRY,
    "awaiting_approval": run_pb2.StepRun.STATE_AWAITING_APPROVAL,
    "succeeded": run_pb2.StepRun.STATE_SUCCEEDED,
    "failed": run_pb2.StepRun.STATE_FAILED,
    "skipped": run_pb2.StepRun.STATE_SKIPPED,
    "cancelled": run_pb2.StepRun.STATE_CANCELLED,
}
_EVENT_TYPES = {
    name.removeprefix("TYPE_").lower().replace("_", ".", 1): value
    for name, value in event_pb2.RunEvent.Type.items()
    if name != "TYPE_UNSPECIFIED"
}


def _ts(value: datetime | None, target: Timestamp) -> None:
    if value is not None:
        target.FromDatetime(value)


def _struct(value: Any, target: struct_pb2.Struct) -> None:
    if isinstance(value, Mapping):
        target.update(value)


def _usage(row: RunRow | StepRow, target: run_pb2.RunUsage) -> None:
    target.input_tokens = row.input_tokens
    target.output_tokens = row.output_tokens
    target.cost_usd = row.cost_usd


def _error(value: Mapping[str, Any] | None, target: run_pb2.ErrorDetail) -> None:
    if value:
        target.code = str(value.get("code", ""))
        target.message = str(value.get("message", ""))
        target.retryable = bool(value.get("retryable", False))
        target.step_id = str(value.get("step_id", "") or "")


def json_violations(struct: struct_pb2.Struct, field: str, limit: int = 20) -> list[FieldViolation]:
    """Values JSON (and so Postgres jsonb) cannot hold: NaN, infinities, NUL characters."""
    found: list[FieldViolation] = []

    def walk(value: struct_pb2.Value, path: str) -> None:
        if len(found) >= limit:
            return
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            found.append(
                FieldViolation(
                    field=path, description="numbers must be finite (no NaN or infinity)"
                )
            )
        elif kind == "string_value" and "\x00" in value.string_value:
            found.append(
                FieldViolation(field=path, description="strings must not contain NUL characters")
            )
        elif kind == "struct_value":
            fields(value.struct_value, path)
        elif kind == "list_value":
            for i, item in enumerate(value.list_value.values):
                walk(item, f"{path}[{i}]")

    def fields(node: struct_pb2.Struct, path: str) -> None:
        for key, item in node.fields.items():
            if "\x00" in key:
                found.append(
                    FieldViolation(field=path, description="keys must not contain NUL characters")
                )
                continue
            walk(item, f"{path}.{key}")

    fields(struct, field)
    return found


def struct_violations(struct: struct_pb2.Struct, field: str) -> list[FieldViolation]:
    """The problems of a request Struct (run input, metadata, an approval's input): larger
    than MAX_INPUT_BYTES serialized, else any value JSON cannot hold."""
    size = struct.ByteSize()
    if size > MAX_INPUT_BYTES:
        return [FieldViolation(field=field, description=f"{size} bytes; at most {MAX_INPUT_BYTES}")]
    return json_violations(struct, field)


def request_id_violations(request_id: str) -> list[FieldViolation]:
    """An idempotency key longer than MAX_REQUEST_ID_LENGTH, as a field violation."""
    if len(request_id) <= MAX_REQUEST_ID_LENGTH:
        return []
    return [
        FieldViolation(
            field="request_id", description=f"at most {MAX_REQUEST_ID_LENGTH} characters"
        )
    ]


def parse_run_id(run_id: str, field: str = "run_id") -> uuid.UUID:
    """``run_id`` as a UUID, or InvalidArgument naming ``field``."""
    try:
        return uuid.UUID(run_id)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a run id (a UUID), got {run_id!r}",
            violations=[FieldViolation(field=field, description="must be a UUID")],
        ) from None


def run_to_proto(
    run: RunRow,
    steps: list[StepRow] | None = None,
    attempts: list[AttemptRow] | None = None,
    deliverables: list[DeliverableRow] | None = None,
    *,
    plan: definition_pb2.Definition | None = None,
) -> run_pb2.Run:
    """The API form of a stored run (with its steps when given). ``plan``, when the
    caller has it, saves parsing the stored plan again."""
    out = run_pb2.Run(
        id=str(run.id),
        organization_id=run.organization_id,
        definition_name=run.definition_name or "",
        definition_version=run.definition_version or 0,
        state=_RUN_STATES[run.state],
        labels=run.labels,
        request_id=run.request_id or "",
        run_attempt=run.run_attempt,
        parent_run_id=str(run.parent_run_id) if run.parent_run_id else "",
        parent_step_id=run.parent_step_id or "",
        forked_from_run_id=str(run.forked_from_run_id) if run.forked_from_run_id else "",
        rollback_hints=run.rollback_hints or [],
        last_event_sequence=run.last_event_sequence,
        max_parallel=run.max_parallel,
        webhook_url=run.webhook_url or "",
    )
    _struct(run.input, out.input)
    _struct(run.output, out.output)
    _struct(run.metadata, out.metadata)
    _error(run.error, out.error)
    _ts(run.created_at, out.create_time)
    _ts(run.started_at, out.start_time)
    _ts(run.ended_at, out.end_time)
    _usage(run, out.usage)
    if plan is not None:
        out.plan.CopyFrom(plan)
    else:
        json_format.ParseDict(run.plan, out.plan, ignore_unknown_fields=True)
    if steps is not None:
        by_step: dict[str, list[AttemptRow]] = {}
        for attempt in attempts or []:
            by_step.setdefault(attempt.step_id, []).append(attempt)
        files: dict[str, list[DeliverableRow]] = {}
        for d in deliverables or []:
            files.setdefault(d.step_id or "", []).append(d)
        for step in steps:
            out.steps.append(
                _step_to_proto(step, by_step.get(step.step_id, []), files.get(step.step_id, []))
            )
    return out


def _step_to_proto(
    step: StepRow, attempts: list[AttemptRow], files: list[DeliverableRow]
) -> run_pb2.StepRun:
    out = run_pb2.StepRun(
        step_id=step.step_id,
        state=_STEP_STATES[step.state],
        attempt=step.attempt,
        max_attempts=step.max_attempts,
        agent=step.agent or "",
        conversation_id=str(step.conversation_id) if step.conversation_id else "",
        cached=step.cached,
        cache_source_run_id=str(step.cache_source_run_id) if step.cache_source_run_id else "",
        child_run_id=str(step.child_run_id) if step.child_run_id else "",
        approval_id=str(step.approval_id) if step.approval_id else "",
        depends_on=step.depends_on,
    )
    _struct(step.input, out.input)
    _struct(step.output, out.output)
    _error(step.error, out.error)
    _ts(step.queued_at, out.queue_time)
    _ts(step.started_at, out.start_time)
    _ts(step.ended_at, out.end_time)
    _ts(step.next_attempt_at, out.next_attempt_time)
    _usage(step, out.usage)
    for attempt in attempts:
        a = out.attempts.add(number=attempt.attempt, agent=attempt.agent or "")
        _ts(attempt.started_at, a.start_time)
        _ts(attempt.ended_at, a.end_time)
        _error(attempt.error, a.error)
        if attempt.ended_at is not None:
            a.duration.FromTimedelta(attempt.ended_at - attempt.started_at)
    for d in files:
        out.deliverables.append(deliverable_to_proto(d))
    return out


def _created_to_proto(stored: CreatedRun, plan: definition_pb2.Definition) -> run_pb2.Run:
    """The response of StartRun / ForkRun: the run as ``RunsRepository.create`` returned
    it, with ``plan`` (the one just stored) when this call created it; an existing run
    (same request_id) may have another plan, so its own is parsed."""
    return run_to_proto(
        stored.run,
        stored.steps,
        stored.attempts,
        stored.deliverables,
        plan=plan if stored.created else None,
    )


def deliverable_to_proto(d: DeliverableRow) -> run_pb2.Deliverable:
    """The API form of a stored deliverable."""
    out = run_pb2.Deliverable(
        id=str(d.id),
        run_id=str(d.run_id),
        step_id=d.step_id or "",
        attempt=d.attempt or 0,
        conversation_id=str(d.conversation_id) if d.conversation_id else "",
        name=d.name,
        media_type=d.media_type,
        size_bytes=d.size_bytes,
        uri=d.uri or "",
        data=d.data or b"",
    )
    _ts(d.created_at, out.create_time)
    return out


def event_to_proto(event: EventRow, definition_name: str = "") -> event_pb2.RunEvent:
    """The API form of a stored event."""
    out = event_pb2.RunEvent(
        run_id=str(event.run_id),
        sequence=event.sequence,
        type=_EVENT_TYPES.get(event.type, event_pb2.RunEvent.TYPE_UNSPECIFIED),
        step_id=event.step_id or "",
        attempt=event.attempt or 0,
        organization_id=event.organization_id,
        run_state=_RUN_STATES.get(event.run_state or "", run_pb2.Run.STATE_UNSPECIFIED),
        step_state=_STEP_STATES.get(event.step_state or "", run_pb2.StepRun.STATE_UNSPECIFIED),
        definition_name=definition_name,
    )
    _ts(event.created_at, out.time)
    payload = event.payload or {}
    if "error" in payload and isinstance(payload["error"], Mapping):
        _error(payload["error"], out.error)
    if event.type == "step.progress":
        out.progress.message = str(payload.get("message", ""))
        out.progress.fraction = float(payload.get("fraction", -1.0))
        payload = {}
    elif event.type == "step.output_chunk":
        out.output_chunk.text = str(payload.get("text", ""))
        payload = {k: v for k, v in payload.items() if k != "text"}
    if event.type in ("step.awaiting_approval", "approval.decided"):
        out.approval.approval_id = str(payload.get("approval_id", ""))
        if payload.get("decision"):
            out.approval.decision = "DECISION_" + str(payload["decision"]).upper()
        out.approval.actor = str(payload.get("actor") or "")
    if event.type == "step.retrying":
        out.retry.next_attempt = int(payload.get("next_attempt", 0))
        if payload.get("next_attempt_at"):
            out.retry.next_attempt_time.FromJsonString(_rfc3339(str(payload["next_attempt_at"])))
    data = {k: v for k, v in payload.items() if k != "error"}
    if data:
        _struct(data, out.data)
    return out


def _rfc3339(text: str) -> str:
    # Postgres renders timestamptz in JSON as 2026-11-25T13:50:22.123+00:00.
    return datetime.fromisoformat(text).isoformat().replace("+00:00", "Z")


class RunService:
    """Use cases behind the Run RPCs."""

    def __init__(
        self, repository: RunsRepository, definitions: DefinitionService, settings: Settings
    ) -> None:
        self._repository = repository
        self._definitions = definitions
        self._settings = settings
        self.metrics = Metrics()
        self.tracing = Tracing()

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
    ) -> tuple[run_pb2.Run, bool]:
        """Create (and unless ``start`` is false, start) a run; see StartRunRequest.

        ``trace_carrier``: the caller's W3C ``traceparent``/``tracestate`` (StartRun call
        metadata); the run joins that trace and stores its context for its steps.
        """
        violations = request_id_violations(request.request_id)
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
        if violations:
            raise InvalidArgument("StartRun request is invalid", violations=violations)

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

        run_input = normalize_numbers(json_format.MessageToDict(request.input))
        metadata = normalize_numbers(json_format.MessageToDict(request.metadata))
        labels = {**dict(plan.labels), **dict(request.labels)}
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
                steps=build_steps(
                    plan,
                    plan_dict,
                    caching_scope=None
                    if request.bypass_cache or not caching_requested(plan)
                    else cache_scope(plan, definition_name, definition_version),
                    cache_ttl_seconds=self._settings.cache_default_ttl_seconds,
                    bypass_cache=request.bypass_cache,
                ),
                trace_context=trace_context,
            )
            async with storage_errors():
                stored = await self._repository.create(new, start=request.start)
            if span.is_recording():
                span.set_attribute("podium.run_id", str(stored.run.id))
                span.set_attribute("podium.run.existing", not stored.created)
        return _created_to_proto(stored, plan), not stored.created

    async def fork(
        self,
        organization_id: str,
        request: pb.ForkRunRequest,
        trace_carrier: Mapping[str, str] | None = None,
    ) -> tuple[run_pb2.Run, bool]:
        """ForkRun ("rerun from here"): a new run of a finished run's plan that re-executes
        ``step_ids`` and everything downstream of them, and copies the outputs of the
        other succeeded steps. ``input`` replaces the run input (unset: the original).
        Steps that did not succeed in the source run execute too. Returns (run,
        existing) like StartRun (``request_id`` makes it idempotent)."""
        rid = parse_run_id(request.run_id)
        violations = request_id_violations(request.request_id)
        if request.HasField("input"):
            violations.extend(struct_violations(request.input, "input"))
        if not request.step_ids:
            violations.append(
                FieldViolation(field="step_ids", description="name at least one step to re-run")
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
        # Re-execute the named steps and everything downstream; copy the rest that
        # succeeded.
        redo = set(request.step_ids)
        changed = True
        while changed:
            changed = False
            for step in steps:
                if step.step_id not in redo and redo.intersection(step.depends_on):
                    redo.add(step.step_id)
                    changed = True
        copied = [s.step_id for s in steps if s.state == "succeeded" and s.step_id not in redo]
        plan = definition_pb2.Definition()
        json_format.ParseDict(source.plan, plan, ignore_unknown_fields=True)
        run_input = (
            normalize_numbers(json_format.MessageToDict(request.input))
            if request.HasField("input")
            else source.input
        )
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
                ),
                trace_context=trace_context,
                forked_from_run_id=rid,
                copied_steps=copied,
            )
            async with storage_errors():
                forked = await self._repository.create(new, start=True)
        return _created_to_proto(forked, plan), not forked.created

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
        plan_dict = json_format.MessageToDict(plan, preserving_proto_field_name=True)
        new = NewRun(
            organization_id=organization_id,
            definition_name=plan.name,
            definition_version=plan.version,
            plan=plan_dict,
            input=child_input if isinstance(child_input, dict) else {"value": child_input},
            metadata={},
            labels=dict(plan.labels),
            request_id=None,
            max_parallel=self.effective_max_parallel(plan),
            bypass_cache=bypass_cache,
            webhook_url=None,
            # A child run caches like a run of its definition, unless the parent run
            # bypasses the cache (then its children do too).
            steps=build_steps(
                plan,
                plan_dict,
                caching_scope=cache_scope(plan, plan.name, plan.version)
                if caching_requested(plan) and not bypass_cache
                else None,
                cache_ttl_seconds=self._settings.cache_default_ttl_seconds,
                bypass_cache=bypass_cache,
            ),
            trace_context=trace_context,
        )
        async with storage_errors():
            status, child = await self._repository.create_child(
                parent, new, self._settings.max_orchestration_depth
            )
        message = ""
        if status == "too_deep":
            message = (
                f"starting {name!r} would nest sub-orchestrations deeper than "
                f"ORCHESTRATION_MAX_DEPTH={self._settings.max_orchestration_depth}"
            )
        return status, child, message

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

    async def get(self, organization_id: str, run_id: str) -> run_pb2.Run:
        """The run with its steps, attempts and deliverables."""
        rid = parse_run_id(run_id)
        async with storage_errors():
            found = await self._repository.get_with_steps(organization_id, rid)
        if found is None:
            raise NotFound(
                f"run {run_id} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
            )
        return run_to_proto(*found)

    async def list_runs(
        self, organization_id: str, request: pb.ListRunsRequest
    ) -> tuple[list[run_pb2.Run], str]:
        """A page of runs (without steps), newest first."""
        size = page_size(request.page_size)
        states = []
        for i, state in enumerate(request.states):
            if state not in _RUN_STATE_NAMES:
                raise InvalidArgument(
                    "unknown run state",
                    violations=[
                        FieldViolation(field=f"states[{i}]", description="unknown run state")
                    ],
                )
            states.append(_RUN_STATE_NAMES[state])
        parent = (
            parse_run_id(request.parent_run_id, "parent_run_id") if request.parent_run_id else None
        )
        filters = {
            "states": sorted(states),
            "definition": request.definition_name,
            "labels": dict(sorted(request.labels.items())),
            "parent": request.parent_run_id,
        }
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
            )
        page, token = keyset_page(rows, size, filters)
        return [run_to_proto(r) for r in page], token

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
        events = [event_to_proto(e, name) for e in rows]
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
        page, token = keyset_page(rows, size, filters)
        return [deliverable_to_proto(d) for d in page], token


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
) -> list[NewStep]:
    """The step rows of a new run of ``plan`` (already validated); ``plan_dict`` is its
    JSON form when the caller has it (converting once is much cheaper than per step).

    ``caching_scope`` (None: no step is cached, e.g. ``bypass_cache``) enables the
    step-output cache: each cached step's spec gets its effective policy in
    ``caching`` (``engine/cache.py``), ``cache_ttl_seconds`` being the server default.
    ``bypass_cache`` (the run's flag) marks sub-orchestration steps so their child runs
    bypass the cache too."""
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
        refs = sorted({r.step_id for r in find_references(template) if r.step_id})
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
                input_refs=refs,
                is_sink=step.id not in needed_by,
            )
        )
    return steps
