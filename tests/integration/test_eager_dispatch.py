"""Eager dispatch: a completion batch claims the steps it made runnable in its own
transaction (``podium_complete_steps``), within the claim's limits, and other replicas
still take work through the normal claim.

Provoked directly against the repository on a migrated database, two "replicas" being
two owners (and, where timing is the point, two connections).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import asyncpg
import grpc

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.storage.database import Database
from podium.server.storage.runs import (
    ClaimedStep,
    EagerClaim,
    NewRun,
    NewStep,
    RunsRepository,
    StepOutcome,
)
from podium.server.storage.steps import Outcome, StepSpec
from tests.integration.conftest import StartServer, static_agents
from tests.integration.runs_helpers import Run, plan, start_run, wait_for_run

ORG = "default"


def dag(edges: Sequence[tuple[str, Sequence[str]]], *, max_parallel: int = 10) -> NewRun:
    """A run of ``(step id, depends_on)`` steps on agent ``echo``, in that order."""
    return NewRun(
        organization_id=ORG,
        definition_name=None,
        definition_version=None,
        plan={"name": "eager"},
        input={},
        metadata={},
        labels={},
        request_id=None,
        max_parallel=max_parallel,
        bypass_cache=False,
        webhook_url=None,
        steps=[
            NewStep(
                step_id=step_id,
                position=i,
                state="pending",
                agent="echo",
                skill=None,
                depends_on=list(deps),
                spec=StepSpec.from_json({"id": step_id, "agent": "echo", "on_failure": {}}),
                max_attempts=1,
                timeout_seconds=None,
                input_refs=[],
                is_sink=True,
            )
            for i, (step_id, deps) in enumerate(edges)
        ],
    )


async def limit_echo(db: Database, *, max_concurrency: int, agent: str = "echo") -> None:
    """Register ``agent`` (the steps' ``echo`` by default) with a ``max_concurrency``:
    its steps need counting."""
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO agents (organization_id, name, endpoint, max_concurrency)"
            " VALUES ($1, $2, '127.0.0.1:1', $3)",
            ORG,
            agent,
            max_concurrency,
        )


def done(step: ClaimedStep) -> StepOutcome:
    return StepOutcome(
        run_id=step.run_id,
        step_id=step.step_id,
        attempt=step.attempt,
        outcome=Outcome.SUCCEEDED,
        organization_id=step.organization_id,
        run_created_at=step.run_created_at,
        output={"from": step.step_id},
    )


async def running(db: Database, run_id: uuid.UUID) -> dict[str, str | None]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT step_id, lease_owner FROM orchestration_steps"
            " WHERE run_id = $1 AND state = 'running'",
            run_id,
        )
    return {r["step_id"]: r["lease_owner"] for r in rows}


async def test_a_completion_claims_the_step_it_made_runnable(db: Database) -> None:
    repo = RunsRepository(db)
    run = (await repo.create(dag([("a", []), ("b", ["a"]), ("c", ["b"])]), start=True)).run.id
    (a,) = await repo.claim("replica-1", 10, lease_seconds=60)

    batch = await repo.complete([done(a)], EagerClaim("replica-1", 10, 60))

    assert batch.states == {(run, "a", 1): "running"}
    assert [(s.step_id, s.attempt) for s in batch.claimed] == [("b", 1)]
    assert batch.claimed[0].upstream == {}  # b references nothing
    assert await running(db, run) == {"b": "replica-1"}
    assert not batch.wake  # everything it made runnable is claimed: nobody to wake
    async with db.connection() as conn:
        types = await conn.fetch(
            "SELECT type, step_id FROM orchestration_events WHERE run_id = $1 ORDER BY sequence",
            run,
        )
    assert [(t["type"], t["step_id"]) for t in types][-3:] == [
        ("step.completed", "a"),
        ("step.queued", "b"),
        ("step.started", "b"),
    ]
    # The eager claim is a claim like any other: fenced, leased, counted.
    last = await repo.complete([done(batch.claimed[0])], EagerClaim("replica-1", 10, 60))
    assert [s.step_id for s in last.claimed] == ["c"]
    final = await repo.complete([done(last.claimed[0])], EagerClaim("replica-1", 10, 60))
    assert final.states == {(run, "c", 1): "succeeded"} and final.claimed == []


async def test_only_a_step_of_a_limited_agent_wakes_the_claim_loop(db: Database) -> None:
    """A batch wakes its replica's claim loop for a freed agent slot only when one of its
    steps ran on an agent with a max_concurrency: a limit on another agent costs a
    sequential run's completions no claim of their own."""
    repo = RunsRepository(db)
    await limit_echo(db, max_concurrency=2, agent="other")
    await repo.create(dag([("a", []), ("b", ["a"]), ("c", ["b"])]), start=True)
    (a,) = await repo.claim("replica-1", 10, lease_seconds=60)

    batch = await repo.complete([done(a)], EagerClaim("replica-1", 10, 60))

    assert [s.step_id for s in batch.claimed] == ["b"]
    assert not batch.wake  # echo has no limit: its finished step freed nobody's slot
    await limit_echo(db, max_concurrency=5)
    batch = await repo.complete([done(batch.claimed[0])], EagerClaim("replica-1", 10, 60))
    assert [s.step_id for s in batch.claimed] == ["c"]
    assert batch.wake  # b's slot on echo is free: a step of another run may take it


async def test_an_eager_claim_takes_turns_with_other_shares_only_when_asked(
    db: Database,
) -> None:
    """With turns (the scheduler's slots are contended), a completion whose run's share
    is not alone in the queue claims over every run: another organization's queued step
    gets the freed slots too. Without (slots to spare: whatever another share has queued
    is held by its own limits), it claims only its own run's step, and the other waits
    for the claim loop, without the claim over every run on each batch."""
    repo = RunsRepository(db)
    async with db.connection() as conn:
        await conn.execute("INSERT INTO organizations (id, name) VALUES ('other', 'other')")
    for turns in (True, False):
        mine = (await repo.create(dag([("a", []), ("b", ["a"])]), start=True)).run.id
        (a,) = await repo.claim("replica-1", 10, lease_seconds=60)
        other = replace(dag([("x", [])]), organization_id="other")
        theirs = (await repo.create(other, start=True)).run.id

        batch = await repo.complete([done(a)], EagerClaim("replica-1", 10, 60, turns))

        claimed = sorted((s.run_id, s.step_id) for s in batch.claimed)
        if turns:
            assert claimed == sorted([(mine, "b"), (theirs, "x")])
        else:
            assert claimed == [(mine, "b")]
            assert [s.step_id for s in await repo.claim("replica-2", 10, 60)] == ["x"]


async def test_a_claim_passes_over_runs_waiting_on_their_agents_limit(db: Database) -> None:
    """Queued steps behind an agent whose running steps reach its max_concurrency do not
    make their runs candidates of a claim: it visits none of them (no agent lock asked),
    and takes them once the agent has a free slot again."""
    repo = RunsRepository(db)
    await limit_echo(db, max_concurrency=1)
    for _ in range(5):
        await repo.create(dag([("a", [])]), start=True)
    (first,) = await repo.claim("replica-1", 10, lease_seconds=60)  # echo's only slot

    async with db.transaction() as conn:
        await conn.execute("SET LOCAL track_functions = 'pl'")
        claimed = await conn.fetch("SELECT * FROM podium_claim_steps('replica-1', 10, 60)")
        locks = await conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
            " WHERE funcname = 'podium_claim_lock'"
        )
    assert claimed == [] and locks == 0

    await repo.complete([done(first)], None)
    assert len(await repo.claim("replica-1", 10, lease_seconds=60)) == 1


