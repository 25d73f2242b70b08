"""The records of the runs repository: what it takes (``NewRun``, ``NewStep``,
``StepOutcome``) and returns (rows of runs, steps, attempts, events, deliverables, and
the engine's ``ClaimedStep`` and ``FinishedChild``), with their conversions from rows.

A step's ``spec`` is a :class:`~.steps.StepSpec` wherever the engine reads it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import asyncpg

from .steps import Outcome, StepError, StepSpec

__all__ = [
    "AttemptRow",
    "ClaimedStep",
    "CreatedRun",
    "DeliverableRow",
    "EncodedPlan",
    "EventRow",
    "FinishedChild",
    "NewDeliverable",
    "NewRun",
    "NewStep",
    "RunKeying",
    "RunRow",
    "StepOutcome",
    "StepRow",
    "claimed_step",
    "created_run",
    "created_steps",
    "finished_child",
    "run_row",
    "step_row",
]


@dataclass(frozen=True, slots=True)
class NewStep:
    """A step row to create with its run."""

    step_id: str
    position: int
    state: str  # "pending": podium_start_run queues the steps without dependencies
    agent: str | None
    skill: str | None
    depends_on: Sequence[str]
    spec: StepSpec
    max_attempts: int
    timeout_seconds: float | None
    input_refs: Sequence[str]
    is_sink: bool


@dataclass(frozen=True, slots=True)
class EncodedPlan:
    """A run's ``plan`` and ``steps`` in the form ``podium_create_run`` takes them,
    encoded once and shared by every run of one saved definition version (StartRun's
    run templates, ``engine/plan.py``): the two JSON parameters, and each step's spec
    in JSON form (in the order of the steps). Never mutated."""

    plan_json: str
    steps_json: str
    specs: Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to create (state ``created``; :meth:`RunsRepository.create` may start it)."""

    organization_id: str
    definition_name: str | None
    definition_version: int | None
    plan: Mapping[str, Any]
    input: Mapping[str, Any]
    metadata: Mapping[str, Any]
    labels: Mapping[str, str]
    request_id: str | None
    max_parallel: int
    bypass_cache: bool
    webhook_url: str | None
    steps: Sequence[NewStep]
    trace_context: Mapping[str, str] | None = None
    parent_run_id: uuid.UUID | None = None
    parent_step_id: str | None = None
    depth: int = 0
    # ForkRun: the finished run to copy outputs from, and the steps to copy.
    forked_from_run_id: uuid.UUID | None = None
    copied_steps: Sequence[str] = ()
    keying: RunKeying | None = None
    # ``plan`` and ``steps`` already encoded (EncodedPlan), when the caller has them.
    encoded: EncodedPlan | None = None


@dataclass(frozen=True, slots=True)
class RunKeying:
    """A run's concurrency key value (None: no key), its limits and its priority, as
    StartRun resolved them (``podium_create_run``'s ``p_keying``)."""

    key: str | None = None
    priority: int = 0
    max_runs_per_key: int = 0
    max_steps_per_key: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "priority": self.priority,
            "max_runs_per_key": self.max_runs_per_key,
            "max_steps_per_key": self.max_steps_per_key,
        }


@dataclass(frozen=True, slots=True)
class RunRow:
    """A stored run."""

    id: uuid.UUID
    organization_id: str
    definition_name: str | None
    definition_version: int | None
    plan: dict[str, Any]
    state: str
    input: dict[str, Any]
    output: dict[str, Any] | None
    metadata: dict[str, Any]
    labels: dict[str, str]
    request_id: str | None
    max_parallel: int
    run_attempt: int
    parent_run_id: uuid.UUID | None
    parent_step_id: str | None
    forked_from_run_id: uuid.UUID | None
    error: dict[str, Any] | None
    rollback_hints: list[str] | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    bypass_cache: bool
    webhook_url: str | None
    last_event_sequence: int
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    concurrency_key: str | None = None
    priority: int = 0
    max_runs_per_key: int = 0
    # False while the run waits for its concurrency key (max_runs_per_key).
    key_admitted: bool = True


