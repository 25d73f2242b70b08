"""Claims of several replicas run at once (no lock shared by every claim), while the
limits shared across runs stay exact: an agent's max_concurrency and the cap on an
organization's running steps (PODIUM_MAX_RUNNING_STEPS_PER_ORG). The claim's locks are
described in ``server/storage/functions/40_claim.sql``.

Two ways: two connections claiming against the repository's SQL with one transaction
held open (where timing is the point), and three real servers with a real agent.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import agent_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.storage.database import Database
from podium.server.storage.events import EventsRepository
from podium.server.storage.runs import EagerClaim, RunsRepository
from tests.integration.conftest import StartServer, bearer_channel, static_agents
from tests.integration.runs_helpers import (
    create_definition,
    get_run,
    start_run,
    wait_for_run,
    wait_until,
)
from tests.integration.test_concurrency_keys import intervals, most_at_once
from tests.integration.test_eager_dispatch import ORG, dag

CLAIM = "SELECT run_id, step_id, agent, run_created_at FROM podium_claim_steps($1, $2, 60, $3)"


async def add_agent(db: Database, name: str, max_concurrency: int) -> None:
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO agents (organization_id, name, endpoint, max_concurrency)"
            " VALUES ($1, $2, '127.0.0.1:1', $3)",
            ORG,
            name,
            max_concurrency,
        )


async def set_agent(db: Database, run_id: uuid.UUID, agent: str) -> None:
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE orchestration_steps SET agent = $2 WHERE run_id = $1", run_id, agent
        )


async def advisory_waiters(db: Database) -> list[tuple[int, bool]]:
    """(classid, granted) of every transaction advisory lock taken now."""
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT classid::bigint AS classid, granted FROM pg_locks"
            " WHERE locktype = 'advisory' AND database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    return [(r["classid"], r["granted"]) for r in rows]


async def test_two_claims_overlap_and_an_agents_limit_stays_exact(
    db: Database, database_url: str
) -> None:
    """While one claim's transaction is still open, a second claim of other runs
    completes (no lock shared by every claim); a second claim for the same limited
    agent waits for the first one's agent lock and then finds the agent full
    (max_concurrency 3: never 4)."""
    repo = RunsRepository(db)
    await add_agent(db, "limited", 3)
    limited = [
        (await repo.create(dag([("a", []), ("b", [])]), start=True)).run.id for _ in range(4)
    ]
    for run_id in limited:
        await set_agent(db, run_id, "limited")
    for _ in range(2):
        await repo.create(dag([("a", []), ("b", [])]), start=True)
    first = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    try:
        async with first.transaction():
            # The first claim takes 3 steps of the limited agent (its limit) and holds the
            # rows of the runs it visited.
            held = await first.fetch(CLAIM, "replica-1", 3, 0)
            assert [r["agent"] for r in held] == ["limited"] * 3, [dict(r) for r in held]
            # The second visits the runs left, the fourth limited one first: it waits
            # for the agent's lock (the agent's count is the first claim's to decide).
            overlapping = asyncio.create_task(second.fetch(CLAIM, "replica-2", 10, 0))
            await wait_until(
                lambda: _waits_on(db, 1886350959), within=10, what="a claim waiting for the agent"
            )
            assert not overlapping.done()
            assert all(classid != 1886350957 for classid, _ in await advisory_waiters(db))
        # Once the first committed, the agent is full: only the other runs' steps.
        assert sorted(r["agent"] for r in await asyncio.wait_for(overlapping, 10)) == ["echo"] * 4
        # Two claims at once with work for both: neither waits for the other.
        for _ in range(6):
            await repo.create(dag([("a", [])]), start=True)
        async with first.transaction(), second.transaction():
            one = await first.fetch(CLAIM, "replica-1", 2, 0)
            two = await asyncio.wait_for(second.fetch(CLAIM, "replica-2", 2, 0), 5)
        assert len(one) == 2 and len(two) == 2
    finally:
        await first.close()
        await second.close()
    async with db.connection() as conn:
        agents = await conn.fetch("SELECT agent FROM orchestration_steps WHERE state = 'running'")
    assert sorted(r["agent"] for r in agents) == ["echo"] * 8 + ["limited"] * 3


async def _waits_on(db: Database, classid: int) -> bool:
    return (classid, False) in await advisory_waiters(db)


async def test_an_organizations_cap_holds_across_claims(db: Database, database_url: str) -> None:
    """p_org_cap 3: a second claim waits for the organization's lock while the first is
    open, then starts the one step left under the cap; a later claim starts one more
    only once a step ended."""
    repo = RunsRepository(db)
    for _ in range(4):
        await repo.create(dag([("a", []), ("b", [])]), start=True)
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            first = await conn.fetch(CLAIM, "replica-1", 2, 3)
            second = asyncio.create_task(db.pool.fetch(CLAIM, "replica-2", 10, 3))
            await wait_until(
                lambda: _waits_on(db, 1886350961), within=10, what="a claim waiting for the org"
            )
        assert len(first) == 2 and len(await asyncio.wait_for(second, 10)) == 1
        assert await conn.fetch(CLAIM, "replica-3", 10, 3) == []
        await conn.execute(
            "UPDATE orchestration_steps SET state = 'succeeded' WHERE step_id = $1"
            " AND state = 'running' AND lease_owner = 'replica-1'",
            first[0]["step_id"],
        )
        assert len(await conn.fetch(CLAIM, "replica-3", 10, 3)) == 1
        assert len(await conn.fetch(CLAIM, "replica-3", 10, 0)) == 4  # no cap: the rest
    finally:
        await conn.close()


async def test_three_replicas_keep_an_agents_max_concurrency(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """Three replicas hammering one agent with max_concurrency 3: the agent never sees a
    fourth call at once and every step is claimed once. Which replicas claim depends on
    timing (one may take all on a loaded machine); that claims of several replicas run
    at once is shown by test_two_claims_overlap_and_an_agents_limit_stays_exact. The
    leases are long: "claimed once" holds while none expires, and the fixture's 5 s
    expired for three steps once under the full suite on two busy cores (they ran
    again, as a lease that expires promises)."""
    servers = [
        await start_server(
            agents=static_agents(example_agents, "sleeper"),
            worker_slots=4,
            claim_batch_size=4,
            lease_seconds=60.0,
        )
        for _ in range(3)
    ]
    sleeper = example_agents["sleeper"].stats
    sleeper.reset()
    async with grpc.aio.insecure_channel(servers[0].address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=agent_pb2.Agent(
                    name="capped",
                    endpoint=example_agents.addresses["sleeper"],
                    max_concurrency=3,
                )
            )
        )
        steps = [{"id": f"s{i}", "agent": "capped", "input": {"seconds": 0.05}} for i in range(4)]
        await create_definition(
            stub, "hammer", steps, execution={"concurrency": {"max_parallel": 4}}
        )
        runs = [(await start_run(stub, "hammer")).run.id for _ in range(15)]
        finished = [await wait_for_run(stub, r, within=120) for r in runs]
    assert all(r.state == run_pb2.Run.STATE_SUCCEEDED for r in finished)
    assert sleeper.calls == 60
    assert sleeper.max_in_flight <= 3
    assert most_at_once(intervals(finished)) <= 3
    claimed = [s.engine.scheduler.claimed_total for s in servers]
    assert sum(claimed) == 60, claimed


async def test_an_organizations_cap_across_two_replicas_with_fair_share(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """PODIUM_MAX_RUNNING_STEPS_PER_ORG=2 on two replicas: the heavy organization's 40
    queued steps never run more than 2 at once, GetRun says why a held step waits, and
    another organization's single run starts while the heavy one still has most of its
    steps queued."""
    settings = {"agents": static_agents(example_agents, "sleeper"), "auth": "required"}
    servers = [await start_server(max_running_steps_per_org=2, **settings) for _ in range(2)]
    heavy_key = (await servers[0].engine.api_keys.create("default", "admin", "heavy")).key
    light_key = (await servers[0].engine.api_keys.create("org-light", "admin", "light")).key
    # 0.3 s steps: the two slots are busy most of the time, so a sample of GetRun
    # finds the cap reached even on a loaded machine (6 s of queued work in all).
    step = [{"id": "a", "agent": "sleeper", "input": {"seconds": 0.3}}]
    async with (
        bearer_channel(servers[0].address, heavy_key) as heavy_channel,
        bearer_channel(servers[1].address, light_key) as light_channel,
    ):
        heavy_stub = pb_grpc.OrchestrationServiceStub(heavy_channel)
        light_stub = pb_grpc.OrchestrationServiceStub(light_channel)
        await light_stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=agent_pb2.Agent(name="sleeper", endpoint=example_agents.addresses["sleeper"])
            )
        )
        for stub in (heavy_stub, light_stub):
            await create_definition(stub, "capped", step)
        # Started together: one at a time on a loaded machine, the two slots could keep
        # up with the starts, and no step would ever wait for the cap.
        started = await asyncio.gather(*(start_run(heavy_stub, "capped") for _ in range(40)))
        heavy = [response.run.id for response in started]
        reasons: list[int] = []

        async def held_by_the_cap() -> bool:
            # The count moves with every start and end: a sample may find a free slot.
            for run_id in reversed(heavy):  # the last started are the likeliest queued
                step = (await get_run(heavy_stub, run_id)).steps[0]
                if step.state == run_pb2.StepRun.STATE_QUEUED:
                    reasons.append(step.waiting.reason)
                    return reasons[-1] == run_pb2.StepWaiting.Reason.REASON_ORGANIZATION_LIMIT
            return False

        try:
            await wait_until(held_by_the_cap, within=15, what="a step held by the cap")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the queued steps' reasons seen: {reasons}") from None
        light = (await start_run(light_stub, "capped")).run.id
        light_run = await wait_for_run(light_stub, light, within=30)
        heavy_runs = [await wait_for_run(heavy_stub, r, within=120) for r in heavy]
    assert light_run.state == run_pb2.Run.STATE_SUCCEEDED
    assert all(r.state == run_pb2.Run.STATE_SUCCEEDED for r in heavy_runs)
    assert most_at_once(intervals(heavy_runs)) <= 2
    light_start = light_run.steps[0].attempts[0].start_time.ToNanoseconds()
    later = [
        r for r in heavy_runs if r.steps[0].attempts[0].start_time.ToNanoseconds() > light_start
    ]
    assert len(later) >= 20, len(later)  # the heavy organization still had most queued


async def test_notify_only_when_a_replica_listens_or_work_is_left(
    db: Database, database_url: str
) -> None:
    """A NOTIFY costs its transaction a database-wide lock at commit: StartRun whose
    steps its own replica claimed sends none while nobody watches the organization;
    podium_events once a hub registered it; podium_work when steps are left queued."""
    repo = RunsRepository(db)
    heard: list[tuple[str, str]] = []
    listener = await asyncpg.connect(database_url)
    try:
        for channel in ("podium_events", "podium_work"):
            await listener.add_listener(
                channel, lambda _c, _p, channel, payload: heard.append((channel, payload))
            )
        claim = EagerClaim("replica-1", 10, 60)
        first = await repo.create(dag([("a", []), ("b", ["a"])]), start=True, claim=claim)
        assert [s.step_id for s in first.claimed] == ["a"]
        await asyncio.sleep(0.5)
        assert heard == []

        await EventsRepository(db).listen("hub-1", [ORG], 30, every=False)
        second = await repo.create(dag([("a", [])]), start=True, claim=claim)
        await wait_until(lambda: bool(heard), within=5, what="a notification")
        assert heard == [("podium_events", str(second.run.id))]

        heard.clear()
        await EventsRepository(db).listen("hub-1", [], 30, every=True)
        third = await repo.create(
            dag([("a", []), ("b", [])]), start=True, claim=EagerClaim("r", 1, 60)
        )
        await wait_until(lambda: bool(heard), within=5, what="a notification")
        # b is left queued; nobody watches. The payload names the run.
        assert heard == [("podium_work", str(third.run.id))]
    finally:
        await listener.close()