async def test_a_claim_passes_over_runs_at_their_max_parallel(db: Database) -> None:
    """A run whose running steps reach its max_parallel is not a candidate of a claim:
    the claim locks none of them (it locked each, to count its steps and start none),
    and takes the run's next step once one of its steps finished."""
    repo = RunsRepository(db)
    for _ in range(4):
        await repo.create(dag([("a", []), ("b", []), ("c", [])], max_parallel=1), start=True)
    first = await repo.claim("replica-1", 10, lease_seconds=60)
    assert len(first) == 4  # one step of each run

    async with db.transaction() as conn:
        claimed = await conn.fetch("SELECT * FROM podium_claim_steps('replica-1', 10, 60)")
        locked = await conn.fetchval(
            "SELECT count(*) FROM orchestration_runs"
            " WHERE xmax::text = (txid_current() % 4294967296)::text"
        )
    assert claimed == [] and locked == 0

    await repo.complete([done(first[0])], None)
    (again,) = await repo.claim("replica-1", 10, lease_seconds=60)
    assert again.run_id == first[0].run_id


async def test_a_sequential_step_is_picked_within_the_organizations_cap(
    db: Database,
) -> None:
    """With PODIUM_MAX_RUNNING_STEPS_PER_ORG, a completion still decides its run's next
    step itself (podium_pick_steps, not the general claim), counted against the cap
    under the organization's lock: with the cap reached by other steps it takes none."""
    repo = RunsRepository(db, max_running_steps_per_org=2)
    first = (await repo.create(dag([("a", []), ("b", ["a"])]), start=True)).run.id
    await repo.create(dag([("x", [])]), start=True)
    claimed = await repo.claim("replica-1", 10, lease_seconds=60)
    assert sorted(s.step_id for s in claimed) == ["a", "x"]  # the cap: 2 running
    await repo.create(dag([("y", [])]), start=True)  # waits for the cap
    complete = (
        "SELECT * FROM podium_complete_steps(ARRAY[$1]::uuid[], ARRAY['a'], ARRAY[1],"
        " ARRAY['succeeded'], ARRAY['{}'::jsonb], ARRAY[NULL::jsonb], ARRAY[NULL::jsonb],"
        " ARRAY[NULL::timestamptz], ARRAY[0::bigint], ARRAY[0::bigint], ARRAY[0::numeric],"
        " 'replica-1', 10, 60, NULL, 2)"
    )
    async with db.transaction() as conn:
        await conn.execute("SET LOCAL track_functions = 'pl'")
        rows = await conn.fetch(complete, first)
        calls = {
            r["funcname"]: r["calls"]
            for r in await conn.fetch(
                "SELECT funcname, calls FROM pg_stat_xact_user_functions"
                " WHERE funcname IN ('podium_pick_steps', 'podium_claim_steps_of')"
            )
        }
    assert [r["step_id"] for r in rows if r["run_id"] is not None] == ["b"]
    assert calls == {"podium_pick_steps": 1}
    async with db.connection() as conn:
        running = await conn.fetchval(
            "SELECT count(*) FROM orchestration_steps WHERE state = 'running'"
        )
    assert running == 2 and await repo.claim("replica-1", 10, lease_seconds=60) == []