@dataclass(frozen=True, slots=True)
class StepRow:
    """A stored step of a run."""

    step_id: str
    position: int
    state: str
    agent: str | None
    skill: str | None
    depends_on: list[str]
    spec: dict[str, Any]
    input: Any
    output: Any
    error: dict[str, Any] | None
    attempt: int
    max_attempts: int
    conversation_id: uuid.UUID | None
    queued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    next_attempt_at: datetime | None
    cached: bool
    cache_source_run_id: uuid.UUID | None
    child_run_id: uuid.UUID | None
    approval_id: uuid.UUID | None
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One attempt (agent call) of a step."""

    step_id: str
    attempt: int
    agent: str | None
    task_id: uuid.UUID
    started_at: datetime
    ended_at: datetime | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ClaimedStep:
    """A step leased to this replica, with everything needed to dispatch it."""

    run_id: uuid.UUID
    step_id: str
    attempt: int
    organization_id: str
    agent: str | None
    skill: str | None
    endpoint: str | None
    agent_timeout_seconds: float | None
    protocol: str | None
    task_id: uuid.UUID
    conversation_id: uuid.UUID
    spec: StepSpec
    timeout_seconds: float | None
    max_attempts: int
    run_input: dict[str, Any]
    upstream: dict[str, Any]
    labels: dict[str, str]
    definition_name: str | None
    definition_version: int | None
    run_created_at: datetime
    run_started_at: datetime | None = None
    trace_context: dict[str, str] | None = None
    """The run's W3C trace context (``traceparent``/``tracestate``) stored at StartRun."""
    credential: str | None = field(default=None, repr=False)
    """The attempt's step credential (a secret, never in a repr or a log line), made by
    the claim for agent steps; None for the others and for A2A agents."""


@dataclass(frozen=True, slots=True)
class NewDeliverable:
    """An artifact to store with a step's outcome."""

    name: str
    media_type: str
    size_bytes: int
    uri: str | None
    data: bytes | None


@dataclass(slots=True)
class StepOutcome:
    """The result of one attempt, recorded by ``RunsRepository.complete``; ``outcome``
    says what happens to the step (:class:`~.steps.Outcome`; ``retry`` waits until
    ``next_attempt_at``)."""

    run_id: uuid.UUID
    step_id: str
    attempt: int
    outcome: Outcome
    organization_id: str
    run_created_at: datetime
    conversation_id: uuid.UUID | None = None
    output: Any = None
    error: StepError | None = None
    input: Any = None
    next_attempt_at: datetime | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    model: str = ""
    """The model the agent reported with its usage ('' when none)."""
    deliverables: Sequence[NewDeliverable] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class CompletedBatch:
    """What ``RunsRepository.complete`` committed: per (run, step, attempt) the run's
    state after the outcome (None when fenced); the steps claimed eagerly in the same
    transaction; whether this replica's claim loop should look for more work."""

    states: dict[tuple[uuid.UUID, str, int], str | None]
    claimed: list[ClaimedStep] = field(default_factory=list)
    wake: bool = True


@dataclass(frozen=True, slots=True)
class EagerClaim:
    """Claim, in a completion's transaction, up to ``limit`` runnable steps of the runs
    it completed steps of, for ``owner`` (see ``podium_complete_steps``).

    ``turns``: whether the claim takes turns with the other shares' queued steps (it
    becomes the claim over every run when they have some); the scheduler passes False
    while its slots are not contended, its claim loop having last taken every step it
    could with slots to spare."""

    owner: str
    limit: int
    lease_seconds: float
    turns: bool = True


@dataclass(frozen=True, slots=True)
class FinishedChild:
    """A step waiting on a child run (sub-orchestration) that has finished."""

    run_id: uuid.UUID
    step_id: str
    attempt: int
    organization_id: str
    conversation_id: uuid.UUID | None
    spec: StepSpec
    max_attempts: int
    input: Any
    run_created_at: datetime
    child_run_id: uuid.UUID
    child_state: str
    child_output: dict[str, Any] | None
    child_error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EventRow:
    """One entry of a run's event log."""

    run_id: uuid.UUID
    sequence: int
    organization_id: str
    type: str
    step_id: str | None
    attempt: int | None
    run_state: str | None
    step_state: str | None
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliverableRow:
    """A stored artifact."""

    id: uuid.UUID
    run_id: uuid.UUID
    step_id: str | None
    attempt: int | None
    conversation_id: uuid.UUID | None
    name: str
    media_type: str
    size_bytes: int
    uri: str | None
    data: bytes | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CreatedRun:
    """What :meth:`RunsRepository.create` returns: the run as stored with its steps,
    attempts and deliverables, and whether this call created it (False: an existing run
    with the same ``request_id``, in its current state)."""

    run: RunRow
    steps: list[StepRow]
    attempts: list[AttemptRow]
    deliverables: list[DeliverableRow]
    created: bool
    claimed: list[ClaimedStep] = field(default_factory=list)
    """Steps claimed for this replica in the same transaction (eager dispatch): its own,
    or any run's when other shares wait (fair share, 40_claim.sql)."""


