"""Races and replays in the engine's SQL state machine, provoked directly against the
SQL functions on a migrated database (two connections interleaving transactions where a
race is the point).

What the contract promises: a crash, a restart or a second replica loses nothing and
duplicates nothing. Here: an outcome committed once is never applied again (the
completer retries a batch whose commit it could not confirm, relying on the fence), and
transactions that follow the lock order never wait on each other in a cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeAlias

import asyncpg

from podium.server.storage.approvals import ApprovalsRepository
from podium.server.storage.database import Database
from podium.server.storage.runs import (
    ClaimedStep,
    NewRun,
    NewStep,
    RunsRepository,
    StepOutcome,
)
from podium.server.storage.steps import Outcome, StepError, StepSpec

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

ORG = "default"


def new_run(steps: Sequence[tuple[str, Mapping[str, Any]]], name: str = "races") -> NewRun:
    """A run of independent steps ``(step id, extra spec)`` on an unregistered agent."""
    return NewRun(
        organization_id=ORG,
        definition_name=None,
        definition_version=None,
        plan={"name": name},
        input={},
        metadata={},
        labels={},
        request_id=None,
        max_parallel=10,
        bypass_cache=False,
        webhook_url=None,
        steps=[
            NewStep(
                step_id=step_id,
                position=i,
                state="pending",
                agent="echo",
                skill=None,
                depends_on=[],
                spec=StepSpec.from_json(
                    {"id": step_id, "agent": "echo", "on_failure": {}, **extra}
                ),
                max_attempts=1,
                timeout_seconds=None,
                input_refs=[],
                is_sink=True,
            )
            for i, (step_id, extra) in enumerate(steps)
        ],
    )


def outcome(step: ClaimedStep, result: Outcome = Outcome.SUCCEEDED, **fields: Any) -> StepOutcome:
    return StepOutcome(
        run_id=step.run_id,
        step_id=step.step_id,
        attempt=step.attempt,
        outcome=result,
        organization_id=step.organization_id,
        run_created_at=step.run_created_at,
        **fields,
    )


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[Conn]:
    conn: Conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def step_row(db: Database, run_id: uuid.UUID, step_id: str) -> dict[str, Any]:
    async with db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT state, attempt, lease_owner, approval_id FROM orchestration_steps"
            " WHERE run_id = $1 AND step_id = $2",
            run_id,
            step_id,
        )
    assert row is not None
    return dict(row)


async def event_types(db: Database, run_id: uuid.UUID) -> list[str]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT type FROM orchestration_events WHERE run_id = $1 ORDER BY sequence", run_id
        )
    return [r["type"] for r in rows]


async def claim_one(repo: RunsRepository, owner: str, run_id: uuid.UUID) -> ClaimedStep:
    """Claim until the one runnable step of ``run_id`` comes back (other runs' steps
    claimed on the way are left running)."""
    for _ in range(20):
        for step in await repo.claim(owner, 10, lease_seconds=60):
            if step.run_id == run_id:
                return step
    raise AssertionError(f"no runnable step in run {run_id}")


# -- fencing: an outcome committed once is never applied again -------------------------


async def test_a_retried_checkpoint_before_park_does_not_park_the_approved_attempt(
    db: Database,
) -> None:
    """A checkpoint_before park gives its attempt number back, so the attempt dispatched
    after the approval carries the same number. The completer retries a batch whose
    commit it could not confirm (a lost connection after COMMIT), trusting the fence:
    that late copy of the park must be refused, not park the running, approved attempt
    again (which deleted its attempt row, asked for a second approval and fenced the
    agent's real result)."""
    repo, approvals = RunsRepository(db), ApprovalsRepository(db)
    gate = {"checkpoint": {"when": "WHEN_BEFORE"}}
    run_id = (await repo.create(new_run([("gate", gate)]), start=True)).run.id
    parked = await claim_one(repo, "replica-1", run_id)
    park = outcome(
        parked, Outcome.CHECKPOINT_BEFORE, input={"q": 1}, output={"task_id": str(parked.task_id)}
    )
    assert await repo.complete_one(park) is True
    (approval,) = await approvals.list(ORG, states=["pending"], run_id=run_id, after=None, limit=10)
    status = await approvals.decide(
        ORG, approval.id, decision="approve", actor="ed", comment="", request_id=None, input=None
    )
    assert status == "ok"
    approved = await claim_one(repo, "replica-2", run_id)
    assert approved.spec.checkpoint_passed is True
    assert approved.attempt == parked.attempt  # the number was given back

    # The retried copy of the park changes nothing.
    assert await repo.complete_one(park) is False
    assert await step_row(db, run_id, "gate") == {
        "state": "running",
        "attempt": approved.attempt,
        "lease_owner": "replica-2",
        "approval_id": None,
    }
    assert await approvals.list(ORG, states=["pending"], run_id=run_id, after=None, limit=10) == []

    assert await repo.complete_one(outcome(approved, output={"ok": True})) is True
    run = await repo.get(ORG, run_id)
    assert run is not None and (run.state, run.output) == ("succeeded", {"gate": {"ok": True}})
    types = await event_types(db, run_id)
    assert types.count("step.awaiting_approval") == 1
    assert types.count("run.completed") == 1


async def test_a_retried_park_does_not_park_the_attempt_of_a_resumed_run(
    db: Database,
) -> None:
    """ResumeRun clears checkpoint_passed and the attempt number is reused: only the
    task id of the park's claim fences a late copy of it."""
    repo = RunsRepository(db)
    gate = {"checkpoint": {"when": "WHEN_BEFORE"}}
    run_id = (await repo.create(new_run([("gate", gate)]), start=True)).run.id
    parked = await claim_one(repo, "replica-1", run_id)
    park = outcome(
        parked, Outcome.CHECKPOINT_BEFORE, input={"q": 1}, output={"task_id": str(parked.task_id)}
    )
    assert await repo.complete_one(park) is True
    assert await repo.cancel(ORG, run_id, "stop") == "cancelled"
    assert await repo.resume(ORG, run_id) == "cancelled"
    again = await claim_one(repo, "replica-2", run_id)
    assert (again.attempt, again.task_id != parked.task_id) == (parked.attempt, True)

    assert await repo.complete_one(park) is False  # the old claim's copy: refused
    assert (await step_row(db, run_id, "gate"))["lease_owner"] == "replica-2"
    own = outcome(
        again, Outcome.CHECKPOINT_BEFORE, input={"q": 2}, output={"task_id": str(again.task_id)}
    )
    assert await repo.complete_one(own) is True  # the current claim parks normally


# -- lock order: parent before child, runs in (created_at, id) order ------------------


async def claim_all(
    repo: RunsRepository, owner: str, count: int
) -> dict[tuple[uuid.UUID, str], ClaimedStep]:
    """Claim ``count`` steps (of any run); by (run id, step id)."""
    claimed: dict[tuple[uuid.UUID, str], ClaimedStep] = {}
    for _ in range(20):
        for step in await repo.claim(owner, count - len(claimed), lease_seconds=60):
            claimed[step.run_id, step.step_id] = step
        if len(claimed) == count:
            return claimed
    raise AssertionError(f"only {sorted(claimed)} became runnable")


async def start_child(repo: RunsRepository, step: ClaimedStep, child: NewRun) -> uuid.UUID:
    """Start ``child`` as the sub-orchestration of the claimed ``step``."""
    status, child_id = await repo.create_child(
        (step.run_id, step.step_id, step.attempt), child, max_depth=5
    )
    assert status == "created" and child_id is not None
    return child_id


async def blocked_by(conn: Conn, pid: int) -> bool:
    """Whether some backend waits for a lock ``pid`` holds."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid)))",
        pid,
    )
    return found


async def test_cancelling_nested_children_keeps_the_lock_order(
    db: Database, database_url: str
) -> None:
    """CancelRun of a parent cancels its children and theirs. Runs are locked in
    (created_at, id) order by the claimers and the completers' sorted batches; the
    cancellation must follow it too, not walk the tree depth first: a grandchild G1
    created after its uncle C2 was locked before C2, so a batch completing steps of C2
    then G1 (in order) and the cancellation waited on each other in a cycle, and one
    of them was aborted as a deadlock (the CancelRun call failed)."""
    repo = RunsRepository(db)
    sub = {"orchestration": {"name": "child"}}
    parent = (await repo.create(new_run([("c1", sub), ("c2", sub)]), start=True)).run.id
    claimed = await claim_all(repo, "replica-1", 2)
    c1 = await start_child(repo, claimed[parent, "c1"], new_run([("g", sub)]))
    c2 = await start_child(repo, claimed[parent, "c2"], new_run([("x1", {}), ("x2", {})]))
    claimed = await claim_all(repo, "replica-1", 3)
    x1 = claimed[c2, "x1"]
    # G1 is created after its uncle C2.
    g1 = await start_child(repo, claimed[c1, "g"], new_run([("y", {})]))
    y = (await claim_all(repo, "replica-2", 1))[g1, "y"]

    complete = (
        "SELECT podium_complete_step($1, $2, $3, 'succeeded', '{}', NULL, NULL, NULL, 0, 0, 0)"
    )
    async with connect(database_url) as batch, connect(database_url) as watcher:
        # Another replica's completion batch, sorted like the claimers lock runs:
        # C2 (older) first, then G1.
        tx = batch.transaction()
        await tx.start()
        await batch.fetchval(complete, c2, x1.step_id, x1.attempt)
        cancel = asyncio.create_task(repo.cancel(ORG, parent, "stop"))
        pid = batch.get_server_pid()
        for _ in range(400):
            if cancel.done() or await blocked_by(watcher, pid):
                break
            await asyncio.sleep(0.025)
        assert not cancel.done(), "the cancellation should wait for the batch's lock on C2"
        try:
            await batch.fetchval(complete, g1, y.step_id, y.attempt)
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        finally:
            state = await cancel
    assert state == "cancelled"

    states = {}
    for run_id in (parent, c1, c2, g1):
        run = await repo.get(ORG, run_id)
        assert run is not None
        states[run_id] = run.state
    # G1's last step completed before the cancellation reached it.
    assert states == {parent: "cancelled", c1: "cancelled", c2: "cancelled", g1: "succeeded"}


async def test_a_batch_that_fails_a_parent_keeps_the_lock_order(
    db: Database, database_url: str
) -> None:
    """A completion batch is sorted like the claimers lock runs, but failing a run
    cancels its children, younger runs. A batch failing parent P and going on to run Q,
    created between P and its child C, locked C before Q; another batch completing
    steps of Q then C (in order) waited on it in a cycle, and one of the two was aborted
    as a deadlock. The batch now locks its runs and the failing runs' descendants
    first, in order."""
    repo = RunsRepository(db)
    sub = {"orchestration": {"name": "child"}}
    parent = (await repo.create(new_run([("sub", sub), ("bad", {})]), start=True)).run.id
    claimed = await claim_all(repo, "replica-1", 2)
    other = (await repo.create(new_run([("q1", {}), ("q2", {})]), start=True)).run.id
    child = await start_child(repo, claimed[parent, "sub"], new_run([("c1", {}), ("c2", {})]))
    claimed.update(await claim_all(repo, "replica-1", 4))
    bad, q1, q2, c1 = (
        claimed[parent, "bad"],
        claimed[other, "q1"],
        claimed[other, "q2"],
        claimed[child, "c1"],
    )

    complete = (
        "SELECT podium_complete_step($1, $2, $3, 'succeeded', '{}', NULL, NULL, NULL, 0, 0, 0)"
    )
    async with connect(database_url) as batch, connect(database_url) as watcher:
        # Another replica's batch, sorted: Q (older) first, then C.
        tx = batch.transaction()
        await tx.start()
        await batch.fetchval(complete, other, q1.step_id, q1.attempt)
        failure = outcome(bad, Outcome.FAILED, error=StepError("BOOM", "for good"))
        mine = asyncio.create_task(repo.complete([failure, outcome(q2, output={"q2": True})]))
        pid = batch.get_server_pid()
        for _ in range(400):
            if mine.done() or await blocked_by(watcher, pid):
                break
            await asyncio.sleep(0.025)
        assert not mine.done(), "this batch should wait for the other's lock on Q"
        try:
            await batch.fetchval(complete, child, c1.step_id, c1.attempt)
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        finally:
            states = (await mine).states
    assert states == {
        (parent, "bad", bad.attempt): "failed",
        (other, "q2", q2.attempt): "succeeded",
    }
    runs = [await repo.get(ORG, run_id) for run_id in (parent, other, child)]
    assert [r.state if r else None for r in runs] == ["failed", "succeeded", "cancelled"]