async def test_another_replica_steals_what_the_eager_claim_leaves(db: Database) -> None:
    """A replica without free slots claims nothing eagerly; one with fewer slots than
    the promoted steps takes what fits. The rest stays queued and the batch says so
    (NOTIFY podium_work), so another replica's normal claim takes it."""
    repo = RunsRepository(db)
    fan = [("root", []), *[(f"m{i}", ["root"]) for i in range(4)]]
    run = (await repo.create(dag(fan), start=True)).run.id
    (root,) = await repo.claim("replica-1", 10, lease_seconds=60)

    batch = await repo.complete([done(root)], EagerClaim("replica-1", 1, 60))

    assert len(batch.claimed) == 1 and batch.wake
    stolen = await repo.claim("replica-2", 10, lease_seconds=60)
    assert sorted(s.step_id for s in stolen + batch.claimed) == ["m0", "m1", "m2", "m3"]
    owners = await running(db, run)
    assert sorted(str(o) for o in owners.values()) == ["replica-1"] + ["replica-2"] * 3

    # No slots at all: nothing is claimed in the completion.
    other = (await repo.create(dag([("x", []), ("y", ["x"])]), start=True)).run.id
    (x,) = await repo.claim("replica-1", 10, lease_seconds=60)
    full = await repo.complete([done(x)], None)
    assert full.claimed == [] and full.wake
    assert [s.step_id for s in await repo.claim("replica-2", 10, lease_seconds=60)] == ["y"]
    assert await running(db, other) == {"y": "replica-2"}


