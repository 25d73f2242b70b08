"""Concurrency keys (max_runs_per_key, max_steps_per_key), run priorities and fair share,
enforced by the claim and the run admission in SQL, on real servers (two ``podium serve``
processes where replicas matter), real Postgres and the real example agents."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from podium.client.examples.agents import ExampleAgents, serve_examples
from podium.orchestration.v1 import agent_pb2, run_pb2, schedule_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.client_helpers import podium, podium_json, podium_plain
from tests.integration.conftest import StartServer, bearer_channel, static_agents
from tests.integration.processes import PodiumProcess, start_podium
from tests.integration.rpc import rpc_error, violations
from tests.integration.runs_helpers import (
    all_events,
    create_definition,
    definition,
    event_type,
    get_run,
    start_run,
    struct,
    wait_for_run,
    wait_until,
)
from tests.integration.test_observability import scrape, value

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

Run = run_pb2.Run
KEY = "${run.input.customer}"


def keyed(**concurrency: Any) -> dict[str, Any]:
    """``execution`` of a definition keyed by the input's customer."""
    return {"concurrency": {"key": KEY, "max_parallel": 8, **concurrency}}


def intervals(runs: Iterable[Run]) -> list[tuple[float, float]]:
    """(start, end) in seconds of every attempt of the runs' steps."""
    return [
        (a.start_time.ToNanoseconds() / 1e9, a.end_time.ToNanoseconds() / 1e9)
        for r in runs
        for s in r.steps
        for a in s.attempts
    ]


def run_spans(runs: Iterable[Run]) -> list[tuple[float, float]]:
    """(first attempt start, last attempt end) of each run."""
    spans = []
    for run in runs:
        times = intervals([run])
        spans.append((min(t[0] for t in times), max(t[1] for t in times)))
    return spans


