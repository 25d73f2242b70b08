"""Runs repository: creating runs with their steps, reading them, and the engine's
transactional calls (claim, complete, cancel, lease renewal, re-queue).

The state machine itself lives in SQL functions (``server/storage/functions/``), so
every transition is one round trip and commits with its events.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from .database import Connection, Database
from .queries import QUERIES

__all__ = [
    "AttemptRow",
    "ClaimedStep",
    "CreatedRun",
    "DeliverableRow",
    "EventRow",
    "FinishedChild",
    "NewDeliverable",
    "NewRun",
    "NewStep",
    "RunRow",
    "RunsRepository",
    "StepOutcome",
    "StepRow",
]

TERMINAL_RUN_STATES = frozenset({"succeeded", "failed", "cancelled"})

# Outcomes whose output is stored (see podium_complete_step / podium_park_step).
# (input_required: the output is the approval's subject, the agent's question.)
# (checkpoint_before: the output is {"task_id": ...}, the fence of the park.)
_WITH_OUTPUT = frozenset({"succeeded", "checkpoint_after", "input_required", "checkpoint_before"})


@dataclass(frozen=True, slots=True)
class NewStep:
    """A step row to create with its run."""

    step_id: str
    position: int
    state: str  # "pending": podium_start_run queues the steps without dependencies
    agent: str | None
    skill: str | None
    depends_on: Sequence[str]
    spec: Mapping[str, Any]
    max_attempts: int
    timeout_seconds: float | None
    input_refs: Sequence[str]
    is_sink: bool


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
    spec: dict[str, Any]
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
    """The result of one attempt, recorded by :meth:`RunsRepository.complete`.

    ``outcome``: ``succeeded``, ``failed`` (final) or ``retry`` (at ``next_attempt_at``).
    """

    run_id: uuid.UUID
    step_id: str
    attempt: int
    outcome: str
    organization_id: str
    run_created_at: datetime
    conversation_id: uuid.UUID | None = None
    output: Any = None
    error: Mapping[str, Any] | None = None
    input: Any = None
    next_attempt_at: datetime | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    deliverables: Sequence[NewDeliverable] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class FinishedChild:
    """A step waiting on a child run (sub-orchestration) that has finished."""

    run_id: uuid.UUID
    step_id: str
    attempt: int
    organization_id: str
    conversation_id: uuid.UUID | None
    spec: dict[str, Any]
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


def _run(row: asyncpg.Record) -> RunRow:
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
    )


def _step(row: asyncpg.Record) -> StepRow:
    values = dict(row)
    values.pop("run_id")
    values["depends_on"] = list(values["depends_on"])
    values["cost_usd"] = float(values["cost_usd"])
    return StepRow(**values)


def _run_states(
    ordered: Sequence[StepOutcome], rows: Sequence[asyncpg.Record]
) -> dict[tuple[uuid.UUID, str, int], str | None]:
    """The run state ``podium_complete_step`` returned for each outcome, by key."""
    return {(o.run_id, o.step_id, o.attempt): r[0] for o, r in zip(ordered, rows, strict=True)}


def _created_run(run: NewRun, row: asyncpg.Record) -> RunRow:
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
    )


def _created_steps(run: NewRun, row: asyncpg.Record) -> list[StepRow]:
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
    out = []
    for s in run.steps:
        i = index[s.step_id]
        out.append(
            StepRow(
                step_id=s.step_id,
                position=s.position,
                state=states[i],
                agent=s.agent,
                skill=s.skill,
                depends_on=list(s.depends_on),
                spec=dict(s.spec),
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


class RunsRepository:
    """SQL access for runs, steps, attempts, events and deliverables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, run: NewRun, *, start: bool) -> CreatedRun:
        """Create ``run`` and all its steps in one call (and start it).

        One statement (``podium_create_run``: atomic by itself, one round trip) writes
        the run, its steps and its events and returns what the rows hold beyond ``run``
        (ids, states, times, conversations, a fork's copied outputs), from which the
        stored run is rebuilt without reading it back. When ``request_id`` matches an
        existing run of the organization, that run is read (``created`` False).
        """
        async with self._db.connection() as conn:
            row = await self._insert(conn, run, start=start, return_steps=True)
        if not row["created"]:
            found = await self.get_with_steps(run.organization_id, row["run_id"])
            assert found is not None
            return CreatedRun(*found, created=False)
        return CreatedRun(_created_run(run, row), _created_steps(run, row), [], [], True)

    async def _insert(
        self, conn: Connection, run: NewRun, *, start: bool, return_steps: bool
    ) -> asyncpg.Record:
        steps = [
            {
                "step_id": s.step_id,
                "position": s.position,
                "state": s.state,
                "agent": s.agent,
                "skill": s.skill,
                "depends_on": list(s.depends_on),
                "pending_dependencies": len(s.depends_on),
                "spec": s.spec,
                "max_attempts": s.max_attempts,
                "timeout_seconds": s.timeout_seconds,
                "input_refs": list(s.input_refs),
                "is_sink": s.is_sink,
            }
            for s in run.steps
        ]
        row = await conn.fetchrow(
            QUERIES["create_run"],
            run.organization_id,
            run.definition_name,
            run.definition_version,
            run.plan,
            run.input,
            run.metadata,
            run.labels,
            run.request_id,
            run.max_parallel,
            run.bypass_cache,
            run.webhook_url,
            run.trace_context,
            run.parent_run_id,
            run.parent_step_id,
            run.depth,
            run.forked_from_run_id,
            list(run.copied_steps),
            steps,
            start,
            return_steps,
        )
        assert row is not None
        return row

    async def continue_run(
        self, organization_id: str, run_id: uuid.UUID, input: Mapping[str, Any] | None
    ) -> str | None:
        """ContinueRun: start a created run, or give more input to a run waiting on a
        checkpoint (``input`` is merged over the run's).

        Returns ``"started"``, ``"continued"``, the run's state when neither applies, or
        None when the run does not exist.
        """
        async with self._db.connection() as conn:
            status: str | None = await conn.fetchval(
                QUERIES["continue_run"], run_id, organization_id, dict(input) if input else None
            )
        return status

    async def resume(self, organization_id: str, run_id: uuid.UUID) -> str | None:
        """ResumeRun: re-queue what did not succeed in a failed or cancelled run.

        Returns the run's state before the call (it was resumed only when that is
        ``failed`` or ``cancelled``), or None when the run does not exist.
        """
        async with self._db.connection() as conn:
            state: str | None = await conn.fetchval(QUERIES["resume_run"], run_id, organization_id)
        return state

    async def create_child(
        self, parent_step: tuple[uuid.UUID, str, int], run: NewRun, max_depth: int
    ) -> tuple[str, uuid.UUID | None]:
        """Create and start the child run of a sub-orchestration step, linked both ways,
        in one transaction fenced on the parent step's attempt.

        ``parent_step`` is (run id, step id, attempt); ``run`` is the child (its parent
        fields and depth are filled in here). Returns ``("created", child id)``,
        ``("fenced", None)`` when the parent step no longer runs that attempt, or
        ``("too_deep", None)`` when the child would be nested deeper than ``max_depth``.
        """
        parent_id, step_id, attempt = parent_step
        async with self._db.transaction() as conn:
            parent = await conn.fetchrow(QUERIES["lock_run"], parent_id, run.organization_id)
            if parent is None or parent["state"] != "running":
                return "fenced", None
            if (
                await conn.fetchval(QUERIES["lock_running_step"], parent_id, step_id, attempt)
                is None
            ):
                return "fenced", None
            depth = int(parent["depth"]) + 1
            if depth > max_depth:
                return "too_deep", None
            child = dataclasses.replace(
                run, parent_run_id=parent_id, parent_step_id=step_id, depth=depth
            )
            row = await self._insert(conn, child, start=True, return_steps=False)
            child_id: uuid.UUID = row["run_id"]
            await conn.execute(QUERIES["link_child_run"], parent_id, step_id, child_id)
        return "created", child_id

    async def finished_children(self, limit: int = 100) -> list[FinishedChild]:
        """Steps waiting on a child run that has finished (see ``finished_children``)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["finished_children"], limit)
        return [FinishedChild(**dict(r)) for r in rows]

    async def get(self, organization_id: str, run_id: uuid.UUID) -> RunRow | None:
        """The run, or None."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["get_run"], run_id, organization_id)
        return None if row is None else _run(row)

    async def get_with_steps(
        self, organization_id: str, run_id: uuid.UUID
    ) -> tuple[RunRow, list[StepRow], list[AttemptRow], list[DeliverableRow]] | None:
        """The run with its steps, attempts and deliverables (without data), or None."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(QUERIES["get_run"], run_id, organization_id)
            if row is None:
                return None
            steps = await conn.fetch(QUERIES["list_steps"], run_id)
            attempts = await conn.fetch(QUERIES["list_attempts"], run_id)
            deliverables = await conn.fetch(
                QUERIES["list_deliverables"],
                run_id,
                organization_id,
                None,
                False,
                None,
                None,
                10_000,
            )
        return (
            _run(row),
            [_step(s) for s in steps],
            [AttemptRow(**dict(a)) for a in attempts],
            [DeliverableRow(**dict(d)) for d in deliverables],
        )

    async def list_runs(
        self,
        organization_id: str,
        *,
        states: Sequence[str],
        definition_name: str | None,
        labels: Mapping[str, str],
        parent_run_id: uuid.UUID | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[RunRow]:
        """Runs newest first, filtered, after the keyset position ``after``."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_runs"],
                organization_id,
                list(states),
                definition_name,
                dict(labels),
                parent_run_id,
                after[0] if after else None,
                after[1] if after else None,
                limit,
            )
        return [_run(r) for r in rows]

    async def cancel(self, organization_id: str, run_id: uuid.UUID, reason: str) -> str | None:
        """Cancel the run; returns its state afterwards, or None when it does not exist."""
        return (await self.cancel_transition(organization_id, run_id, reason))[1]

    async def cancel_transition(
        self, organization_id: str, run_id: uuid.UUID, reason: str
    ) -> tuple[str | None, str | None]:
        """Cancel the run; returns its state (before, after) the call, read under the run's
        lock, so exactly one caller sees the transition; (None, None) when it does not exist."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(QUERIES["lock_run"], run_id, organization_id)
            if row is None:
                return None, None
            state: str | None = await conn.fetchval(
                QUERIES["cancel_run"], run_id, organization_id, reason
            )
        return row["state"], state

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedStep]:
        """Lease up to ``limit`` runnable steps to ``owner`` (one transaction)."""
        # One statement (a function call) is atomic on its own: no BEGIN/COMMIT trips.
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["claim_steps"], owner, limit, lease_seconds)
        return [ClaimedStep(**dict(r)) for r in rows]

    async def complete(
        self, outcomes: Sequence[StepOutcome]
    ) -> dict[tuple[uuid.UUID, str, int], str | None]:
        """Record a batch of attempt outcomes in one transaction.

        Each is fenced by (step, attempt, state running): a stale one changes nothing.
        The batch is ordered like the claimers lock runs, so concurrent batches cannot
        deadlock each other.

        Returns, per (run, step, attempt), the run's state after the outcome: ``running``,
        ``succeeded`` or ``failed`` when this outcome ended the run, None when it was
        fenced.
        """
        ordered = sorted(outcomes, key=lambda o: (o.run_created_at, o.run_id, o.step_id))
        args = [
            (
                o.run_id,
                o.step_id,
                o.attempt,
                o.outcome,
                o.output if o.outcome in _WITH_OUTPUT else None,
                o.error,
                o.input,
                o.next_attempt_at,
                o.input_tokens,
                o.output_tokens,
                o.cost_usd,
            )
            for o in ordered
        ]
        # A final failure fails its run, which cancels the run's unfinished descendants:
        # younger runs, maybe younger than runs later in the batch. Lock them all first,
        # in the claimers' order (rare: a batch of several runs with a failure in it).
        failing = {o.run_id for o in ordered if o.outcome == "failed"}
        lock = bool(failing) and len({o.run_id for o in ordered}) > 1
        if not lock and not any(o.deliverables for o in ordered):
            # fetchmany, like executemany, is atomic by itself (one implicit
            # transaction, pipelined).
            async with self._db.connection() as conn:
                rows = await conn.fetchmany(QUERIES["complete_step"], args)
            return _run_states(ordered, rows)
        async with self._db.transaction() as conn:
            if lock:
                await conn.execute(
                    QUERIES["lock_batch_runs"],
                    list({o.run_id for o in ordered}),
                    list(failing),
                )
            rows = await conn.fetchmany(QUERIES["complete_step"], args)
            for o in ordered:
                if o.deliverables:
                    await conn.execute(
                        QUERIES["insert_deliverables"],
                        o.run_id,
                        o.organization_id,
                        (
                            [
                                {
                                    "step_id": o.step_id,
                                    "attempt": o.attempt,
                                    "conversation_id": str(o.conversation_id)
                                    if o.conversation_id
                                    else None,
                                    "name": d.name,
                                    "media_type": d.media_type,
                                    "size_bytes": d.size_bytes,
                                    "uri": d.uri,
                                    "data_base64": base64.b64encode(d.data).decode()
                                    if d.data is not None
                                    else None,
                                }
                                for d in o.deliverables
                            ]
                        ),
                    )
        return _run_states(ordered, rows)

    async def complete_one(self, outcome: StepOutcome) -> bool:
        """Record one outcome; returns False when it was fenced (stale attempt)."""
        async with self._db.transaction() as conn:
            state: str | None = await conn.fetchval(
                QUERIES["complete_step"],
                outcome.run_id,
                outcome.step_id,
                outcome.attempt,
                outcome.outcome,
                outcome.output if outcome.outcome in _WITH_OUTPUT else None,
                outcome.error,
                outcome.input,
                outcome.next_attempt_at,
                outcome.input_tokens,
                outcome.output_tokens,
                outcome.cost_usd,
            )
        return state is not None

    async def append_step_events(
        self, batches: Sequence[tuple[uuid.UUID, str, int, list[str], list[dict[str, Any]]]]
    ) -> None:
        """Append coalesced stream events, one (run, step, attempt, types, payloads) per
        attempt, pipelined in one atomic call; fenced attempts write nothing."""
        if not batches:
            return
        async with self._db.connection() as conn:
            await conn.executemany(QUERIES["append_step_events"], batches)

    async def renew_leases(
        self, owner: str, lease_seconds: float
    ) -> list[tuple[uuid.UUID, str, int]]:
        """Extend the leases of ``owner``'s running steps; returns the (run, step,
        attempt) renewed."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["renew_leases"], owner, lease_seconds)
        return [(r["run_id"], r["step_id"], r["attempt"]) for r in rows]

    async def release_leases(self, owner: str) -> int:
        """Expire ``owner``'s leases now (shutdown); returns how many."""
        async with self._db.connection() as conn:
            status = await conn.execute(QUERIES["release_leases"], owner)
        return int(status.rsplit(" ", 1)[-1])

    async def requeue_expired(self, limit: int = 500) -> int:
        """Return steps with expired leases to the queue; returns how many."""
        async with self._db.transaction() as conn:
            count: int = await conn.fetchval(QUERIES["requeue_expired"], limit)
        return count

    async def count_queued_steps(self, limit: int) -> int:
        """Queued steps of every organization, counted up to ``limit``."""
        async with self._db.connection() as conn:
            count: int = await conn.fetchval(QUERIES["count_queued_steps"], limit)
        return count

    async def list_events(
        self, organization_id: str, run_id: uuid.UUID, after_sequence: int, limit: int
    ) -> list[EventRow]:
        """Events of a run after ``after_sequence``, in order."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_events"], run_id, organization_id, after_sequence, limit
            )
        return [EventRow(**dict(r)) for r in rows]

    async def list_deliverables(
        self,
        organization_id: str,
        run_id: uuid.UUID,
        *,
        step_id: str | None,
        include_data: bool,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[DeliverableRow]:
        """Deliverables of a run, oldest first, after the keyset position ``after``."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_deliverables"],
                run_id,
                organization_id,
                step_id,
                include_data,
                after[0] if after else None,
                after[1] if after else None,
                limit,
            )
        return [DeliverableRow(**dict(r)) for r in rows]