async def test_eager_claims_keep_max_parallel_and_max_concurrency(db: Database) -> None:
    """Two replicas completing and claiming eagerly never exceed a run's max_parallel
    or an agent's max_concurrency (the eager claim counts like the claim)."""
    repo = RunsRepository(db)
    await limit_echo(db, max_concurrency=3)
    fan = [("root", []), *[(f"m{i}", ["root"]) for i in range(6)]]
    first = (await repo.create(dag(fan, max_parallel=2), start=True)).run.id
    second = (await repo.create(dag(fan, max_parallel=5), start=True)).run.id
    roots = await repo.claim("replica-1", 10, lease_seconds=60)
    assert {s.run_id for s in roots} == {first, second}

    by_owner = {"replica-1": [roots[0]], "replica-2": [roots[1]]}
    for _ in range(20):
        for owner, steps in list(by_owner.items()):
            if not steps:
                continue
            batch = await repo.complete([done(steps.pop(0))], EagerClaim(owner, 10, 60))
            steps.extend(batch.claimed)
            now_first, now_second = await running(db, first), await running(db, second)
            assert len(now_first) <= 2
            assert len(now_first) + len(now_second) <= 3  # the agent's max_concurrency
        if not any(by_owner.values()):
            by_owner["replica-1"].extend(await repo.claim("replica-1", 10, lease_seconds=60))
    for run_id in (first, second):
        found = await repo.get(ORG, run_id)
        assert found is not None and found.state == "succeeded"


async def test_a_batch_promotes_and_claims_steps_of_several_runs(db: Database) -> None:
    repo = RunsRepository(db)
    runs = [
        (await repo.create(dag([("a", []), ("b", ["a"]), ("c", ["a"])]), start=True)).run.id
        for _ in range(3)
    ]
    roots = await repo.claim("replica-1", 10, lease_seconds=60)
    assert sorted(s.run_id for s in roots) == sorted(runs)

    batch = await repo.complete([done(s) for s in reversed(roots)], EagerClaim("r", 10, 60))

    assert set(batch.states.values()) == {"running"}
    assert sorted((s.run_id, s.step_id) for s in batch.claimed) == sorted(
        (run, step) for run in runs for step in ("b", "c")
    )
    assert not batch.wake


async def test_an_eager_claim_gives_way_to_a_claimer_holding_the_agents_lock(
    db: Database, database_url: str
) -> None:
    """The completion holds its runs' rows when it would claim; a claim holding the lock
    of a limited agent (40_claim.sql) may wait for one of them. The completion then
    claims nothing for that agent (no deadlock) and leaves the step queued for the
    claimers."""
    repo = RunsRepository(db)
    await limit_echo(db, max_concurrency=3)
    run = (await repo.create(dag([("a", []), ("b", ["a"])]), start=True)).run.id
    (a,) = await repo.claim("replica-1", 10, lease_seconds=60)
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(1886350959, hashtext($1 || chr(31) || 'echo'))",
                ORG,
            )
            batch = await repo.complete([done(a)], EagerClaim("replica-1", 10, 60))
    finally:
        await conn.close()
    assert batch.claimed == [] and batch.wake
    assert [s.step_id for s in await repo.claim("replica-2", 10, lease_seconds=60)] == ["b"]
    assert await running(db, run) == {"b": "replica-2"}


async def test_start_run_claims_its_first_steps_for_the_replica_that_served_it(
    db: Database,
) -> None:
    repo = RunsRepository(db)
    fan = [("a", []), ("b", []), ("c", []), ("d", ["a", "b", "c"])]

    created = await repo.create(
        dag(fan, max_parallel=2), start=True, claim=EagerClaim("replica-1", 10, 60)
    )

    run = created.run.id
    assert sorted(s.step_id for s in created.claimed) == ["a", "b"]  # max_parallel 2
    assert all(s.attempt == 1 and s.run_id == run for s in created.claimed)
    assert await running(db, run) == {"a": "replica-1", "b": "replica-1"}
    # The response is the run as created; the rest is claimed as usual.
    assert {s.step_id: s.state for s in created.steps}["a"] == "queued"
    assert [s.step_id for s in await repo.claim("replica-2", 10, lease_seconds=60)] == []
    batch = await repo.complete([done(created.claimed[0])], EagerClaim("replica-2", 10, 60))
    assert [s.step_id for s in batch.claimed] == ["c"]

    # Not started, or no claim: nothing claimed.
    later = await repo.create(dag(fan), start=False, claim=EagerClaim("replica-1", 10, 60))
    assert later.claimed == []
    plain = await repo.create(dag(fan), start=True)
    assert plain.claimed == []
    assert len(await repo.claim("replica-2", 10, lease_seconds=60)) == 3


