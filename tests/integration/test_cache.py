"""The step-output cache end to end: real servers (in process and ``podium serve``
processes), real example agents (their call counts say whether the agent ran), real
PostgreSQL. No timing assertions: TTL expiry is set in the table directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import approval_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from tests.integration.conftest import StartServer, static_agents
from tests.integration.processes import PODIUM, PodiumProcess, start_podium
from tests.integration.rpc import error_details, violations
from tests.integration.runs_helpers import (
    all_events,
    create_definition,
    event_summary,
    plain,
    plan,
    start_run,
    step_of,
    struct,
    wait_for_run,
    wait_for_step,
    wait_until,
)

SUCCEEDED = run_pb2.Run.STATE_SUCCEEDED
FAILED = run_pb2.Run.STATE_FAILED
CACHING = {"caching": {"enabled": True, "ttl_seconds": 3600}}


def _stub(server: PodiumServer | PodiumProcess) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(server.address)


async def _finished(stub: pb_grpc.OrchestrationServiceAsyncStub, run_id: str) -> run_pb2.Run:
    run = await wait_for_run(stub, run_id)
    assert run.state == SUCCEEDED, run
    return run


async def _run(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
    name: str,
    input: dict[str, Any],
    *,
    bypass: bool = False,
    version: int = 0,
) -> run_pb2.Run:
    request = pb.StartRunRequest(input=struct(input), start=True, bypass_cache=bypass)
    request.definition.name = name
    request.definition.version = version
    run_id = (await stub.StartRun(request)).run.id
    return await _finished(stub, run_id)


def _hits(server: PodiumServer) -> tuple[float, float]:
    registry = server.metrics.registry
    return (
        registry.get_sample_value("orchestration_cache_hits_total") or 0.0,
        registry.get_sample_value("orchestration_cache_misses_total") or 0.0,
    )


@contextlib.asynccontextmanager
async def _connect(url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def _echo_flow(stub: pb_grpc.OrchestrationServiceAsyncStub, name: str, **extra: Any) -> None:
    await create_definition(
        stub,
        name,
        [{"id": "e", "agent": "echo", "input": {"q": "${run.input.q}", "n": 1}}],
        execution=extra.pop("execution", CACHING),
        **extra,
    )


async def test_a_second_run_with_identical_input_is_served_from_the_cache(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    echo = example_agents["echo"].stats
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _echo_flow(stub, "cached-echo")
        first = await _run(stub, "cached-echo", {"q": "tea"})
        assert echo.calls == 1
        assert not step_of(first, "e").cached

        second = await _run(stub, "cached-echo", {"q": "tea"})
        assert echo.calls == 1  # the agent was not called again
        step = step_of(second, "e")
        assert step.cached
        assert step.cache_source_run_id == first.id
        assert (
            plain(step.output)
            == plain(step_of(first, "e").output)
            == {"echo": {"q": "tea", "n": 1}}
        )
        assert plain(second.output) == {"e": {"echo": {"q": "tea", "n": 1}}}
        assert step.usage.input_tokens == 0

        events = await all_events(stub, second.id)
        steps = [t for t, s in event_summary(events) if s == "e"]
        assert steps == ["step.queued", "step.started", "step.cached", "step.completed"]
        cached = next(e for e in events if e.type == e.TYPE_STEP_CACHED)
        assert plain(cached.data)["source_run_id"] == first.id

        # A different input misses.
        third = await _run(stub, "cached-echo", {"q": "coffee"})
        assert echo.calls == 2
        assert not step_of(third, "e").cached
    assert _hits(server) == (1.0, 2.0)


async def test_inline_plans_are_keyed_by_their_content(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    echo = example_agents["echo"].stats
    steps = [{"id": "e", "agent": "echo", "input": {"q": "x"}}]
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        runs = []
        for description in ("one", "one", "two"):
            inline = plan(steps, execution=CACHING, description=description)
            run_id = (await start_run(stub, inline=inline)).run.id
            runs.append(await _finished(stub, run_id))
    assert [step_of(r, "e").cached for r in runs] == [False, True, False]
    assert echo.calls == 2


async def test_step_overrides_key_paths_and_disabled_steps(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    echo = example_agents["echo"].stats
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub,
            "overrides",
            [
                # Keyed on q only: a different "noise" still hits.
                {
                    "id": "keyed",
                    "agent": "echo",
                    "input": {"q": "${run.input.q}", "noise": "${run.input.noise}"},
                    "caching": {"key_paths": ["q"]},
                },
                # Caching off for this step although the definition enables it.
                {"id": "off", "agent": "echo", "input": {"q": 1}, "caching": {"enabled": False}},
            ],
            execution=CACHING,
        )
        await _run(stub, "overrides", {"q": "a", "noise": 1})
        assert echo.calls == 2
        run = await _run(stub, "overrides", {"q": "a", "noise": 2})
        assert echo.calls == 3  # "off" ran again, "keyed" did not
        assert step_of(run, "keyed").cached
        assert plain(step_of(run, "keyed").output) == {"echo": {"q": "a", "noise": 1}}
        assert not step_of(run, "off").cached


async def test_ttl_expiry_misses_and_expired_entries_are_pruned(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    echo = example_agents["echo"].stats
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _echo_flow(stub, "ttl", execution={"caching": {"enabled": True, "ttl_seconds": 60}})
        first = await _run(stub, "ttl", {"q": "x"})
        async with _connect(database_url) as conn:
            row = await conn.fetchrow(
                "SELECT expires_at - created_at FROM step_cache WHERE source_run_id = $1",
                uuid.UUID(first.id),
            )
            assert row is not None and row[0].total_seconds() == 60
            # Expire it (the replica's LRU copy still looks fresh: the table decides).
            await conn.execute("UPDATE step_cache SET expires_at = now() - interval '1 second'")
            second = await _run(stub, "ttl", {"q": "x"})
            assert echo.calls == 2
            assert not step_of(second, "e").cached
            rows = await conn.fetch("SELECT source_run_id, expires_at > now() FROM step_cache")
            assert [tuple(r) for r in rows] == [(uuid.UUID(second.id), True)]

            # A store prunes expired entries of other keys too.
            await conn.execute("UPDATE step_cache SET expires_at = now() - interval '1 second'")
            await _run(stub, "ttl", {"q": "other"})
            keys = await conn.fetch("SELECT source_run_id FROM step_cache")
            assert len(keys) == 1
        third = await _run(stub, "ttl", {"q": "other"})
        assert step_of(third, "e").cached
        assert echo.calls == 3


async def test_a_hit_across_two_server_processes(
    example_agents: ExampleAgents, database_url: str, tmp_path: Path
) -> None:
    env = {
        "PODIUM_DATABASE_URL": database_url,
        "PODIUM_AGENTS": static_agents(example_agents, "echo"),
        "PODIUM_POLL_INTERVAL_SECONDS": "0.2",
        "PODIUM_SHUTDOWN_GRACE_SECONDS": "0",
    }
    echo = example_agents["echo"].stats
    first = await start_podium(env, tmp_path / "first.log")
    try:
        async with _stub(first) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            await _echo_flow(stub, "two-processes")
            source = await _run(stub, "two-processes", {"q": "shared"})
    finally:
        await asyncio.to_thread(first.cleanup)
    assert echo.calls == 1
    second = await start_podium(env, tmp_path / "second.log")
    try:
        async with _stub(second) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            run = await _run(stub, "two-processes", {"q": "shared"})
    finally:
        await asyncio.to_thread(second.cleanup)
    assert echo.calls == 1
    assert step_of(run, "e").cached
    assert step_of(run, "e").cache_source_run_id == source.id


async def test_concurrent_identical_steps_on_two_replicas_call_the_agent_once(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    agents = static_agents(example_agents, "sleeper")
    replicas = [await start_server(agents=agents) for _ in range(2)]
    sleeper = example_agents["sleeper"].stats
    async with _stub(replicas[0]) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub,
            "single-flight",
            [{"id": "s", "agent": "sleeper", "input": {"seconds": 1.0}}],
            execution=CACHING,
        )
        request = pb.StartRunRequest(start=True)
        request.definition.name = "single-flight"
        ids = [(await stub.StartRun(request)).run.id for _ in range(4)]
        runs = [await _finished(stub, run_id) for run_id in ids]
    assert sleeper.calls == 1
    leaders = [r for r in runs if not step_of(r, "s").cached]
    assert len(leaders) == 1
    for run in runs:
        if run is not leaders[0]:
            assert step_of(run, "s").cache_source_run_id == leaders[0].id
    async with _connect(database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM step_cache_flights") == 0


async def test_a_waiting_step_takes_over_when_the_leader_is_cancelled(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    server = await start_server(agents=static_agents(example_agents, "sleeper"))
    sleeper = example_agents["sleeper"].stats
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub,
            "takeover",
            [{"id": "s", "agent": "sleeper", "input": {"seconds": 2.0}}],
            execution=CACHING,
        )
        request = pb.StartRunRequest(start=True)
        request.definition.name = "takeover"
        leader = (await stub.StartRun(request)).run.id
        await wait_until(lambda: sleeper.in_flight == 1, "the leader to call the agent")
        waiter = (await stub.StartRun(request)).run.id
        await wait_for_step(stub, waiter, "s", [run_pb2.StepRun.STATE_RUNNING])
        async with _connect(database_url) as conn:
            owner = await conn.fetchval("SELECT run_id FROM step_cache_flights")
        assert owner == uuid.UUID(leader)
        assert sleeper.calls == 1
        await stub.CancelRun(pb.CancelRunRequest(run_id=leader, reason="test"))
        run = await _finished(stub, waiter)
    assert sleeper.calls == 2
    assert not step_of(run, "s").cached


async def test_failed_outputs_are_never_cached(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    server = await start_server(agents=static_agents(example_agents, "flaky"))
    flaky = example_agents["flaky"].stats
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub,
            "retried",
            [{"id": "f", "agent": "flaky", "input": {"failures": 1}}],
            execution=CACHING,
            error_handling={
                "on_step_failure": {"max_attempts": 2, "backoff": {"initial_seconds": 0.01}}
            },
        )
        first = await _run(stub, "retried", {})
        assert flaky.calls == 2  # attempt 1 failed (not stored), attempt 2 succeeded
        async with _connect(database_url) as conn:
            rows = await conn.fetch("SELECT output, source_run_id FROM step_cache")
        assert [(r["output"], r["source_run_id"]) for r in rows] == [
            ('{"attempt": 2}', uuid.UUID(first.id))
        ]
        second = await _run(stub, "retried", {})
        assert flaky.calls == 2
        assert plain(step_of(second, "f").output) == {"attempt": 2}

        # A step that fails for good stores nothing: the same input calls the agent again.
        await create_definition(
            stub,
            "fatal",
            [{"id": "f", "agent": "flaky", "input": {"failures": 1, "fatal": True}}],
            execution=CACHING,
        )
        request = pb.StartRunRequest(start=True)
        request.definition.name = "fatal"
        for expected_calls in (3, 4):
            failed = await wait_for_run(stub, (await stub.StartRun(request)).run.id)
            assert failed.state == FAILED
            assert flaky.calls == expected_calls
            assert not step_of(failed, "f").cached
        async with _connect(database_url) as conn:
            assert await conn.fetchval("SELECT count(*) FROM step_cache") == 1
            assert await conn.fetchval("SELECT count(*) FROM step_cache_flights") == 0


async def test_the_lru_is_bounded_and_the_table_still_answers(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(
        agents=static_agents(example_agents, "echo"), cache_max_step_outputs=2
    )
    echo = example_agents["echo"].stats
    lru = server.engine.step_cache.lru
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _echo_flow(stub, "bounded")
        for q in range(5):
            await _run(stub, "bounded", {"q": q})
            assert len(lru) <= 2
        assert len(lru) == 2
        assert echo.calls == 5
        # q=0 was evicted from the LRU long ago: the table serves it.
        run = await _run(stub, "bounded", {"q": 0})
        assert step_of(run, "e").cached
        assert echo.calls == 5
        assert len(lru) == 2


async def test_bypass_cache_neither_reads_nor_fills_the_cache(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    echo = example_agents["echo"].stats
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _echo_flow(stub, "bypass")
        await _run(stub, "bypass", {"q": "a"})
        bypassed = await _run(stub, "bypass", {"q": "a"}, bypass=True)
        assert echo.calls == 2
        assert not step_of(bypassed, "e").cached
        # A bypassing run stores nothing either.
        await _run(stub, "bypass", {"q": "b"}, bypass=True)
        fresh = await _run(stub, "bypass", {"q": "b"})
        assert echo.calls == 4
        assert not step_of(fresh, "e").cached
    assert _hits(server) == (0.0, 2.0)


async def test_invalidate_cache_by_definition(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    echo = example_agents["echo"].stats
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _echo_flow(stub, "inv")
        await _echo_flow(stub, "other")
        await _run(stub, "inv", {"q": 1}, version=1)
        # version 2 (other content: an unchanged one keeps its version): its own entries
        await _echo_flow(stub, "inv", description="v2")
        await _run(stub, "inv", {"q": 1}, version=2)
        await _run(stub, "other", {"q": 1})
        assert echo.calls == 3

        one = await stub.InvalidateCache(
            pb.InvalidateCacheRequest(definition_name="inv", definition_version=1)
        )
        assert one.deleted == 1
        run = await _run(stub, "inv", {"q": 1}, version=1)
        assert not step_of(run, "e").cached
        run = await _run(stub, "inv", {"q": 1}, version=2)
        assert step_of(run, "e").cached
        assert echo.calls == 4

        every = await stub.InvalidateCache(pb.InvalidateCacheRequest(definition_name="inv"))
        assert every.deleted == 2
        await _run(stub, "inv", {"q": 1}, version=2)
        assert echo.calls == 5
        kept = await _run(stub, "other", {"q": 1})
        assert step_of(kept, "e").cached

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.InvalidateCache(pb.InvalidateCacheRequest(definition_version=-1))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sorted(violations(refused.value)) == ["definition_name", "definition_version"]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.InvalidateCache(pb.InvalidateCacheRequest(definition_name="nope"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_details(missing.value)[0].reason == "DEFINITION_NOT_FOUND"

    # The CLI.
    done = await asyncio.to_thread(
        subprocess.run,
        [PODIUM, "cache", "invalidate", "other", "--address", server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 cached step outputs of other (every version) deleted"


async def test_checkpoints_before_are_looked_up_after_approval_and_after_never_cached(
    start_server: StartServer, example_agents: ExampleAgents, database_url: str
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    echo = example_agents["echo"].stats
    steps = [
        {"id": "gate", "agent": "echo", "input": {"q": 1}, "checkpoint": {"when": "WHEN_BEFORE"}},
        {
            "id": "review",
            "agent": "echo",
            "depends_on": ["gate"],
            "input": {"q": 2},
            "checkpoint": {"when": "WHEN_AFTER"},
        },
    ]
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(stub, "gated", steps, execution=CACHING)
        runs = []
        for _ in range(2):
            request = pb.StartRunRequest(start=True)
            request.definition.name = "gated"
            run_id = (await stub.StartRun(request)).run.id
            for _ in range(2):  # gate before its call, then review after its call
                approval = await _pending_approval(stub, run_id)
                decision = pb.DecideApprovalRequest(approval_id=approval.id)
                decision.decision = approval_pb2.DECISION_APPROVE
                await stub.DecideApproval(decision)
            runs.append(await _finished(stub, run_id))
    first, second = runs
    assert not step_of(first, "gate").cached
    assert step_of(second, "gate").cached  # approved input, then served from the cache
    assert not step_of(second, "review").cached  # each output is approved: never cached
    assert echo.calls == 3
    async with _connect(database_url) as conn:
        assert await conn.fetchval("SELECT array_agg(step_id) FROM step_cache") == ["gate"]


async def _pending_approval(
    stub: pb_grpc.OrchestrationServiceAsyncStub, run_id: str
) -> approval_pb2.Approval:
    found: list[approval_pb2.Approval] = []

    async def check() -> bool:
        response = await stub.ListApprovals(pb.ListApprovalsRequest(run_id=run_id))
        found[:] = [a for a in response.approvals if a.state == approval_pb2.Approval.STATE_PENDING]
        return len(found) == 1

    await wait_until(check, f"a pending approval of run {run_id}")
    return found[0]


async def test_child_runs_cache_like_runs_of_their_definition(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    echo = example_agents["echo"].stats
    async with _stub(server) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _echo_flow(stub, "child-flow")
        await create_definition(
            stub,
            "parent-flow",
            [{"id": "sub", "orchestration": {"name": "child-flow"}, "input": {"q": "same"}}],
        )
        await _run(stub, "parent-flow", {})
        await _run(stub, "parent-flow", {})
        # A parent run that bypasses the cache passes the flag to its child run.
        await _run(stub, "parent-flow", {}, bypass=True)
        children = await stub.ListRuns(pb.ListRunsRequest(definition_name="child-flow"))
        cached = []
        for child in children.runs:
            run = await wait_for_run(stub, child.id)
            cached.append((run.create_time.ToNanoseconds(), step_of(run, "e").cached))
    assert [c for _, c in sorted(cached)] == [False, True, False]
    assert echo.calls == 2