def most_at_once(spans: Iterable[tuple[float, float]]) -> int:
    """The most intervals overlapping at one instant."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = current = 0
    for _, delta in edges:  # at equal times an end (-1) sorts before a start (+1)
        current += delta
        best = max(best, current)
    return best


@contextlib.asynccontextmanager
async def echo_agents() -> AsyncIterator[ExampleAgents]:
    examples = await serve_examples(names=["echo"])
    try:
        yield examples
    finally:
        await examples.stop(0)


@contextlib.asynccontextmanager
async def two_replicas(
    database_url: str, agents: str, tmp_path: Path
) -> AsyncIterator[list[OrchestrationServiceAsyncStub]]:
    """Two ``podium serve`` processes on the test database, and a stub for each."""
    env = {
        "PODIUM_DATABASE_URL": database_url,
        "PODIUM_AGENTS": agents,
        "PODIUM_LEASE_SECONDS": "5",
        "PODIUM_POLL_INTERVAL_SECONDS": "0.2",
        "PODIUM_SHUTDOWN_GRACE_SECONDS": "0",
    }
    started: list[PodiumProcess] = []
    channels: list[grpc.aio.Channel] = []
    try:
        for name in ("r0", "r1"):
            started.append(await start_podium(env, tmp_path / f"{name}.log"))
        channels = [grpc.aio.insecure_channel(p.address) for p in started]
        yield [pb_grpc.OrchestrationServiceStub(c) for c in channels]
    finally:
        for channel in channels:
            await channel.close(None)
        for serve in started:
            await asyncio.to_thread(serve.cleanup)


async def test_max_runs_per_key_across_two_processes_fifo_per_key(
    database_url: str, tmp_path: Path
) -> None:
    """max_runs_per_key 2, two keys interleaved, runs started alternately on two
    ``podium serve`` processes: at most 2 runs of a key execute at once (from the
    attempts' times and from the agent's own log of calls), both keys reach 2, the
    waiting runs show why (GetRun, run.waiting_for_key) and each key's waiting runs are
    admitted in the order they were started."""
    async with (
        echo_agents() as examples,
        two_replicas(database_url, static_agents(examples), tmp_path) as stubs,
    ):
        steps = [
            {"id": "a", "agent": "echo", "input": {"delay": 1.0}},
            {"id": "b", "agent": "echo", "depends_on": ["a"], "input": {"delay": 0.2}},
        ]
        await create_definition(stubs[0], "keyed", steps, execution=keyed(max_runs_per_key=2))
        order: dict[str, list[str]] = defaultdict(list)
        for i in range(12):
            customer = ("acme", "globex")[i % 2]
            started = await start_run(stubs[i % 2], "keyed", input={"customer": customer})
            order[customer].append(started.run.id)
            assert started.run.concurrency_key == customer
            if len(order["acme"]) == 3 and customer == "acme":
                # The third run of acme waits while the first two execute.
                third = await get_run(stubs[1], order["acme"][2])
                assert third.state == Run.STATE_RUNNING
                assert third.waiting_reason == "concurrency key 'acme': 2 of 2 runs running"
                assert {s.state for s in third.steps} == {run_pb2.StepRun.STATE_PENDING}
        runs: dict[str, list[Run]] = {}
        for customer, ids in order.items():
            runs[customer] = [await wait_for_run(stubs[0], rid, within=60) for rid in ids]
        for customer, done in runs.items():
            assert [r.state for r in done] == [Run.STATE_SUCCEEDED] * 6, customer
            assert all(not r.waiting_reason for r in done)
            spans = run_spans(done)
            assert most_at_once(spans) == 2, (customer, spans)
        # FIFO per key: the waiting runs of a key are admitted in the order they were
        # started (the admissions are serialized by the key's lock). Their first steps'
        # start times are not compared: two runs admitted at once are claimed by both
        # replicas' claims (SKIP LOCKED), and either may lease its step first.
        for customer, ids in order.items():
            admitted = []
            for rid in ids[2:]:
                events = await all_events(stubs[0], rid)
                times = [e.time.ToDatetime() for e in events if event_type(e) == "run.admitted"]
                assert len(times) == 1, (customer, rid)
                admitted.append(times[0])
            assert admitted == sorted(admitted), (customer, admitted)
        types = [event_type(e) for e in await all_events(stubs[0], order["acme"][2])]
        assert types.index("run.waiting_for_key") < types.index("run.admitted")
        assert types.index("run.admitted") < types.index("step.started")
        # The agent's own record: calls of one key's runs never overlap beyond 2 runs.
        seen = [t.run_id for t in examples["echo"].stats.tasks]
        assert len(seen) == 24
        for customer, ids in order.items():
            mine = [r for r in seen if r in ids]
            # A run's calls are a then b; at most 2 runs are "open" at any call.
            open_runs: set[str] = set()
            calls: dict[str, int] = defaultdict(int)
            for run_id in mine:
                calls[run_id] += 1
                open_runs.add(run_id)
                assert len(open_runs) <= 2, (customer, open_runs)
                if calls[run_id] == 2:
                    open_runs.discard(run_id)


async def test_max_steps_per_key_holds_steps_of_one_key_only(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """max_steps_per_key 2 over runs of 4 parallel steps: acme's steps (two runs)
    never run more than 2 at once, globex's run alongside; every step succeeds on its
    first attempt (a held step uses no attempt)."""
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        steps = [{"id": f"s{i}", "agent": "echo", "input": {"delay": 0.2}} for i in range(4)]
        await create_definition(stub, "steps", steps, execution=keyed(max_steps_per_key=2))
        ids = {
            "acme": [
                (await start_run(stub, "steps", input={"customer": "acme"})).run.id
                for _ in range(2)
            ],
            "globex": [(await start_run(stub, "steps", input={"customer": "globex"})).run.id],
        }
        runs = {c: [await wait_for_run(stub, r, within=30) for r in rs] for c, rs in ids.items()}
    for done in runs.values():
        assert all(r.state == Run.STATE_SUCCEEDED for r in done)
        assert all(s.attempt == 1 and len(s.attempts) == 1 for r in done for s in r.steps)
    assert most_at_once(intervals(runs["acme"])) == 2
    assert most_at_once(intervals(runs["globex"])) == 2
    everything = intervals(runs["acme"] + runs["globex"])
    assert most_at_once(everything) >= 3, everything  # the limit is per key, not global


async def test_higher_priority_runs_are_claimed_first(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """One worker slot busy with a blocker; then three priority-0 runs and two priority-7
    runs (StartRun field) and one priority-5 run (definition default): once the slot
    frees, the steps start 7, 7, 5, then the 0s in start order."""
    server = await start_server(agents=static_agents(example_agents, "echo"), max_concurrency=1)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        step = [{"id": "a", "agent": "echo", "input": {"delay": 0.05}}]
        await create_definition(stub, "plain", step)
        await create_definition(stub, "urgent", step, execution={"priority": 5})
        await create_definition(
            stub, "block", [{"id": "a", "agent": "echo", "input": {"delay": 0.8}}]
        )
        blocker = await start_run(stub, "block")

        async def start(name: str, priority: int | None) -> str:
            request = pb.StartRunRequest(input=struct({}), start=True)
            request.definition.name = name
            if priority is not None:
                request.priority = priority
            return (await stub.StartRun(request)).run.id

        labels = {}
        for name, priority, label in [
            ("plain", None, "low1"),
            ("plain", 7, "high1"),
            ("plain", 0, "low2"),
            ("urgent", None, "mid"),
            ("plain", 7, "high2"),
            ("plain", None, "low3"),
        ]:
            labels[await start(name, priority)] = label
        got = await get_run(stub, next(r for r, lab in labels.items() if lab == "mid"))
        assert got.priority == 5
        await wait_for_run(stub, blocker.run.id, within=30)
        done = [await wait_for_run(stub, r, within=30) for r in labels]
    by_start = sorted(done, key=lambda r: r.steps[0].attempts[0].start_time.ToNanoseconds())
    assert [labels[r.id] for r in by_start] == ["high1", "high2", "mid", "low1", "low2", "low3"]


async def test_light_key_is_dispatched_within_one_claim_cycle_under_heavy_load(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """A heavy key with 300 queued one-step runs on 4 worker slots, then one run of a
    light key: its step starts within a claim cycle of slots freeing (well under a
    second), while hundreds of the heavy key's steps are still queued."""
    server = await start_server(agents=static_agents(example_agents, "echo"), max_concurrency=4)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        step = [{"id": "a", "agent": "echo", "input": {"delay": 0.1}}]
        await create_definition(stub, "fair", step, execution={"concurrency": {"key": KEY}})
        heavy = [
            (await start_run(stub, "fair", input={"customer": "heavy"})).run.id for _ in range(300)
        ]
        began = time.monotonic()
        light = (await start_run(stub, "fair", input={"customer": "light"})).run.id
        light_run = await wait_for_run(stub, light, within=30)
        waited = time.monotonic() - began
        heavy_runs = [await get_run(stub, r) for r in heavy]
    assert light_run.state == Run.STATE_SUCCEEDED
    light_start = light_run.steps[0].attempts[0].start_time.ToNanoseconds()
    later = [
        r
        for r in heavy_runs
        if not r.steps[0].attempts
        or r.steps[0].attempts[0].start_time.ToNanoseconds() > light_start
    ]
    assert len(later) >= 100, (len(later), waited)  # the heavy key still had hundreds queued