async def test_the_start_of_a_run_start_run_claimed_wakes_no_claim(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """The start's NOTIFY podium_work names the run: the replica whose StartRun claimed
    every queued step of it claims nothing more for it, while a run started without an
    eager claim (ContinueRun) still wakes the claim loop (the fallback timer is a minute
    away, so only the notification can start it in time)."""
    server = await start_server(
        agents=static_agents(example_agents, "echo"), poll_interval_seconds=60.0
    )
    scheduler = server.engine.scheduler
    repository: Any = scheduler._repository
    real_claim = repository.claim
    claims = 0

    async def counted_claim(*args: Any, **kwargs: Any) -> list[ClaimedStep]:
        nonlocal claims
        claims += 1
        result: list[ClaimedStep] = await real_claim(*args, **kwargs)
        return result

    repository.claim = counted_claim
    one_step = plan([{"id": "only", "agent": "echo", "input": {"x": 1}}])
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        for _ in range(3):
            run = await wait_for_run(stub, (await start_run(stub, inline=one_step)).run.id)
            assert run.state == Run.STATE_SUCCEEDED
        assert claims == 0

        created = await start_run(stub, inline=one_step, start=False)
        await stub.ContinueRun(pb.ContinueRunRequest(run_id=created.run.id))
        run = await wait_for_run(stub, created.run.id)
        assert run.state == Run.STATE_SUCCEEDED
        assert claims >= 1


async def test_concurrent_start_runs_each_claim_their_own_first_step(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    """A StartRun reserves only the slots its run's first steps can use: 16 StartRuns
    of one-step runs in flight at once on a replica with 16 free slots each claim their
    own step in their own transaction (a StartRun reserving a whole batch left the
    others no slot, so they claimed nothing and sent NOTIFY podium_work instead)."""
    runs = 16
    server = await start_server(
        agents=static_agents(example_agents, "echo"),
        poll_interval_seconds=60.0,
        worker_slots=runs,
        claim_batch_size=32,
    )
    scheduler: Any = server.engine.scheduler
    # The claim loop's first claim, sent when the scheduler starts, holds every free slot
    # while it is in flight: a StartRun served meanwhile finds none to claim with (on a
    # loaded machine, all 16 did).
    for _ in range(1000):
        if scheduler._free() == runs:
            break
        await asyncio.sleep(0.01)
    repository: Any = scheduler._repository
    real_create, real_claim = repository.create, repository.claim
    in_flight = 0
    all_in_flight = asyncio.Event()
    eager: list[tuple[int, int]] = []  # (claim limit, steps claimed) per StartRun
    claims = 0

    async def gathered_create(new: NewRun, **kwargs: Any) -> Any:
        # Every StartRun holds its reservation (or went without one) before any
        # commits, whatever the order the server serves them in.
        nonlocal in_flight
        in_flight += 1
        if in_flight == runs:
            all_in_flight.set()
        await asyncio.wait_for(all_in_flight.wait(), 30)
        created = await real_create(new, **kwargs)
        claim = kwargs.get("claim")
        eager.append((0 if claim is None else claim.limit, len(created.claimed)))
        return created

    async def counted_claim(*args: Any, **kwargs: Any) -> list[ClaimedStep]:
        nonlocal claims
        claims += 1
        result: list[ClaimedStep] = await real_claim(*args, **kwargs)
        return result

    repository.create, repository.claim = gathered_create, counted_claim
    notified: list[str] = []
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener("podium_work", lambda *args: notified.append(args[3]))
        one_step = plan([{"id": "only", "agent": "echo", "input": {"x": 1}}])
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            started = await asyncio.gather(*(start_run(stub, inline=one_step) for _ in range(runs)))
            for response in started:
                run = await wait_for_run(stub, response.run.id)
                assert run.state == Run.STATE_SUCCEEDED
        await listener.execute("SELECT 1")  # notifications sent before are read
    finally:
        await listener.close()

    assert sorted(eager) == [(1, 1)] * runs
    assert claims == 0
    assert notified == []


async def test_a_replica_renews_only_the_leases_it_holds(db: Database) -> None:
    """A step claimed for a replica that never saw the answer (an eager claim whose
    commit went through while its connection failed) is not renewed: it expires and
    runs again."""
    repo = RunsRepository(db)
    run = (await repo.create(dag([("a", []), ("b", [])]), start=True)).run.id
    claimed = await repo.claim("replica-1", 10, lease_seconds=60)
    held = [(s.run_id, s.step_id, s.attempt) for s in claimed if s.step_id == "a"]

    assert await repo.renew_leases("replica-1", 60, held) == held
    assert await repo.renew_leases("replica-1", 60, []) == []
    assert sorted(k[1] for k in await repo.renew_leases("replica-1", 60)) == ["a", "b"]
    assert await running(db, run) == {"a": "replica-1", "b": "replica-1"}


async def test_a_lease_whose_row_another_transaction_holds_is_still_held(
    db: Database, database_url: str
) -> None:
    """A running step's row locked by another transaction (a sub-orchestration's start,
    a run its agent starts with its step credential, a completion) cannot be renewed
    then, but its attempt has not lost its lease: the renewal reports it held, and the
    next one extends it. An attempt the replica does not run any more is not held."""
    repo = RunsRepository(db)
    run = (await repo.create(dag([("a", [])]), start=True)).run.id
    (claimed,) = await repo.claim("replica-1", 10, lease_seconds=60)
    held = [(claimed.run_id, "a", claimed.attempt)]
    lease = "SELECT lease_expires_at FROM orchestration_steps WHERE run_id = $1"
    other = await asyncpg.connect(database_url)
    try:
        before = await other.fetchval(lease, run)
        async with other.transaction():
            await other.execute(
                "SELECT 1 FROM orchestration_steps WHERE run_id = $1 FOR UPDATE", run
            )
            assert await repo.renew_leases("replica-1", 120, held) == held
        assert await other.fetchval(lease, run) == before  # skipped, not extended
        assert await repo.renew_leases("replica-1", 120, held) == held
        assert await other.fetchval(lease, run) > before
    finally:
        await other.close()
    assert await repo.renew_leases("replica-1", 120, [(run, "a", 2)]) == []
    assert await repo.renew_leases("replica-2", 120, held) == []


async def _events(db: Database, run_id: uuid.UUID) -> list[tuple[str, str | None]]:
    """The run's events as (type, step id), checked to be numbered without gaps."""
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT sequence, type, step_id FROM orchestration_events"
            " WHERE run_id = $1 ORDER BY sequence",
            run_id,
        )
    assert [r["sequence"] for r in rows] == list(range(1, len(rows) + 1))
    return [(r["type"], r["step_id"]) for r in rows]


async def test_a_batch_of_successes_of_one_run_is_recorded_set_based(db: Database) -> None:
    """Several successes of one run in one batch (podium_complete_successes): the join
    they both release is queued once, events are numbered without gaps in the order
    completed -> queued -> started, the run ends once (its last outcome reports it) with
    its sinks' outputs, and a stale attempt in the same batch changes nothing."""
    repo = RunsRepository(db)
    join = (await repo.create(dag([("a", []), ("b", []), ("j", ["a", "b"])]), start=True)).run.id
    pair = (await repo.create(dag([("x", []), ("y", [])]), start=True)).run.id
    roots = await repo.claim("replica-1", 10, lease_seconds=60)
    assert sorted((s.run_id, s.step_id) for s in roots) == sorted(
        [(join, "a"), (join, "b"), (pair, "x"), (pair, "y")]
    )
    stale = next(s for s in roots if s.step_id == "x")
    stale_outcome = StepOutcome(
        run_id=stale.run_id,
        step_id=stale.step_id,
        attempt=stale.attempt + 1,  # an attempt that never ran: fenced
        outcome=Outcome.SUCCEEDED,
        organization_id=stale.organization_id,
        run_created_at=stale.run_created_at,
        output={"stale": True},
    )
    first = await repo.complete(
        [done(s) for s in roots if s.run_id == join] + [stale_outcome], EagerClaim("r", 10, 60)
    )
    assert first.states == {
        (join, "a", 1): "running",
        (join, "b", 1): "running",
        (pair, "x", 2): None,
    }
    assert [(s.run_id, s.step_id) for s in first.claimed] == [(join, "j")]
    assert (await _events(db, join))[-4:] == [
        ("step.completed", "a"),
        ("step.completed", "b"),
        ("step.queued", "j"),
        ("step.started", "j"),
    ]

    second = await repo.complete([done(s) for s in roots if s.run_id == pair])
    assert sorted(second.states.values(), key=str) == ["running", "succeeded"]
    async with db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT state, steps_remaining, output FROM orchestration_runs WHERE id = $1", pair
        )
    assert row is not None
    assert (row["state"], row["steps_remaining"]) == ("succeeded", 0)
    assert row["output"] == {"x": {"from": "x"}, "y": {"from": "y"}}
    types = [t for t, _ in await _events(db, pair)]
    assert types.count("run.completed") == 1 and types[-1] == "run.completed"


