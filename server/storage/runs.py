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
from datetime import datetime
from typing import Any

import asyncpg

from .database import Connection, Database, JsonText, json_dumps
from .queries import QUERIES
from .run_records import (
    AttemptRow,
    ClaimedStep,
    CompletedBatch,
    CreatedRun,
    DeliverableRow,
    EagerClaim,
    EncodedPlan,
    EventRow,
    FinishedChild,
    NewDeliverable,
    NewRun,
    NewStep,
    RunRow,
    StepOutcome,
    StepRow,
    claimed_step,
    created_run,
    created_steps,
    finished_child,
    run_row,
    step_row,
)
from .steps import WITH_OUTPUT, Outcome

__all__ = [
    "AttemptRow",
    "AttemptUsage",
    "ClaimedStep",
    "CompletedBatch",
    "CreatedRun",
    "DeliverableRow",
    "EagerClaim",
    "EncodedPlan",
    "EventRow",
    "FinishedChild",
    "NewDeliverable",
    "NewRun",
    "NewStep",
    "RunRow",
    "RunsRepository",
    "StepOutcome",
    "StepRow",
    "encode_plan",
]

TERMINAL_RUN_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _json(value: Any) -> str | None:
    return None if value is None else json_dumps(value)


def _step_params(
    steps: Sequence[NewStep], specs: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """``create_run``'s steps parameter (``specs``: the steps' specs in JSON form, when
    the caller has them)."""
    if specs is None:
        specs = [s.spec.to_json() for s in steps]
    return [
        {
            "step_id": s.step_id,
            "position": s.position,
            "state": s.state,
            "agent": s.agent,
            "skill": s.skill,
            "depends_on": list(s.depends_on),
            "pending_dependencies": len(s.depends_on),
            "spec": spec,
            "max_attempts": s.max_attempts,
            "timeout_seconds": s.timeout_seconds,
            "input_refs": list(s.input_refs),
            "is_sink": s.is_sink,
        }
        for s, spec in zip(steps, specs, strict=True)
    ]


def encode_plan(plan: Mapping[str, Any], steps: Sequence[NewStep]) -> EncodedPlan:
    """``plan`` and ``steps`` (a ``NewRun``'s) encoded for ``create_run``, once for the
    many runs that share them (``NewRun.encoded``)."""
    specs = tuple(s.spec.to_json() for s in steps)
    return EncodedPlan(
        plan_json=json_dumps(plan),
        steps_json=json_dumps(_step_params(steps, specs)),
        specs=specs,
    )


def _completed(ordered: Sequence[StepOutcome], rows: Sequence[asyncpg.Record]) -> CompletedBatch:
    """The claimed rows, then the summary row (``run_id`` NULL) of podium_complete_steps."""
    summary = rows[-1]
    states = {
        (o.run_id, o.step_id, o.attempt): state
        for o, state in zip(ordered, summary["states"], strict=True)
    }
    return CompletedBatch(states, [claimed_step(r) for r in rows[:-1]], bool(summary["wake"]))


AttemptUsage = tuple[int, int, float, str]
"""Usage of an attempt: input tokens, output tokens, cost in USD, model."""


class RunsRepository:
    """SQL access for runs, steps, attempts, events and deliverables."""

    def __init__(self, db: Database, *, max_running_steps_per_org: int = 0) -> None:
        """``max_running_steps_per_org``: every claim's cap on an organization's running
        steps (``PODIUM_MAX_RUNNING_STEPS_PER_ORG``, 0: none; ``podium_claim_steps_of``)."""
        self._db = db
        self._org_cap = max_running_steps_per_org

    async def create(
        self, run: NewRun, *, start: bool, claim: EagerClaim | None = None
    ) -> CreatedRun:
        """Create ``run`` and all its steps in one call (and start it).

        One statement (``podium_create_run``: atomic by itself, one round trip) writes
        the run, its steps and its events and returns what the rows hold beyond ``run``
        (ids, states, times, conversations, a fork's copied outputs), from which the
        stored run is rebuilt without reading it back (the steps as created, before any
        claim). When ``request_id`` matches an existing run of the organization, that
        run is read (``created`` False). With ``claim`` and ``start``, the same
        statement claims the run's runnable steps for ``claim.owner``
        (``CreatedRun.claimed``).
        """
        async with self._db.connection() as conn:
            if claim is None or not start:
                row = await self._insert(conn, run, start=start, return_steps=True)
                claimed = []
            else:
                rows = await conn.fetch(
                    QUERIES["create_run_and_claim"],
                    *self._create_args(run, start=start, return_steps=True),
                    claim.owner,
                    claim.limit,
                    claim.lease_seconds,
                    self._org_cap,
                    claim.turns,
                )
                row, claimed = rows[-1], [claimed_step(r) for r in rows[:-1]]
        if not row["created"]:
            found = await self.get_with_steps(run.organization_id, row["run_id"])
            assert found is not None
            return CreatedRun(*found, created=False)
        return CreatedRun(created_run(run, row), created_steps(run, row), [], [], True, claimed)

    async def create_delayed(self, run: NewRun, start_at: datetime) -> CreatedRun:
        """Create ``run`` in CREATED and register its delayed start at ``start_at`` (a
        schedule loop starts it then), in one transaction. Idempotent on
        ``request_id`` like :meth:`create`."""
        async with self._db.transaction() as conn:
            row = await self._insert(conn, run, start=False, return_steps=True)
            if row["created"]:
                await conn.execute(QUERIES["delay_run"], row["run_id"], start_at)
        if not row["created"]:
            found = await self.get_with_steps(run.organization_id, row["run_id"])
            assert found is not None
            return CreatedRun(*found, created=False)
        return CreatedRun(created_run(run, row), created_steps(run, row), [], [], True)

    async def insert_in(
        self, conn: Connection, run: NewRun, *, start: bool
    ) -> tuple[uuid.UUID, bool]:
        """Create ``run`` on ``conn`` (inside the caller's transaction: a schedule's
        tick); (run id, whether it was created rather than found by request_id)."""
        row = await self._insert(conn, run, start=start, return_steps=False)
        return row["run_id"], bool(row["created"])

    async def _insert(
        self, conn: Connection, run: NewRun, *, start: bool, return_steps: bool
    ) -> asyncpg.Record:
        row = await conn.fetchrow(
            QUERIES["create_run"], *self._create_args(run, start=start, return_steps=return_steps)
        )
        assert row is not None
        return row

    @staticmethod
    def _create_args(run: NewRun, *, start: bool, return_steps: bool) -> tuple[Any, ...]:
        """The parameters of ``create_run`` ($1-$21)."""
        encoded = run.encoded
        return (
            run.organization_id,
            run.definition_name,
            run.definition_version,
            run.plan if encoded is None else JsonText(encoded.plan_json),
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
            _step_params(run.steps) if encoded is None else JsonText(encoded.steps_json),
            start,
            return_steps,
            run.keying.to_json() if run.keying else None,
        )

    async def org_running(self, organization_id: str) -> int:
        """How many steps of the organization run now, as the claim counts them against
        ``max_running_steps_per_org``."""
        async with self._db.connection() as conn:
            return int(await conn.fetchval(QUERIES["org_running"], organization_id))

    async def key_running(self, organization_id: str, key: str) -> int:
        """How many admitted runs of concurrency key value ``key`` are unfinished."""
        async with self._db.connection() as conn:
            return int(await conn.fetchval(QUERIES["key_running"], organization_id, key))

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
        self,
        parent_step: tuple[uuid.UUID, str, int],
        run: NewRun,
        max_depth: int,
        *,
        cap_max_parallel: bool = False,
        usage: AttemptUsage | None = None,
    ) -> tuple[str, uuid.UUID | None]:
        """Create and start the child run of a sub-orchestration step, linked both ways,
        in one transaction fenced on the parent step's attempt.

        ``parent_step`` is (run id, step id, attempt); ``run`` is the child (its parent
        fields and depth are filled in here). Returns ``("created", child id)``,
        ``("fenced", None)`` when the parent step no longer runs that attempt, or
        ``("too_deep", None)`` when the child would be nested deeper than ``max_depth``.
        ``cap_max_parallel``: the child's max_parallel is at most the parent run's (the
        items of a ``for_each`` step). ``usage``: what the parent attempt used so far (a
        plan step's planner), added to the attempt, its step and its run, since the
        attempt stays open until the child ends.
        """
        parent_id, step_id, _ = parent_step
        async with self._db.transaction() as conn:
            status, parent = await self._lock_parent_step(
                conn, parent_step, run.organization_id, max_depth
            )
            if parent is None:
                return status, None
            depth = int(parent["depth"]) + 1
            max_parallel = run.max_parallel
            if cap_max_parallel:
                max_parallel = min(max_parallel, int(parent["max_parallel"]))
            child = dataclasses.replace(
                run,
                parent_run_id=parent_id,
                parent_step_id=step_id,
                depth=depth,
                max_parallel=max_parallel,
            )
            row = await self._insert(conn, child, start=True, return_steps=False)
            child_id: uuid.UUID = row["run_id"]
            await conn.execute(QUERIES["link_child_run"], parent_id, step_id, child_id)
            if usage is not None:
                await conn.execute(
                    QUERIES["add_attempt_usage"], parent_id, step_id, parent_step[2], *usage
                )
        return "created", child_id

    @staticmethod
    async def _lock_parent_step(
        conn: Connection,
        parent_step: tuple[uuid.UUID, str, int],
        organization_id: str,
        max_depth: int,
    ) -> tuple[str, asyncpg.Record | None]:
        """Lock the parent run, then its step, fenced on the attempt (the lock order):
        ``("ok", parent run row)``, or ``("fenced", None)`` when the step no longer runs
        that attempt, ``("too_deep", None)`` when a child would be deeper than
        ``max_depth``."""
        parent_id, step_id, attempt = parent_step
        parent = await conn.fetchrow(QUERIES["lock_run"], parent_id, organization_id)
        if parent is None or parent["state"] != "running":
            return "fenced", None
        if await conn.fetchval(QUERIES["lock_running_step"], parent_id, step_id, attempt) is None:
            return "fenced", None
        if int(parent["depth"]) + 1 > max_depth:
            return "too_deep", None
        return "ok", parent

    async def create_linked(
        self, parent_step: tuple[uuid.UUID, str, int], run: NewRun, max_depth: int, max_runs: int
    ) -> tuple[str, CreatedRun | None]:
        """Create and start a run an agent started with its step credential: a child run
        of that step (the step does not wait for it), in one transaction fenced on the
        step's attempt. Returns ``("created", run)`` (``created`` False on a known
        ``request_id``), ``("fenced", None)`` when the step no longer runs that attempt,
        ``("too_deep", None)`` past ``max_depth``, ``("too_many", None)`` when the step
        already started ``max_runs`` runs, or ``("request_id_taken", None)`` when the
        ``request_id`` names a run that is not a child of the step."""
        parent_id, step_id, _ = parent_step
        async with self._db.transaction() as conn:
            status, parent = await self._lock_parent_step(
                conn, parent_step, run.organization_id, max_depth
            )
            if parent is None:
                return status, None
            depth = int(parent["depth"]) + 1
            started = await conn.fetchval(QUERIES["count_step_children"], parent_id, step_id)
            if int(started) >= max_runs:
                return "too_many", None
            child = dataclasses.replace(
                run, parent_run_id=parent_id, parent_step_id=step_id, depth=depth
            )
            row = await self._insert(conn, child, start=True, return_steps=True)
        if not row["created"]:
            found = await self.get_with_steps(run.organization_id, row["run_id"])
            assert found is not None
            if (found[0].parent_run_id, found[0].parent_step_id) != (parent_id, step_id):
                return "request_id_taken", None  # by a run the step may not see
            return "created", CreatedRun(*found, created=False)
        return "created", CreatedRun(
            created_run(child, row), created_steps(child, row), [], [], True
        )

    async def finished_children(self, limit: int = 100) -> list[FinishedChild]:
        """Steps waiting on a child run that has finished (see ``finished_children``)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["finished_children"], limit)
        return [finished_child(r) for r in rows]

    async def get(self, organization_id: str, run_id: uuid.UUID) -> RunRow | None:
        """The run, or None."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["get_run"], run_id, organization_id)
        return None if row is None else run_row(row)

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
            run_row(row),
            [step_row(s) for s in steps],
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
        payloads: bool = True,
        parent_step_id: str | None = None,
    ) -> list[RunRow]:
        """Runs newest first, filtered, after the keyset position ``after``. Without
        ``payloads`` their input, output, metadata and plan are left empty (not read)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_runs" if payloads else "list_runs_basic"],
                organization_id,
                list(states),
                definition_name,
                dict(labels),
                parent_run_id,
                after[0] if after else None,
                after[1] if after else None,
                limit,
                parent_step_id,
            )
        return [run_row(r) for r in rows]

    async def payload(
        self, organization_id: str, run_id: uuid.UUID, step_id: str | None, field: str
    ) -> tuple[bool, Any]:
        """One stored payload (``field`` of the run, or of its step ``step_id``): whether
        the run (or step) exists, and the value (None when unset)."""
        async with self._db.connection() as conn:
            if step_id is None:
                row = await conn.fetchrow(QUERIES["run_payload"], organization_id, run_id, field)
            else:
                row = await conn.fetchrow(
                    QUERIES["step_payload"], organization_id, run_id, step_id, field
                )
        return (False, None) if row is None else (True, row["value"])

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
            rows = await conn.fetch(
                QUERIES["claim_steps"], owner, limit, lease_seconds, self._org_cap
            )
        return [claimed_step(r) for r in rows]

    async def complete(
        self, outcomes: Sequence[StepOutcome], claim: EagerClaim | None = None
    ) -> CompletedBatch:
        """Record a batch of attempt outcomes in one transaction (one statement,
        ``podium_complete_steps``), and with ``claim``, claim the steps it made runnable.

        Each is fenced by (step, attempt, state running): a stale one changes nothing.
        The batch is ordered like the claimers lock runs, so concurrent batches cannot
        deadlock each other.

        Returns, per (run, step, attempt), the run's state after the outcome: ``running``,
        ``succeeded`` or ``failed`` when this outcome ended the run, None when it was
        fenced; the steps claimed for ``claim.owner`` (leased like any claim's); and
        whether the caller's claim loop should look for work.
        """
        ordered = sorted(outcomes, key=lambda o: (o.run_created_at, o.run_id, o.step_id))
        args = (
            [o.run_id for o in ordered],
            [o.step_id for o in ordered],
            [o.attempt for o in ordered],
            [str(o.outcome) for o in ordered],
            [_json(o.output) if o.outcome in WITH_OUTPUT else None for o in ordered],
            [None if o.error is None else json_dumps(o.error.to_json()) for o in ordered],
            [_json(o.input) for o in ordered],
            [o.next_attempt_at for o in ordered],
            [o.input_tokens for o in ordered],
            [o.output_tokens for o in ordered],
            [o.cost_usd for o in ordered],
            claim.owner if claim else "",
            claim.limit if claim else 0,
            claim.lease_seconds if claim else 0.0,
            [o.model for o in ordered],
            self._org_cap,
            claim.turns if claim else True,
        )
        # A final failure fails its run, which cancels the run's unfinished descendants:
        # younger runs, maybe younger than runs later in the batch. Lock them all first,
        # in the claimers' order (rare: a batch of several runs with a failure in it).
        failing = {o.run_id for o in ordered if o.outcome == Outcome.FAILED}
        lock = bool(failing) and len({o.run_id for o in ordered}) > 1
        if not lock and not any(o.deliverables for o in ordered):
            # One statement is atomic by itself: no BEGIN/COMMIT round trips.
            async with self._db.connection() as conn:
                rows = await conn.fetch(QUERIES["complete_steps"], *args)
            return _completed(ordered, rows)
        async with self._db.transaction() as conn:
            if lock:
                await conn.execute(
                    QUERIES["lock_batch_runs"],
                    list({o.run_id for o in ordered}),
                    list(failing),
                )
            rows = await conn.fetch(QUERIES["complete_steps"], *args)
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
        return _completed(ordered, rows)

    async def budget_gate(self, step: ClaimedStep) -> str:
        """Before dispatching a claimed step of a run with a budget: ``ok`` (room left),
        else the attempt is given back and the run is ``paused`` or ``failed``;
        ``stale`` when the claim was fenced (``podium_budget_gate``)."""
        async with self._db.connection() as conn:
            status: str = await conn.fetchval(
                QUERIES["budget_gate"], step.run_id, step.step_id, step.attempt, step.task_id
            )
        return status

    async def complete_one(self, outcome: StepOutcome) -> bool:
        """Record one outcome; returns False when it was fenced (stale attempt)."""
        async with self._db.transaction() as conn:
            state: str | None = await conn.fetchval(
                QUERIES["complete_step"],
                outcome.run_id,
                outcome.step_id,
                outcome.attempt,
                outcome.outcome,
                outcome.output if outcome.outcome in WITH_OUTPUT else None,
                None if outcome.error is None else outcome.error.to_json(),
                outcome.input,
                outcome.next_attempt_at,
                outcome.input_tokens,
                outcome.output_tokens,
                outcome.cost_usd,
                outcome.model,
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
        self,
        owner: str,
        lease_seconds: float,
        held: Sequence[tuple[uuid.UUID, str, int]] | None = None,
    ) -> list[tuple[uuid.UUID, str, int]]:
        """Extend the leases of ``owner``'s running steps, or with ``held`` of those
        (run, step, attempt) only. Returns the (run, step, attempt) renewed; with
        ``held``, those still held: renewed, or whose row another transaction locks (the
        next renewal extends them). A ``held`` attempt missing from the answer lost its
        lease."""
        async with self._db.connection() as conn:
            if held is None:
                rows = await conn.fetch(QUERIES["renew_leases"], owner, lease_seconds)
            else:
                rows = await conn.fetch(
                    QUERIES["renew_held_leases"],
                    owner,
                    lease_seconds,
                    [k[0] for k in held],
                    [k[1] for k in held],
                    [k[2] for k in held],
                )
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

    async def count_runs_waiting_for_key(self, limit: int) -> int:
        """Started runs waiting for their concurrency key, counted up to ``limit``."""
        async with self._db.connection() as conn:
            count: int = await conn.fetchval(QUERIES["count_runs_waiting_for_key"], limit)
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