async def test_a_light_organization_is_not_queued_behind_a_heavy_one(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """Organizations are shares of the claim too: with 300 one-step runs of one
    organization queued on 4 worker slots, another organization's single run starts
    while hundreds of the first one's steps still wait (no concurrency key involved)."""
    server = await start_server(
        agents=static_agents(example_agents, "echo"), max_concurrency=4, auth="required"
    )
    heavy_key = (await server.engine.api_keys.create("default", "admin", "heavy")).key
    light_key = (await server.engine.api_keys.create("org-light", "admin", "light")).key
    step = [{"id": "a", "agent": "echo", "input": {"delay": 0.1}}]
    async with (
        bearer_channel(server.address, heavy_key) as heavy_channel,
        bearer_channel(server.address, light_key) as light_channel,
    ):
        heavy_stub = pb_grpc.OrchestrationServiceStub(heavy_channel)
        light_stub = pb_grpc.OrchestrationServiceStub(light_channel)
        # The light organization registers the same agent under its own name space.
        await light_stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=agent_pb2.Agent(name="echo", endpoint=example_agents.addresses["echo"])
            )
        )
        for stub in (heavy_stub, light_stub):
            await create_definition(stub, "fair-org", step)
        heavy = [(await start_run(heavy_stub, "fair-org")).run.id for _ in range(300)]
        light = (await start_run(light_stub, "fair-org")).run.id
        light_run = await wait_for_run(light_stub, light, within=60)
        heavy_runs = [await get_run(heavy_stub, r) for r in heavy]
    assert light_run.state == Run.STATE_SUCCEEDED
    light_start = light_run.steps[0].attempts[0].start_time.ToNanoseconds()
    later = [
        r
        for r in heavy_runs
        if not r.steps[0].attempts
        or r.steps[0].attempts[0].start_time.ToNanoseconds() > light_start
    ]
    assert len(later) >= 100, len(later)  # the heavy organization still had hundreds queued