# Successes of steps ($1[i] of run $2[i], attempt $3[i]) in one batch with its eager
# claim, as the scheduler commits them (RunsRepository.complete).
_COMPLETE = """
SELECT run_id, step_id, attempt FROM podium_complete_steps(
    $1::uuid[], $2::text[], $3::integer[], array_fill('succeeded'::text, ARRAY[$4::int]),
    array_fill('{}'::jsonb, ARRAY[$4::int]), array_fill(NULL::jsonb, ARRAY[$4::int]),
    array_fill(NULL::jsonb, ARRAY[$4::int]), array_fill(NULL::timestamptz, ARRAY[$4::int]),
    array_fill(0::bigint, ARRAY[$4::int]), array_fill(0::bigint, ARRAY[$4::int]),
    array_fill(0::numeric, ARRAY[$4::int]), 'replica-1', 10, 60)
 WHERE run_id IS NOT NULL
"""

# Rows written, per table, by this backend since its statistics were last reported
# (PostgreSQL's own counters; read twice in one transaction, their difference is what
# the statements between wrote).
_WRITES = """
SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables
 WHERE relname IN ('orchestration_runs', 'orchestration_steps', 'orchestration_events')
"""


async def _complete(
    db: Database, *steps: ClaimedStep
) -> tuple[list[tuple[str, int]], dict[str, tuple[int, int]]]:
    """Successes of ``steps`` in one batch through podium_complete_steps with its eager
    claim, in a transaction of its own: the steps it claimed and the rows it inserted
    and updated per table."""
    async with db.transaction() as conn:
        before = {r["relname"]: r for r in await conn.fetch(_WRITES)}
        claimed = await conn.fetch(
            _COMPLETE,
            [s.run_id for s in steps],
            [s.step_id for s in steps],
            [s.attempt for s in steps],
            len(steps),
        )
        after = await conn.fetch(_WRITES)
    return (
        [(r["step_id"], r["attempt"]) for r in claimed],
        {
            r["relname"]: (
                r["n_tup_ins"] - before[r["relname"]]["n_tup_ins"],
                r["n_tup_upd"] - before[r["relname"]]["n_tup_upd"],
            )
            for r in after
        },
    )


