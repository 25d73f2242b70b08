"""Stored rows (``storage/runs.py``) to their API form: runs, steps, attempts, events and
deliverables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from podium.orchestration.v1 import definition_pb2, event_pb2, run_pb2
from podium.server.engine.sizes import fit_event
from podium.server.storage.runs import (
    AttemptRow,
    CreatedRun,
    DeliverableRow,
    EventRow,
    NewStep,
    RunRow,
    StepRow,
)

__all__ = [
    "RUN_STATE_NAMES",
    "created_to_proto",
    "deliverable_to_proto",
    "event_to_proto",
    "response_skeleton",
    "run_to_proto",
    "set_organization_waits",
    "set_rate_waits",
]

_RUN_STATES = {
    "created": run_pb2.Run.STATE_CREATED,
    "running": run_pb2.Run.STATE_RUNNING,
    "paused": run_pb2.Run.STATE_PAUSED,
    "succeeded": run_pb2.Run.STATE_SUCCEEDED,
    "failed": run_pb2.Run.STATE_FAILED,
    "cancelled": run_pb2.Run.STATE_CANCELLED,
}
RUN_STATE_NAMES = {v: k for k, v in _RUN_STATES.items()}
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


def run_to_proto(
    run: RunRow,
    steps: list[StepRow] | None = None,
    attempts: list[AttemptRow] | None = None,
    deliverables: list[DeliverableRow] | None = None,
    *,
    plan: definition_pb2.Definition | None = None,
    basic: bool = False,
) -> run_pb2.Run:
    """The API form of a stored run (with its steps when given). ``plan``, when the
    caller has it, saves parsing the stored plan again. ``basic`` (RUN_VIEW_BASIC)
    leaves out the large payloads: the run's input, output, metadata and plan, and the
    steps' inputs and outputs."""
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
        concurrency_key=run.concurrency_key or "",
        priority=run.priority,
    )
    if not basic:
        _struct(run.input, out.input)
        _struct(run.output, out.output)
        _struct(run.metadata, out.metadata)
    _error(run.error, out.error)
    _ts(run.created_at, out.create_time)
    _ts(run.started_at, out.start_time)
    _ts(run.ended_at, out.end_time)
    _usage(run, out.usage)
    if basic:
        pass
    elif plan is not None:
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
                _step_to_proto(
                    step, by_step.get(step.step_id, []), files.get(step.step_id, []), basic
                )
            )
    return out


def _step_to_proto(
    step: StepRow, attempts: list[AttemptRow], files: list[DeliverableRow], basic: bool
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
    if not basic:
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


def created_to_proto(
    stored: CreatedRun,
    plan: definition_pb2.Definition,
    skeleton: run_pb2.Run | None = None,
) -> run_pb2.Run:
    """The response of StartRun / ForkRun: the run as ``RunsRepository.create`` returned
    it, with ``plan`` (the one just stored) when this call created it; an existing run
    (same request_id) may have another plan, so its own is parsed.

    ``skeleton`` (``response_skeleton`` of the run's step rows, when the caller has it)
    holds what the steps of every new run of the plan share; the message is the same."""
    if skeleton is None or not stored.created:
        return run_to_proto(
            stored.run,
            stored.steps,
            stored.attempts,
            stored.deliverables,
            plan=plan if stored.created else None,
        )
    out = run_to_proto(stored.run, plan=plan)
    out.steps.extend(skeleton.steps)
    # A new step has no error, usage, attempts, deliverables, cache hit, child run or
    # approval yet (storage ``created_steps``): only these differ from the skeleton.
    for target, step in zip(out.steps, stored.steps, strict=True):
        target.state = _STEP_STATES[step.state]
        if step.attempt:
            target.attempt = step.attempt
        if step.conversation_id:
            target.conversation_id = str(step.conversation_id)
        if step.input is not None:
            _struct(step.input, target.input)
        if step.output is not None:
            _struct(step.output, target.output)
        _ts(step.queued_at, target.queue_time)
        _ts(step.started_at, target.start_time)
        _ts(step.ended_at, target.end_time)
    return out


def response_skeleton(steps: Sequence[NewStep]) -> run_pb2.Run:
    """What the StartRun responses of new runs with step rows ``steps`` share
    (``created_to_proto``): a run with each step's id, agent, maximum attempts and
    dependencies, and its (zero) usage."""
    out = run_pb2.Run()
    for step in steps:
        target = out.steps.add(
            step_id=step.step_id,
            max_attempts=step.max_attempts,
            agent=step.agent or "",
            depends_on=step.depends_on,
        )
        target.usage.SetInParent()  # present, as ``_usage`` leaves it
    return out


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


def event_to_proto(
    event: EventRow, definition_name: str = "", *, max_bytes: int | None = None
) -> event_pb2.RunEvent:
    """The API form of a stored event; with ``max_bytes``, one that takes more leaves
    out its ``data`` (``data_omitted``)."""
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
        if max_bytes is not None:
            fit_event(out, max_bytes, data)
    return out


def _rfc3339(text: str) -> str:
    # Postgres renders timestamptz in JSON as 2026-11-25T13:50:22.123+00:00.
    return datetime.fromisoformat(text).isoformat().replace("+00:00", "Z")


def set_organization_waits(run: run_pb2.Run) -> None:
    """Fill ``StepRun.waiting`` (ORGANIZATION_LIMIT) of the run's queued steps that have
    no other reason: the organization has as many steps running as the server allows."""
    for step in run.steps:
        if step.state == run_pb2.StepRun.STATE_QUEUED and not step.HasField("waiting"):
            step.waiting.reason = run_pb2.StepWaiting.Reason.REASON_ORGANIZATION_LIMIT


def set_rate_waits(run: run_pb2.Run, waits: Mapping[str, tuple[str, datetime | None]]) -> None:
    """Fill ``StepRun.waiting`` (RATE_LIMITED) of the steps in ``waits`` (by step id:
    the agent whose window frees first, and when)."""
    for step in run.steps:
        held = waits.get(step.step_id)
        if held is None:
            continue
        step.waiting.reason = run_pb2.StepWaiting.Reason.REASON_RATE_LIMITED
        step.waiting.agent = held[0]
        _ts(held[1], step.waiting.until_time)


def running_agents(run: run_pb2.Run) -> dict[str, str]:
    """The agent of each running step's current attempt, by step id."""
    out: dict[str, str] = {}
    for step in run.steps:
        if step.state != run_pb2.StepRun.State.STATE_RUNNING:
            continue
        agent = step.attempts[-1].agent if step.attempts else step.agent
        if agent:
            out[step.step_id] = agent
    return out


def set_agent_waits(run: run_pb2.Run, waiting: Mapping[str, str]) -> None:
    """Fill ``StepRun.waiting`` (AGENT_UNAVAILABLE) of the running steps in ``waiting``
    (by step id: the agent that is not serving)."""
    for step in run.steps:
        agent = waiting.get(step.step_id)
        if agent is not None:
            step.waiting.reason = run_pb2.StepWaiting.Reason.REASON_AGENT_UNAVAILABLE
            step.waiting.agent = agent