def run_row(row: asyncpg.Record) -> RunRow:
    return RunRow(
        id=row["id"],
        organization_id=row["organization_id"],
        definition_name=row["definition_name"],
        definition_version=row["definition_version"],
        plan=row["plan"],
        state=row["state"],
        input=row["input"],
        output=row["output"],
        metadata=row["metadata"],
        labels=row["labels"],
        request_id=row["request_id"],
        max_parallel=row["max_parallel"],
        run_attempt=row["run_attempt"],
        parent_run_id=row["parent_run_id"],
        parent_step_id=row["parent_step_id"],
        forked_from_run_id=row["forked_from_run_id"],
        error=row["error"],
        rollback_hints=row["rollback_hints"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cost_usd=float(row["cost_usd"]),
        bypass_cache=row["bypass_cache"],
        webhook_url=row["webhook_url"],
        last_event_sequence=row["last_event_sequence"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        concurrency_key=row.get("concurrency_key"),
        priority=row.get("priority", 0),
        max_runs_per_key=row.get("max_runs_per_key", 0),
        key_admitted=row.get("key_admitted", True),
    )


def step_row(row: asyncpg.Record) -> StepRow:
    values = dict(row)
    values.pop("run_id")
    values["depends_on"] = list(values["depends_on"])
    values["cost_usd"] = float(values["cost_usd"])
    return StepRow(**values)


def created_run(run: NewRun, row: asyncpg.Record) -> RunRow:
    """The stored form of ``run`` just created: what the caller sent, with the fields
    ``podium_create_run`` generated (a new run has no output, error or usage yet)."""
    return RunRow(
        id=row["run_id"],
        organization_id=run.organization_id,
        definition_name=run.definition_name,
        definition_version=run.definition_version,
        plan=dict(run.plan),
        state=row["state"],
        input=dict(run.input),
        output=None,
        metadata=dict(run.metadata),
        labels=dict(run.labels),
        request_id=run.request_id,
        max_parallel=run.max_parallel,
        run_attempt=row["run_attempt"],
        parent_run_id=run.parent_run_id,
        parent_step_id=run.parent_step_id,
        forked_from_run_id=run.forked_from_run_id,
        error=None,
        rollback_hints=None,
        input_tokens=0,
        output_tokens=0,
        cost_usd=0.0,
        bypass_cache=run.bypass_cache,
        webhook_url=run.webhook_url,
        last_event_sequence=row["last_event_sequence"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=None,
        concurrency_key=run.keying.key if run.keying else None,
        priority=run.keying.priority if run.keying else 0,
        max_runs_per_key=run.keying.max_runs_per_key if run.keying else 0,
    )


def created_steps(run: NewRun, row: asyncpg.Record) -> list[StepRow]:
    """The stored form of ``run``'s steps just created, in position order: what the
    caller sent, with the state ``podium_create_run`` returned for each (no step has
    run yet; a fork's copied steps carry their output and input)."""
    index = {step_id: i for i, step_id in enumerate(row["step_ids"] or ())}
    states = row["step_states"]
    attempts = row["step_attempts"]
    conversations = row["conversation_ids"]
    queued = row["queued_at"]
    started = row["step_started_at"]
    ended = row["step_ended_at"]
    inputs = row["step_inputs"]
    outputs = row["step_outputs"]
    specs = run.encoded.specs if run.encoded is not None else [s.spec.to_json() for s in run.steps]
    out = []
    for s, spec in zip(run.steps, specs, strict=True):
        i = index[s.step_id]
        out.append(
            StepRow(
                step_id=s.step_id,
                position=s.position,
                state=states[i],
                agent=s.agent,
                skill=s.skill,
                depends_on=list(s.depends_on),
                spec=dict(spec),
                input=inputs[i],
                output=outputs[i],
                error=None,
                attempt=attempts[i],
                max_attempts=s.max_attempts,
                conversation_id=conversations[i],
                queued_at=queued[i],
                started_at=started[i],
                ended_at=ended[i],
                next_attempt_at=None,
                cached=False,
                cache_source_run_id=None,
                child_run_id=None,
                approval_id=None,
                input_tokens=0,
                output_tokens=0,
                cost_usd=0.0,
            )
        )
    return out


_CLAIMED_FIELDS = tuple(f.name for f in fields(ClaimedStep))


def claimed_step(row: asyncpg.Record) -> ClaimedStep:
    """A claimed step from a row with the claim's columns (and maybe others: a
    completion's or a StartRun's eager claim returns them with its own)."""
    values = {name: row[name] for name in _CLAIMED_FIELDS if name != "credential"}
    values["spec"] = StepSpec.from_json(values["spec"])
    return ClaimedStep(**values, credential=row.get("credential"))


def finished_child(row: asyncpg.Record) -> FinishedChild:
    values = dict(row)
    values["spec"] = StepSpec.from_json(values["spec"])
    return FinishedChild(**values)