async def test_concurrency_fields_are_validated_with_field_violations(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    """Bad keys, limits and priorities are INVALID_ARGUMENT naming the field; a run whose
    input lacks the key, or with a priority out of range, is refused without a write."""
    bad = definition(
        "bad",
        [{"id": "a", "agent": "echo"}],
        execution={
            "concurrency": {
                "key": "${steps.a.output.x}",
                "max_runs_per_key": -1,
                "max_steps_per_key": 10001,
            },
            "priority": 10,
        },
    )
    error = await rpc_error(stub.CreateDefinition(pb.CreateDefinitionRequest(definition=bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    assert "only reference the run input" in found["execution.concurrency.key"]
    assert "max_runs_per_key" in str(found) and "execution.concurrency.max_runs_per_key" in found
    assert "execution.concurrency.max_steps_per_key" in found
    assert "execution.priority" in found
    keyless = definition(
        "keyless",
        [{"id": "a", "agent": "echo"}],
        execution={"concurrency": {"max_runs_per_key": 2}},
    )
    error = await rpc_error(stub.CreateDefinition(pb.CreateDefinitionRequest(definition=keyless)))
    assert (
        "needs execution.concurrency.key"
        in violations(error)["execution.concurrency.max_runs_per_key"]
    )
    malformed = definition(
        "malformed", [{"id": "a", "agent": "echo"}], execution=keyed(key="${run.input.")
    )
    error = await rpc_error(stub.CreateDefinition(pb.CreateDefinitionRequest(definition=malformed)))
    assert "execution.concurrency.key" in violations(error)

    await create_definition(
        stub, "good", [{"id": "a", "agent": "echo"}], execution=keyed(max_runs_per_key=1)
    )
    error = await rpc_error(start_run(stub, "good", input={"other": 1}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "customer" in violations(error)["input"]
    request = pb.StartRunRequest(input=struct({"customer": "a"}), start=True, priority=10)
    request.definition.name = "good"
    error = await rpc_error(stub.StartRun(request))
    assert "must be 0 to 9" in violations(error)["priority"]
    listed = await stub.ListRuns(pb.ListRunsRequest())
    assert not listed.runs  # nothing was written


@pytest.mark.parametrize("value", [{"id": 7}, 42])
async def test_a_non_string_key_value_is_its_compact_json(
    stub: OrchestrationServiceAsyncStub, value: Any
) -> None:
    await create_definition(stub, "json-key", [{"id": "a", "agent": "echo"}], execution=keyed())
    started = await start_run(stub, "json-key", input={"customer": value})
    expected = '{"id":7}' if isinstance(value, dict) else "42"
    assert started.run.concurrency_key == expected
    assert (await get_run(stub, started.run.id)).concurrency_key == expected


async def test_cancelling_a_running_run_admits_the_next_waiting_one(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """max_runs_per_key 1: the second run waits (and the gauge of waiting runs says 1);
    cancelling the first admits it (the trigger on the run's end): it starts."""
    server = await start_server(
        agents=static_agents(example_agents, "echo"),
        metrics_address="127.0.0.1:0",
        queue_depth_interval_seconds=0.1,
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub,
            "one-at-a-time",
            [{"id": "a", "agent": "echo", "input": {"delay": 5}}],
            execution=keyed(max_runs_per_key=1),
        )
        first = (await start_run(stub, "one-at-a-time", input={"customer": "c"})).run.id
        second = (await start_run(stub, "one-at-a-time", input={"customer": "c"})).run.id
        waiting = await get_run(stub, second)
        assert waiting.waiting_reason == "concurrency key 'c': 1 of 1 runs running"

        async def gauge_is(expected: float) -> bool:
            return value(await scrape(server), "orchestration_runs_waiting_for_key") == expected

        await wait_until(lambda: gauge_is(1), "orchestration_runs_waiting_for_key == 1")
        await stub.CancelRun(pb.CancelRunRequest(run_id=first))

        async def admitted() -> bool:
            run = await get_run(stub, second)
            return not run.waiting_reason and any(s.attempts for s in run.steps)

        await wait_until(admitted, "the waiting run admitted", within=10)
        await wait_until(lambda: gauge_is(0), "orchestration_runs_waiting_for_key == 0")
        await stub.CancelRun(pb.CancelRunRequest(run_id=second))


async def test_rate_limit_per_key_across_two_replicas(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """echo limited to 2 requests per 2 s per key (``rate_per_key=true``), two replicas:
    each key's starts respect their own window (never 3 in 2 s), while the two keys
    together start 4 in the first window (the limit is not global); a held step waits
    with reason RATE_LIMITED and no attempt, and every step succeeds on attempt 1."""
    agents = ",".join(
        f"{name}={address}" + (";rate=2/2s;rate_per_key=true" if name == "echo" else "")
        for name, address in example_agents.addresses.items()
    )
    servers = [await start_server(agents=agents) for _ in range(2)]
    channels = [grpc.aio.insecure_channel(s.address) for s in servers]
    try:
        stubs = [pb_grpc.OrchestrationServiceStub(c) for c in channels]
        listed = await stubs[0].ListAgents(pb.ListAgentsRequest())
        assert {a.name: a for a in listed.agents}["echo"].rate_limit.per_key
        await create_definition(
            stubs[0], "rated", [{"id": "a", "agent": "echo"}], execution=keyed()
        )
        ids: dict[str, list[str]] = defaultdict(list)
        for i in range(8):
            customer = ("acme", "globex")[i % 2]
            started = await start_run(stubs[i % 2], "rated", input={"customer": customer})
            ids[customer].append(started.run.id)

        async def a_held_step() -> bool:
            for run_id in ids["acme"]:
                step = (await get_run(stubs[1], run_id)).steps[0]
                if step.waiting.reason == run_pb2.StepWaiting.REASON_RATE_LIMITED:
                    return step.attempt == 0
            return False

        await wait_until(a_held_step, "an acme step held by its key's window", within=10)
        runs = {
            c: [await wait_for_run(stubs[0], r, within=30) for r in rs] for c, rs in ids.items()
        }
    finally:
        for channel in channels:
            await channel.close(None)
    starts_by_key = {}
    for customer, done in runs.items():
        assert all(r.state == Run.STATE_SUCCEEDED for r in done)
        assert all(r.steps[0].attempt == 1 for r in done)
        times = sorted(t[0] for t in intervals(done))
        for i, t in enumerate(times):
            inside = [u for u in times[i:] if u < t + 2.0]
            assert len(inside) <= 2, (customer, times)
        starts_by_key[customer] = times
    first = min(t[0] for t in starts_by_key.values())
    together = [t for ts in starts_by_key.values() for t in ts if t < first + 2.0]
    assert len(together) == 4, starts_by_key


async def test_cli_starts_with_a_priority_and_shows_key_priority_and_waiting(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    """``runs start --priority`` sets the run's priority; ``runs get`` shows the priority,
    the key and why a run waits, ``runs watch`` the wait; ``agents register
    --rate-per-key`` stores per_key."""
    server = await start_server(agents=static_agents(example_agents, "echo"))
    address = ["--address", server.address]
    flow = tmp_path / "keyed.yaml"
    flow.write_text(
        "name: cli-keyed\n"
        "execution:\n"
        "  concurrency: {key: '${run.input.customer}', max_runs_per_key: 1}\n"
        "steps:\n"
        "  - {id: a, agent: echo, input: {delay: 5}}\n"
    )
    assert (await podium("definitions", "apply", str(flow), *address)).returncode == 0
    first = await podium_json(
        "runs",
        "start",
        "cli-keyed",
        "--input",
        '{"customer": "acme"}',
        "--priority",
        "3",
        *address,
    )
    assert first["priority"] == 3 and first["concurrency_key"] == "acme"
    second = await podium_json(
        "runs", "start", "cli-keyed", "--input", '{"customer": "acme"}', *address
    )
    shown = await podium_plain("runs", "get", second["id"], *address)
    assert shown.returncode == 0, shown.stderr
    assert "priority 0  concurrency key 'acme'" in shown.stdout
    assert "waiting: concurrency key 'acme': 1 of 1 runs running" in shown.stdout
    bad = await podium_plain("runs", "start", "cli-keyed", "--priority", "10", *address)
    assert bad.returncode != 0 and "--priority" in bad.stderr
    registered = await podium_json(
        "agents",
        "register",
        "llm",
        "127.0.0.1:1",
        "--lazy",
        "--rate-limit",
        "5/1m",
        "--rate-per-key",
        *address,
    )
    assert registered["rate_limit"]["per_key"] is True
    for run in (first, second):
        await podium("runs", "cancel", run["id"], *address)
    # `runs watch` of the finished run replays its log, the wait for the key included.
    watched = await podium_plain("runs", "watch", second["id"], *address)
    assert "waiting for concurrency key 'acme' (1 of 1 running)" in watched.stdout, watched


async def test_a_resumed_waiting_run_executes_and_shows_no_wait(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """A run cancelled while it waited for its key, then resumed, executes at once (a
    resumed run is not held back) and GetRun shows no waiting reason."""
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub,
            "resumable",
            [{"id": "a", "agent": "echo", "input": {"delay": 5}}],
            execution=keyed(max_runs_per_key=1),
        )
        first = (await start_run(stub, "resumable", input={"customer": "r"})).run.id
        second = (await start_run(stub, "resumable", input={"customer": "r"})).run.id
        assert (await get_run(stub, second)).waiting_reason
        await stub.CancelRun(pb.CancelRunRequest(run_id=second))
        await wait_for_run(stub, second)
        await stub.ResumeRun(pb.ResumeRunRequest(run_id=second))

        async def executing() -> bool:
            run = await get_run(stub, second)
            return not run.waiting_reason and bool(run.steps[0].attempts)

        await wait_until(executing, "the resumed run executing", within=10)
        for run_id in (first, second):
            await stub.CancelRun(pb.CancelRunRequest(run_id=run_id))


async def test_a_schedule_of_a_keyed_definition_needs_the_key_in_its_input(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    """CreateSchedule resolves the definition's key in the schedule's input: without it,
    INVALID_ARGUMENT on `schedule.input`; with it, the schedule is stored."""
    await create_definition(stub, "keyed-tick", [{"id": "a", "agent": "echo"}], execution=keyed())
    schedule = schedule_pb2.Schedule(definition_name="keyed-tick", interval_seconds=3600)
    error = await rpc_error(stub.CreateSchedule(pb.CreateScheduleRequest(schedule=schedule)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "customer" in violations(error)["schedule.input"]
    schedule.input.update({"customer": "acme"})
    created = await stub.CreateSchedule(pb.CreateScheduleRequest(schedule=schedule))
    assert created.schedule.id