async def test_a_single_success_decides_its_runs_claim_with_its_own_writes(
    db: Database,
) -> None:
    """A single success whose run takes the claim's simplest path (agents without
    limits, no budget, no key limit, its share alone in the queue) picks the steps it
    made runnable itself: the run row updated once and one insert of every event
    (completed, queued, started), numbered without gaps, within max_parallel; the
    steps past it stay queued for the claims, and nobody is woken for them."""
    repo = RunsRepository(db)
    fan = [("root", []), *[(f"m{i}", ["root"]) for i in range(4)]]
    run = (await repo.create(dag(fan, max_parallel=2), start=True)).run.id
    (root,) = await repo.claim("replica-1", 10, lease_seconds=60)

    claimed, writes = await _complete(db, root)

    assert claimed == [("m0", 1), ("m1", 1)]  # max_parallel 2, in the claim's order
    assert writes["orchestration_runs"][1] == 1  # once: not again for the lease's events
    assert writes["orchestration_events"][0] == 1 + 4 + 2
    assert await running(db, run) == {"m0": "replica-1", "m1": "replica-1"}
    events = await _events(db, run)
    assert events[-7:] == [
        ("step.completed", "root"),
        *[("step.queued", f"m{i}") for i in range(4)],
        ("step.started", "m0"),
        ("step.started", "m1"),
    ]
    async with db.connection() as conn:
        started = await conn.fetch(
            "SELECT e.step_id, e.attempt, e.payload, a.attempt AS leased"
            "  FROM orchestration_events e"
            "  JOIN step_attempts a ON a.run_id = e.run_id AND a.step_id = e.step_id"
            " WHERE e.run_id = $1 AND e.type = 'step.started' AND e.step_id LIKE 'm%'",
            run,
        )
        last = await conn.fetchval(
            "SELECT last_event_sequence FROM orchestration_runs WHERE id = $1", run
        )
    assert sorted((r["step_id"], r["attempt"], r["leased"]) for r in started) == [
        ("m0", 1, 1),
        ("m1", 1, 1),
    ]
    assert all(r["payload"] == {"agent": "echo"} for r in started)
    assert last == len(events)
    # The rest is the claims': a later completion's or the scheduler's.
    assert sorted(s.step_id for s in await repo.claim("replica-2", 10, lease_seconds=60)) == []
    m0 = StepOutcome(
        run_id=run,
        step_id="m0",
        attempt=1,
        outcome=Outcome.SUCCEEDED,
        organization_id=ORG,
        run_created_at=root.run_created_at,
        output={},
    )
    batch = await repo.complete([m0], EagerClaim("replica-1", 10, 60))
    assert [s.step_id for s in batch.claimed] == ["m2"] and not batch.wake


