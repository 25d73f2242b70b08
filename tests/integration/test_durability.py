"""Durability of the engine: crashes, replicas, leases, fencing, lost notifications.

The agents run in this test process (they outlive every server the tests kill), and
their :class:`~podium.client.examples.agents.AgentStats` say what they executed. Servers
run as ``podium serve`` OS processes where a crash or a signal is the point, in process
otherwise. What the API does not expose (attempts ended by lease expiry, events per
step) is read from Postgres directly.

Guarantee under test: a step is executed at least once, its completion is recorded
exactly once (attempt fencing), and a run finishes whatever happens to the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import grpc
import pytest
from google.protobuf import json_format

from podium.client.agent import Skill, Task
from podium.client.examples.agents import ExampleAgent, ExampleAgents, serve_examples
from podium.orchestration.v1 import definition_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.storage.database import Database
from podium.server.storage.runs import (
    ClaimedStep,
    NewRun,
    NewStep,
    RunsRepository,
    StepOutcome,
)
from podium.server.storage.steps import Outcome, StepError, StepSpec
from tests.integration.conftest import StartServer, static_agents
from tests.integration.processes import PodiumProcess, start_podium, wait_exit
from tests.integration.runs_helpers import (
    attempts,
    completed_events,
    definition,
    event_types,
    get_run,
    listener_backends,
    start_run,
    step_states,
    wait_for,
    wait_for_run,
    wait_until,
)

log = logging.getLogger(__name__)

SUCCEEDED = run_pb2.Run.STATE_SUCCEEDED
STEP_RUNNING = run_pb2.StepRun.STATE_RUNNING
STEP_SUCCEEDED = run_pb2.StepRun.STATE_SUCCEEDED

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"


def serve_env(database_url: str, agents: str, **extra: str) -> dict[str, str]:
    """Environment of a ``podium serve`` replica with fast leases and timers."""
    return {
        "PODIUM_DATABASE_URL": database_url,
        "PODIUM_AGENTS": agents,
        "PODIUM_LEASE_SECONDS": "2",
        "PODIUM_POLL_INTERVAL_SECONDS": "0.2",
        "PODIUM_SHUTDOWN_GRACE_SECONDS": "0",
        **extra,
    }


@contextlib.asynccontextmanager
async def replicas() -> AsyncIterator[list[PodiumProcess]]:
    """A list to add started processes to; every one is killed (if alive) on exit."""
    started: list[PodiumProcess] = []
    try:
        yield started
    finally:
        for serve in started:
            await asyncio.to_thread(serve.cleanup)


@contextlib.asynccontextmanager
async def agents(*names: str) -> AsyncIterator[ExampleAgents]:
    examples = await serve_examples(names=names)
    try:
        yield examples
    finally:
        await examples.stop(0)


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[Conn]:
    conn: Conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def stub_for(address: str) -> AsyncIterator[pb_grpc.OrchestrationServiceAsyncStub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.OrchestrationServiceStub(channel)


async def step_running(
    stub: pb_grpc.OrchestrationServiceAsyncStub, run_id: str, step_id: str
) -> bool:
    run = await get_run(stub, run_id)
    return any(s.step_id == step_id and s.state == STEP_RUNNING for s in run.steps)


def run_output(run: run_pb2.Run) -> dict[str, Any]:
    output: dict[str, Any] = json_format.MessageToDict(run.output)
    return output


def assert_all_succeeded(run: run_pb2.Run) -> None:
    assert run.state == SUCCEEDED, (run_pb2.Run.State.Name(run.state), run.error, step_states(run))
    assert all(s.state == STEP_SUCCEEDED for s in run.steps), step_states(run)


# -- 1. SIGKILL mid-step, restart ------------------------------------------------------


@pytest.mark.slow
async def test_sigkill_mid_step_then_a_new_server_finishes_the_run_once(
    database_url: str, tmp_path: Path
) -> None:
    async with agents("echo", "sleeper") as examples, replicas() as started:
        env = serve_env(database_url, static_agents(examples))
        first = await start_podium(env, tmp_path / "first.log")
        started.append(first)
        async with stub_for(first.address) as stub:
            await stub.CreateDefinition(
                pb.CreateDefinitionRequest(
                    definition=definition(
                        "kill-mid-step",
                        [
                            {"id": "a", "agent": "echo", "input": {"n": 1}},
                            {
                                "id": "s",
                                "agent": "sleeper",
                                "depends_on": ["a"],
                                "input": {"seconds": 3},
                            },
                            {
                                "id": "c",
                                "agent": "echo",
                                "depends_on": ["s"],
                                "input": {"slept": "${steps.s.output.slept}"},
                            },
                        ],
                    )
                )
            )
            run_id = (await start_run(stub, "kill-mid-step")).run.id
            await wait_for(lambda: step_running(stub, run_id, "s"), "the sleeper step to run")
        sleeper = examples["sleeper"].stats
        await wait_until(lambda: sleeper.in_flight == 1, "the sleeper agent to be called")

        assert first.kill() == -9

        second = await start_podium(env, tmp_path / "second.log")
        started.append(second)
        async with stub_for(second.address) as stub:
            run = await wait_for_run(stub, run_id)
        assert_all_succeeded(run)
        assert run_output(run) == {"c": {"echo": {"slept": 3}}}
        by_id = {s.step_id: s for s in run.steps}
        assert [(a.number, a.error.code) for a in by_id["s"].attempts] == [
            (1, "LEASE_EXPIRED"),
            (2, ""),
        ]

    rid = uuid.UUID(run_id)
    async with connect(database_url) as conn:
        assert await completed_events(conn, [rid]) == {(rid, "a"): 1, (rid, "s"): 1, (rid, "c"): 1}
        assert await attempts(conn, [rid]) == {
            (rid, "a"): [(1, None, True)],
            (rid, "s"): [(1, "LEASE_EXPIRED", True), (2, None, True)],
            (rid, "c"): [(1, None, True)],
        }
        types = await event_types(conn, rid)
        assert types.count("run.completed") == 1
        assert types[-1] == "run.completed"
        lease_requeues = await conn.fetchval(
            "SELECT count(*) FROM orchestration_events WHERE run_id = $1 AND type = 'step.queued'"
            " AND payload ->> 'reason' = 'lease_expired'",
            rid,
        )
        assert lease_requeues == 1
    # At-least-once: the killed attempt reached the agent, then the retry did.
    assert [(t.step_id, t.attempt) for t in sleeper.tasks] == [("s", 1), ("s", 2)]
    assert sleeper.calls == 2
    assert examples["echo"].stats.calls == 2


async def test_a_replica_that_reclaims_its_own_expired_step_still_tracks_it(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    lease = 1.0
    server = await start_server(
        agents=static_agents(example_agents, "sleeper"), lease_seconds=lease
    )
    sleeper = example_agents["sleeper"].stats
    async with connect(database_url) as conn, stub_for(server.address) as stub:
        await stub.CreateDefinition(
            pb.CreateDefinitionRequest(
                definition=definition(
                    "stall", [{"id": "s", "agent": "sleeper", "input": {"seconds": 4}}]
                )
            )
        )
        run_id = (await start_run(stub, "stall")).run.id
        rid = uuid.UUID(run_id)
        await wait_until(lambda: sleeper.in_flight == 1, "the sleeper agent to be called")
        await asyncio.sleep(1.5 * lease)
        # The replica stalled past its lease (GC pause, blocked loop, slow database) and
        # a lease loop re-queued the step: this replica, the only one, claims attempt 2
        # while its attempt 1 still runs.
        async with conn.transaction():
            await conn.execute(
                "UPDATE orchestration_steps SET lease_expires_at = now() - interval '1 second'"
                " WHERE run_id = $1",
                rid,
            )
            assert await conn.fetchval("SELECT podium_requeue_expired(10)") == 1
        await wait_until(lambda: sleeper.calls == 2, "attempt 2 to reach the agent")
        # Attempt 1 ends (fenced); attempt 2 must stay tracked, renewed, and complete.
        run = await wait_for_run(stub, run_id, within=10)
        assert_all_succeeded(run)
        assert await attempts(conn, [rid]) == {
            (rid, "s"): [(1, "LEASE_EXPIRED", True), (2, None, True)]
        }
    assert [t.attempt for t in sleeper.tasks] == [1, 2]


async def test_a_step_whose_row_is_locked_during_a_renewal_keeps_its_attempt(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    """A running step's row is locked for a moment by other work on it (a
    sub-orchestration's start, a run its agent starts with its step credential) while
    the lease loop renews: the renewal cannot extend it then, but the attempt still
    holds its lease. It runs on; it is not cancelled as lost and run again."""
    lease = 3.0  # renewed every second
    server = await start_server(
        agents=static_agents(example_agents, "sleeper"), lease_seconds=lease
    )
    sleeper = example_agents["sleeper"].stats
    nap = {"agent": "sleeper", "input": {"seconds": 4}}
    lease_of = "SELECT lease_expires_at FROM orchestration_steps WHERE run_id = $1 AND step_id = $2"
    async with connect(database_url) as conn, connect(database_url) as locker:
        async with stub_for(server.address) as stub:
            await stub.CreateDefinition(
                pb.CreateDefinitionRequest(
                    definition=definition(
                        "pair",
                        [{"id": "s", **nap}, {"id": "t", **nap}],
                        execution={"concurrency": {"max_parallel": 2}},
                    )
                )
            )
            run_id = (await start_run(stub, "pair")).run.id
            rid = uuid.UUID(run_id)
            await wait_until(lambda: sleeper.in_flight == 2, "both steps to reach the agent")
            async with locker.transaction():
                await locker.execute(
                    "SELECT 1 FROM orchestration_steps WHERE run_id = $1 AND step_id = 's'"
                    " FOR UPDATE",
                    rid,
                )
                renewed_before = await conn.fetchval(lease_of, rid, "t")

                async def renewed_since() -> bool:
                    return bool(await conn.fetchval(lease_of, rid, "t") > renewed_before)

                await wait_until(renewed_since, "a renewal while step s is locked")
            run = await wait_for_run(stub, run_id, within=20)
        assert_all_succeeded(run)
        assert await attempts(conn, [rid]) == {
            (rid, "s"): [(1, None, True)],
            (rid, "t"): [(1, None, True)],
        }
    assert sleeper.calls == 2


# -- 2. Two replicas, 50 runs -----------------------------------------------------------


@pytest.mark.slow
async def test_two_replicas_run_50_runs_each_step_completed_once(
    database_url: str, tmp_path: Path
) -> None:
    runs = 50
    steps = [
        {"id": "first", "agent": "echo", "input": {"delay": 0.02}},
        *(
            {"id": f"mid{i}", "agent": "echo", "depends_on": ["first"], "input": {"delay": 0.02}}
            for i in range(3)
        ),
        {
            "id": "last",
            "agent": "echo",
            "depends_on": ["mid0", "mid1", "mid2"],
            "input": {"delay": 0.02},
        },
    ]
    async with agents("echo") as examples, replicas() as started, connect(database_url) as conn:
        env = serve_env(database_url, static_agents(examples))
        pair = await asyncio.gather(
            start_podium(env, tmp_path / "r0.log"), start_podium(env, tmp_path / "r1.log")
        )
        started.extend(pair)
        async with stub_for(pair[0].address) as stub0, stub_for(pair[1].address) as stub1:
            await stub0.CreateDefinition(
                pb.CreateDefinitionRequest(
                    definition=definition(
                        "fan-out", steps, execution={"concurrency": {"max_parallel": 3}}
                    )
                )
            )
            # Sample who holds the leases while the runs execute: step_attempts has no
            # owner column, lease_owner ("host:pid:nonce") is cleared on completion.
            owners: Counter[str] = Counter()
            sampling = asyncio.create_task(_sample_lease_owners(database_url, owners))
            try:
                stubs = (stub0, stub1)
                started_runs = await asyncio.gather(
                    *(start_run(stubs[i % 2], "fan-out", input={"i": i}) for i in range(runs))
                )
                run_ids = [uuid.UUID(r.run.id) for r in started_runs]

                async def all_finished() -> bool:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM orchestration_runs WHERE id = ANY($1::uuid[])"
                        " AND state IN ('succeeded', 'failed', 'cancelled')",
                        run_ids,
                    )
                    return bool(n == runs)

                await wait_for(all_finished, "50 runs to finish", interval=0.1)
            finally:
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            sample = await get_run(stub1, str(run_ids[0]))
            assert_all_succeeded(sample)

        states = await conn.fetch(
            "SELECT state, count(*) AS n FROM orchestration_runs WHERE id = ANY($1::uuid[])"
            " GROUP BY state",
            run_ids,
        )
        assert {r["state"]: r["n"] for r in states} == {"succeeded": runs}
        step_rows = await conn.fetch(
            "SELECT state, count(*) AS n FROM orchestration_steps WHERE run_id = ANY($1::uuid[])"
            " GROUP BY state",
            run_ids,
        )
        assert {r["state"]: r["n"] for r in step_rows} == {"succeeded": runs * len(steps)}
        completed = await completed_events(conn, run_ids)
        assert len(completed) == runs * len(steps)
        assert set(completed.values()) == {1}, "a step has two step.completed events"
        # Two attempts of a step only when the first one's lease expired.
        all_attempts = await attempts(conn, run_ids)
        doubled = {k: v for k, v in all_attempts.items() if len(v) > 1}
        for key, tries in doubled.items():
            assert all(code == "LEASE_EXPIRED" for _, code, _ in tries[:-1]), (key, tries)
        expired = sum(len(v) - 1 for v in doubled.values())

    # The agent was called once per recorded attempt: no attempt executed twice, and
    # no step executed again unless a lease expired (typically never here).
    echo = examples["echo"].stats
    calls = Counter((uuid.UUID(t.run_id), t.step_id, t.attempt) for t in echo.tasks)
    assert echo.calls == runs * len(steps) + expired
    assert set(calls.values()) == {1}
    assert set(calls) == {
        (run_id, step_id, attempt)
        for (run_id, step_id), tries in all_attempts.items()
        for attempt, _, _ in tries
    }
    pids = {str(serve.pid) for serve in pair}
    by_replica = Counter(owner.split(":")[-2] for owner in owners.elements())
    log.info("lease samples per replica pid: %s (expired attempts: %d)", by_replica, expired)
    assert set(by_replica) <= pids
    assert set(by_replica) == pids, f"one replica did all the work: {by_replica}"


async def _sample_lease_owners(database_url: str, owners: Counter[str]) -> None:
    async with connect(database_url) as conn:
        while True:
            rows = await conn.fetch(
                "SELECT lease_owner, count(*) AS n FROM orchestration_steps"
                " WHERE state = 'running' AND lease_owner IS NOT NULL GROUP BY lease_owner"
            )
            for row in rows:
                owners[row["lease_owner"]] += row["n"]
            await asyncio.sleep(0.01)


# -- 3. Attempt fencing at the storage level --------------------------------------------


def new_run(*step_ids: str) -> NewRun:
    """A run of independent, queued steps on an (unregistered) agent ``echo``."""
    return NewRun(
        organization_id="default",
        definition_name=None,
        definition_version=None,
        plan={"name": "fencing"},
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
                state="queued",
                agent="echo",
                skill=None,
                depends_on=[],
                spec=StepSpec.from_json({"id": step_id, "agent": "echo", "on_failure": {}}),
                max_attempts=1,
                timeout_seconds=None,
                input_refs=[],
                is_sink=True,
            )
            for i, step_id in enumerate(step_ids)
        ],
    )


def outcome(step: ClaimedStep, result: Outcome = Outcome.SUCCEEDED, **output: Any) -> StepOutcome:
    error = None if result == Outcome.SUCCEEDED else StepError("BOOM", "late failure")
    return StepOutcome(
        run_id=step.run_id,
        step_id=step.step_id,
        attempt=step.attempt,
        outcome=result,
        organization_id=step.organization_id,
        run_created_at=step.run_created_at,
        output=output,
        error=error,
    )


async def step_row(db: Database, run_id: uuid.UUID, step_id: str) -> dict[str, Any]:
    async with db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT state, attempt, output, lease_owner FROM orchestration_steps"
            " WHERE run_id = $1 AND step_id = $2",
            run_id,
            step_id,
        )
    assert row is not None
    return dict(row)


async def test_a_stale_attempt_is_fenced_and_a_completion_is_recorded_once(
    db: Database, database_url: str
) -> None:
    repo = RunsRepository(db)
    run_id = (await repo.create(new_run("a"), start=True)).run.id
    (stale,) = await repo.claim("replica-1", 1, lease_seconds=0.5)
    assert stale.attempt == 1

    async def requeued() -> int | None:
        return await repo.requeue_expired() or None

    assert await wait_for(requeued, "the lease to expire", interval=0.1) == 1
    (fresh,) = await repo.claim("replica-2", 1, lease_seconds=30)
    assert (fresh.step_id, fresh.attempt) == ("a", 2)
    assert fresh.task_id != stale.task_id
    # The dead owner can no longer extend the lease it lost.
    assert await repo.renew_leases("replica-1", 30) == []
    assert await repo.renew_leases("replica-2", 30) == [(run_id, "a", 2)]

    # The late result of attempt 1 (success or failure) changes nothing.
    assert await repo.complete_one(outcome(stale, stale=True)) is False
    assert await repo.complete_one(outcome(stale, Outcome.FAILED)) is False
    assert await step_row(db, run_id, "a") == {
        "state": "running",
        "attempt": 2,
        "output": None,
        "lease_owner": "replica-2",
    }
    run = await repo.get("default", run_id)
    assert run is not None and run.state == "running"

    assert await repo.complete_one(outcome(fresh, fresh=True)) is True
    # Exactly once: the same attempt's result again, or any other outcome, is refused.
    assert await repo.complete_one(outcome(fresh, again=True)) is False
    assert await repo.complete_one(outcome(fresh, Outcome.FAILED)) is False

    run = await repo.get("default", run_id)
    assert run is not None
    assert (run.state, run.output) == ("succeeded", {"a": {"fresh": True}})
    async with connect(database_url) as conn:
        assert await completed_events(conn, [run_id]) == {(run_id, "a"): 1}
        assert await attempts(conn, [run_id]) == {
            (run_id, "a"): [(1, "LEASE_EXPIRED", True), (2, None, True)]
        }
        types = await event_types(conn, run_id)
    assert types.count("run.completed") == 1
    assert "step.failed" not in types and "run.failed" not in types


async def test_a_step_that_keeps_losing_its_lease_fails_after_two_extra_attempts(
    db: Database,
) -> None:
    """Lost leases are retried beyond max_attempts (1 here) twice, then the step fails
    with LEASE_EXPIRED and fails its run, instead of being re-queued forever."""
    repo = RunsRepository(db)
    run_id = (await repo.create(new_run("a"), start=True)).run.id

    async def requeued() -> int | None:
        return await repo.requeue_expired() or None

    for attempt in (1, 2, 3):
        (claimed,) = await repo.claim("crashing-replica", 1, lease_seconds=0.2)
        assert claimed.attempt == attempt
        assert await wait_for(requeued, "the lease to expire", interval=0.05) == 1
    row = await step_row(db, run_id, "a")
    assert row["state"] == "failed" and row["attempt"] == 3
    run = await repo.get("default", run_id)
    assert run is not None and run.state == "failed"
    assert run.error is not None and run.error["code"] == "LEASE_EXPIRED"
    assert await repo.claim("crashing-replica", 1, lease_seconds=0.2) == []


async def test_concurrent_completions_of_one_attempt_apply_once(db: Database) -> None:
    repo = RunsRepository(db)
    run_id = (await repo.create(new_run("a", "b"), start=True)).run.id
    claimed = await repo.claim("replica-1", 2, lease_seconds=30)
    assert sorted(s.step_id for s in claimed) == ["a", "b"]
    for step in claimed:
        results = await asyncio.gather(*(repo.complete_one(outcome(step, n=n)) for n in range(4)))
        assert sorted(results) == [False, False, False, True]
    run = await repo.get("default", run_id)
    assert run is not None and run.state == "succeeded"


async def test_a_completion_after_cancel_run_is_refused(db: Database, database_url: str) -> None:
    repo = RunsRepository(db)
    run_id = (await repo.create(new_run("a", "b"), start=True)).run.id
    claimed = await repo.claim("replica-1", 1, lease_seconds=0.5)
    assert len(claimed) == 1
    assert await repo.cancel("default", run_id, "operator") == "cancelled"

    assert await repo.complete_one(outcome(claimed[0], late=True)) is False
    assert await repo.renew_leases("replica-1", 30) == []
    async with connect(database_url) as conn:  # past the lease: still not re-queued
        await conn.execute(
            "UPDATE orchestration_steps SET lease_expires_at = now() - interval '1 second'"
            " WHERE run_id = $1",
            run_id,
        )
    assert await repo.requeue_expired() == 0
    assert await repo.claim("replica-2", 10, lease_seconds=30) == []

    run = await repo.get("default", run_id)
    assert run is not None and run.state == "cancelled"
    for step_id in ("a", "b"):
        assert (await step_row(db, run_id, step_id))["state"] == "cancelled"
    async with connect(database_url) as conn:
        assert await completed_events(conn, [run_id]) == {}
        assert await attempts(conn, [run_id]) == {
            (run_id, claimed[0].step_id): [(1, "CANCELLED", True)]
        }
        types = await event_types(conn, run_id)
    assert types[-1] == "run.cancelled"


# -- 4. Lost NOTIFY: the fallback timer -------------------------------------------------


def three_echoes(name: str, delay: float = 0.0) -> definition_pb2.Definition:
    return definition(
        name,
        [
            {"id": "a", "agent": "echo", "input": {"delay": delay}},
            {"id": "b", "agent": "echo", "depends_on": ["a"], "input": {"x": "${steps.a.output}"}},
            {"id": "c", "agent": "echo", "depends_on": ["b"]},
        ],
    )


async def current_database(conn: Conn) -> str:
    name: str = await conn.fetchval("SELECT current_database()")
    return name


async def test_a_lost_listen_connection_falls_back_to_the_poll_timer(
    start_server: StartServer,
    example_agents: ExampleAgents,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="podium.scheduler")
    # A long lease: the LISTEN connection is re-established only every lease/3 = 20 s,
    # so everything below happens without notifications.
    server = await start_server(
        agents=static_agents(example_agents, "echo"),
        lease_seconds=60.0,
        poll_interval_seconds=0.2,
    )
    async with connect(database_url) as conn, stub_for(server.address) as stub:
        database = await current_database(conn)
        (listener,) = await wait_for(
            lambda: listener_backends(conn, database), "the scheduler's LISTEN connection"
        )
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=three_echoes("poll", 1)))
        first = (await start_run(stub, "poll")).run.id
        await wait_for(lambda: step_running(stub, first, "a"), "step a to run")

        assert await conn.fetchval("SELECT pg_terminate_backend($1)", listener)
        await wait_until(
            lambda: "LISTEN connection lost" in caplog.text,
            "the scheduler to notice the lost LISTEN connection",
        )
        assert_all_succeeded(await wait_for_run(stub, first))

        # A run started now is only found by the fallback timer.
        second = (await start_run(stub, "poll")).run.id
        assert_all_succeeded(await wait_for_run(stub, second))
        assert await listener_backends(conn, database) == [], "LISTEN came back too early"


async def test_the_listen_connection_is_re_established(
    start_server: StartServer,
    example_agents: ExampleAgents,
    database_url: str,
) -> None:
    # Lease 1.5 s: the lease loop (every 0.5 s) re-listens.
    server = await start_server(agents=static_agents(example_agents, "echo"), lease_seconds=1.5)
    async with connect(database_url) as conn, stub_for(server.address) as stub:
        database = await current_database(conn)
        (listener,) = await wait_for(
            lambda: listener_backends(conn, database), "the scheduler's LISTEN connection"
        )
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", listener)

        async def new_listener() -> list[int] | None:
            pids = await listener_backends(conn, database)
            return pids if pids and listener not in pids else None

        assert len(await wait_for(new_listener, "a new LISTEN connection")) == 1
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=three_echoes("relisten")))
        run_id = (await start_run(stub, "relisten")).run.id
        assert_all_succeeded(await wait_for_run(stub, run_id))


# -- 5. Graceful shutdown ---------------------------------------------------------------


def slow_once_agent() -> ExampleAgent:
    """Attempt 1 sleeps 60 s (cancellable), later attempts return at once."""

    async def handler(task: Task) -> dict[str, Any]:
        await task.progress("working", 0.0)
        if task.attempt == 1:
            await asyncio.sleep(60)
        return {"attempt": task.attempt}

    return ExampleAgent(
        "slow-once", handler, skills=[Skill("slow", name="Slow", description="Slow once")]
    )


@pytest.mark.slow
async def test_sigterm_exits_within_the_grace_and_another_server_finishes_the_step(
    database_url: str, tmp_path: Path
) -> None:
    grace = 1.0
    agent = slow_once_agent()
    agent_server = await agent.serve("127.0.0.1:0")
    try:
        async with replicas() as started, connect(database_url) as conn:
            env = serve_env(
                database_url,
                f"slow-once={agent_server.address}",
                PODIUM_SHUTDOWN_GRACE_SECONDS=str(grace),
            )
            first = await start_podium(env, tmp_path / "first.log")
            started.append(first)
            async with stub_for(first.address) as stub:
                await stub.CreateDefinition(
                    pb.CreateDefinitionRequest(
                        definition=definition("long", [{"id": "long", "agent": "slow-once"}])
                    )
                )
                run_id = (await start_run(stub, "long")).run.id
                await wait_for(lambda: step_running(stub, run_id, "long"), "the step to run")
            await wait_until(lambda: agent.stats.in_flight == 1, "the agent to be called")

            began = time.monotonic()
            first.process.terminate()
            code = await wait_exit(first)
            elapsed = time.monotonic() - began
            log.info("podium serve stopped %.2fs after SIGTERM (grace %.1fs)", elapsed, grace)
            assert code == 0, first.logs()
            # RPC drain and step drain each get the grace; generous slack on top, far
            # below the 60 s the step would have needed.
            assert elapsed < 2 * grace + 15, elapsed
            assert "stopped" in first.messages()
            await wait_until(lambda: agent.stats.cancellations == 1, "the call cancelled")

            # Shutdown neither failed nor completed the step: it waits for its lease.
            rid = uuid.UUID(run_id)
            row = await conn.fetchrow(
                "SELECT state, attempt, lease_owner IS NOT NULL AS leased"
                " FROM orchestration_steps WHERE run_id = $1",
                rid,
            )
            assert row is not None and dict(row) == {
                "state": "running",
                "attempt": 1,
                "leased": True,
            }

            second = await start_podium(env, tmp_path / "second.log")
            started.append(second)
            async with stub_for(second.address) as stub:
                run = await wait_for_run(stub, run_id)
            assert_all_succeeded(run)
            assert run_output(run) == {"long": {"attempt": 2}}
            assert await attempts(conn, [rid]) == {
                (rid, "long"): [(1, "LEASE_EXPIRED", True), (2, None, True)]
            }
            assert await completed_events(conn, [rid]) == {(rid, "long"): 1}
            assert [t.attempt for t in agent.stats.tasks] == [1, 2]
    finally:
        await agent_server.stop(0)


# -- 6. Per-run concurrency across replicas ---------------------------------------------


async def test_max_parallel_holds_across_two_replicas(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    agents_env = static_agents(example_agents, "sleeper")
    # Two slots each: one replica alone cannot reach max_parallel, both together exceed it.
    servers: list[PodiumServer] = [
        await start_server(agents=agents_env, worker_slots=2, lease_seconds=5.0) for _ in range(2)
    ]
    sleeper = example_agents["sleeper"].stats
    sleeper.reset()
    steps = [{"id": f"s{i:02}", "agent": "sleeper", "input": {"seconds": 0.2}} for i in range(20)]
    async with stub_for(servers[0].address) as stub:
        await stub.CreateDefinition(
            pb.CreateDefinitionRequest(
                definition=definition("wide", steps, execution={"concurrency": {"max_parallel": 3}})
            )
        )
        run_id = (await start_run(stub, "wide")).run.id
        run = await wait_for_run(stub, run_id)
    assert_all_succeeded(run)
    claimed = [server.engine.scheduler.claimed_total for server in servers]
    log.info("claimed per replica: %s; max in flight: %d", claimed, sleeper.max_in_flight)
    assert sleeper.calls == 20
    assert sleeper.max_in_flight <= 3
    assert all(n > 0 for n in claimed), claimed
    assert sum(claimed) == 20


# -- Poison completions ------------------------------------------------------------------


def nul_agent() -> ExampleAgent:
    """Returns a string with a NUL character: valid in protobuf, refused by jsonb."""

    async def handler(task: Task) -> dict[str, Any]:
        return {"text": "a\x00b"}

    return ExampleAgent("nul", handler, skills=[Skill("nul", name="NUL", description="NUL")])


async def test_an_output_postgres_refuses_does_not_wedge_the_replica(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    agent = nul_agent()
    agent_server = await agent.serve("127.0.0.1:0")
    try:
        server = await start_server(
            agents=f"nul={agent_server.address},{static_agents(example_agents, 'echo')}"
        )
        async with stub_for(server.address) as stub:
            await stub.CreateDefinition(
                pb.CreateDefinitionRequest(
                    definition=definition("poison", [{"id": "p", "agent": "nul"}])
                )
            )
            await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=three_echoes("ok")))
            poison = (await start_run(stub, "poison")).run.id
            await wait_until(lambda: agent.stats.calls == 1, "the poison output")
            # The replica keeps completing other runs ...
            healthy = (await start_run(stub, "ok")).run.id
            assert_all_succeeded(await wait_for_run(stub, healthy, within=6))
            # ... and the bad step ends one way or another (failed, or sanitized output).
            run = await wait_for_run(stub, poison, within=6)
            if run.state != SUCCEEDED:
                assert run.state == run_pb2.Run.STATE_FAILED, run
                assert run.error.step_id == "p", run.error
            # The replica is not wedged: a later run completes too.
            later = (await start_run(stub, "ok")).run.id
            assert_all_succeeded(await wait_for_run(stub, later, within=6))
    finally:
        await agent_server.stop(0)