async def test_a_single_success_leaves_a_run_that_needs_counting_to_the_claim(
    db: Database,
) -> None:
    """A run whose next step's agent has a max_concurrency is claimed by the claim,
    which counts it (the run row updated again for the claim's events)."""
    repo = RunsRepository(db)
    await limit_echo(db, max_concurrency=1)
    run = (await repo.create(dag([("a", []), ("b", ["a"])]), start=True)).run.id
    (a,) = await repo.claim("replica-1", 10, lease_seconds=60)

    claimed, writes = await _complete(db, a)

    assert claimed == [("b", 1)]
    assert writes["orchestration_runs"][1] == 2
    assert [t for t, _ in await _events(db, run)][-3:] == [
        "step.completed",
        "step.queued",
        "step.started",
    ]


async def test_a_batch_of_successes_decides_its_runs_claims_with_its_own_writes(
    db: Database,
) -> None:
    """The set-based path (podium_complete_successes) decides the eager claim of the
    runs where it takes the claim's simplest path before it updates their rows: each
    run row updated once, every event (completed, queued, started) in one insert,
    numbered without gaps, in the claim's order."""
    repo = RunsRepository(db)
    first = (await repo.create(dag([("a", []), ("b", ["a"])]), start=True)).run.id
    second = (await repo.create(dag([("x", []), ("y", ["x"])]), start=True)).run.id
    roots = await repo.claim("replica-1", 10, lease_seconds=60)

    claimed, writes = await _complete(db, *roots)

    assert claimed == [("b", 1), ("y", 1)]  # runs by age, as the claim orders them
    assert writes["orchestration_runs"][1] == 2  # one update of each run row
    assert writes["orchestration_events"][0] == 6
    assert await running(db, first) == {"b": "replica-1"}
    assert await running(db, second) == {"y": "replica-1"}
    for run, (done_step, next_step) in ((first, ("a", "b")), (second, ("x", "y"))):
        assert (await _events(db, run))[-3:] == [
            ("step.completed", done_step),
            ("step.queued", next_step),
            ("step.started", next_step),
        ]
