"""Per-agent rate limits (requests and tokens per period) enforced by the claim, on
real servers and the real example agents: a held step stays queued without using an
attempt, shows why in GetRun, and starts when the window frees, across replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from podium.client.examples.agents import ExampleAgents, summarize_agent
from podium.orchestration.v1 import agent_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.client_helpers import podium_json, podium_plain
from tests.integration.conftest import StartServer
from tests.integration.rpc import rpc_error, violations
from tests.integration.runs_helpers import (
    create_definition,
    get_run,
    plan,
    start_run,
    step_of,
    wait_for_run,
    wait_until,
)

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

Run = run_pb2.Run
StepRun = run_pb2.StepRun
Connect = Callable[..., Awaitable[tuple[str, "OrchestrationServiceAsyncStub"]]]


def agents_setting(examples: ExampleAgents, **options: str) -> str:
    """``PODIUM_AGENTS`` for every example agent, with ``;``-options per agent name."""
    return ",".join(
        f"{name}={address}" + (f";{options[name]}" if name in options else "")
        for name, address in examples.addresses.items()
    )


@pytest.fixture
async def podium(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[Connect]:
    """Factory: ``await podium(agents, **settings)``: (address, stub) of a new server."""
    channels: list[grpc.aio.Channel] = []

    async def connect(agents: str, **settings: Any) -> tuple[str, OrchestrationServiceAsyncStub]:
        server = await start_server(agents=agents, **settings)
        channel = grpc.aio.insecure_channel(server.address)
        channels.append(channel)
        return server.address, pb_grpc.OrchestrationServiceStub(channel)

    try:
        yield connect
    finally:
        for channel in channels:
            await channel.close(None)


def starts(runs: list[Run]) -> list[float]:
    """Start times (seconds) of every attempt of the runs' steps, sorted."""
    return sorted(
        a.start_time.ToNanoseconds() / 1e9 for r in runs for s in r.steps for a in s.attempts
    )


def assert_window(times: list[float], count: int, period: float) -> None:
    """No interval [t, t + period) holds more than ``count`` of ``times``."""
    for i, t in enumerate(times):
        inside = [u for u in times[i:] if u < t + period]
        assert len(inside) <= count, (t, inside)


@pytest.mark.parametrize("replicas", [1, 2])
async def test_requests_limit_holds_steps_without_using_attempts(
    podium: Connect, example_agents: ExampleAgents, replicas: int
) -> None:
    """echo limited to 2 requests per 2 s: 6 one-step runs (started on one replica or
    alternately on two sharing the database) never start more than 2 attempts in any
    2 s, a held step is queued with reason RATE_LIMITED and no attempt, and all
    succeed with one attempt each."""
    setting = agents_setting(example_agents, echo="rate=2/2s")
    stubs = [(await podium(setting))[1] for _ in range(replicas)]
    listed = await stubs[0].ListAgents(pb.ListAgentsRequest())
    echo = {a.name: a for a in listed.agents}["echo"]
    assert (echo.rate_limit.requests_per_period, echo.rate_limit.period_seconds) == (2, 2.0)
    await create_definition(stubs[0], "one", [{"id": "a", "agent": "echo", "input": {"n": 1}}])
    started = [(await start_run(stubs[i % replicas], "one")).run.id for i in range(6)]

    held: list[StepRun] = []

    async def a_held_step() -> bool:
        for run_id in started:
            step = step_of(await get_run(stubs[0], run_id), "a")
            if step.waiting.reason == run_pb2.StepWaiting.REASON_RATE_LIMITED:
                held.append(step)
                return True
        return False

    await wait_until(a_held_step, "a step held by the rate limit", within=10)
    step = held[0]
    assert step.state == StepRun.STATE_QUEUED and step.attempt == 0 and not step.attempts
    assert step.waiting.agent == "echo"
    assert step.waiting.until_time.ToNanoseconds() > 0

    runs = [await wait_for_run(stubs[0], run_id, within=30) for run_id in started]
    assert [r.state for r in runs] == [Run.STATE_SUCCEEDED] * 6
    assert all(len(s.attempts) == 1 and s.attempt == 1 for r in runs for s in r.steps)
    assert not any(s.HasField("waiting") for r in runs for s in r.steps)
    times = starts(runs)
    assert_window(times, 2, 2.0)
    # Held, not starved: six starts need at least two full windows after the first.
    assert times[-1] - times[0] >= 4.0
    assert example_agents["echo"].stats.calls == 6


async def test_tokens_limit_waits_for_reported_usage_to_leave_the_window(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """summarizer (which reports words in and out as tokens) limited to 5 tokens per
    2 s: once a call reported 8 tokens, the next run's step waits (RATE_LIMITED) until
    2 s after that report, then succeeds on its first attempt."""
    _, stub = await podium(agents_setting(example_agents, summarizer="tokens=5/2s"))
    text = {"text": "one two three four"}
    step = [{"id": "s", "agent": "summarizer", "input": text}]
    first = await wait_for_run(stub, (await start_run(stub, inline=plan(step))).run.id)
    assert first.state == Run.STATE_SUCCEEDED, first
    usage = step_of(first, "s").usage
    assert usage.input_tokens + usage.output_tokens == 8
    second_id = (await start_run(stub, inline=plan(step))).run.id
    waiting = step_of(await get_run(stub, second_id), "s")
    assert waiting.waiting.reason == run_pb2.StepWaiting.REASON_RATE_LIMITED, waiting
    assert waiting.waiting.agent == "summarizer"
    second = await wait_for_run(stub, second_id, within=30)
    assert second.state == Run.STATE_SUCCEEDED, second
    ended = step_of(first, "s").attempts[0].end_time.ToNanoseconds() / 1e9
    began = step_of(second, "s").attempts[0].start_time.ToNanoseconds() / 1e9
    assert began >= ended + 2.0
    assert len(step_of(second, "s").attempts) == 1


async def test_skill_routes_around_an_agent_at_its_limit(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """Two agents offer `summarize`; brief (first by name) allows 1 request per minute:
    the first step goes to brief, the next ones to the summarizer instead of waiting."""
    brief = await summarize_agent("brief").serve("127.0.0.1:0")
    try:
        setting = agents_setting(example_agents, summarizer="skills=summarize")
        _, stub = await podium(f"brief={brief.address};rate=1/60s,{setting}")
        agents = []
        for _ in range(3):
            inline = plan([{"id": "s", "skill": "summarize", "input": {"text": "a b"}}])
            run = await wait_for_run(stub, (await start_run(stub, inline=inline)).run.id)
            assert run.state == Run.STATE_SUCCEEDED, run
            agents.append(step_of(run, "s").agent)
    finally:
        await brief.stop(0)
    assert agents == ["brief", "summarizer", "summarizer"]


@pytest.mark.parametrize(
    ("rate", "fields"),
    [
        ({"requests_per_period": 5}, ["agent.rate_limit.period_seconds"]),
        (
            {"requests_per_period": 5, "period_seconds": 86_401},
            ["agent.rate_limit.period_seconds"],
        ),
        ({"tokens_per_period": 10, "period_seconds": -1}, ["agent.rate_limit.period_seconds"]),
        (
            {"requests_per_period": -1, "tokens_per_period": -2, "period_seconds": 60},
            ["agent.rate_limit.requests_per_period", "agent.rate_limit.tokens_per_period"],
        ),
        ({"period_seconds": 60}, ["agent.rate_limit.period_seconds"]),
    ],
)
async def test_invalid_rate_limits_are_field_violations(
    podium: Connect, example_agents: ExampleAgents, rate: dict[str, Any], fields: list[str]
) -> None:
    _, stub = await podium("")
    agent = agent_pb2.Agent(
        name="llm", endpoint="127.0.0.1:9", rate_limit=agent_pb2.AgentRateLimit(**rate)
    )
    error = await rpc_error(stub.RegisterAgent(pb.RegisterAgentRequest(agent=agent)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(violations(error)) == fields


async def test_register_round_trip_and_cli_flags(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """RegisterAgent stores the limit (ListAgents returns it); re-registering without
    one removes it; `podium agents register --rate-limit --tokens-limit` sets both."""
    address, stub = await podium("")
    agent = agent_pb2.Agent(
        name="llm",
        endpoint="127.0.0.1:9",
        rate_limit=agent_pb2.AgentRateLimit(requests_per_period=60, period_seconds=60),
    )
    stored = (await stub.RegisterAgent(pb.RegisterAgentRequest(agent=agent, lazy=True))).agent
    assert stored.rate_limit == agent.rate_limit
    agent.ClearField("rate_limit")
    stored = (await stub.RegisterAgent(pb.RegisterAgentRequest(agent=agent, lazy=True))).agent
    assert not stored.HasField("rate_limit")

    args = ["agents", "register", "cli-llm", "127.0.0.1:9", "--lazy", "--address", address]
    data = await podium_json(*args, "--rate-limit", "30/1m", "--tokens-limit", "90000/60s")
    assert data["rate_limit"] == {
        "requests_per_period": 30,
        "tokens_per_period": 90000,
        "period_seconds": 60,
    }
    listed = {a.name: a for a in (await stub.ListAgents(pb.ListAgentsRequest())).agents}
    assert listed["cli-llm"].rate_limit.tokens_per_period == 90000


async def test_held_steps_start_when_the_window_frees_without_a_wake(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """Three steps of one run on echo limited to 1 request per 1 s: after the first
    completes, the next is held; the scheduler's poll starts it once the window frees
    (nothing else wakes the claim then)."""
    _, stub = await podium(agents_setting(example_agents, echo="rate=1/1s"))
    inline = plan([{"id": f"e{i}", "agent": "echo", "input": {}} for i in range(3)])
    run_id = (await start_run(stub, inline=inline)).run.id
    run = await wait_for_run(stub, run_id, within=30)
    assert run.state == Run.STATE_SUCCEEDED, run
    times = starts([run])
    assert_window(times, 1, 1.0)


async def test_runs_get_shows_the_rate_limit(
    podium: Connect, example_agents: ExampleAgents
) -> None:
    """`podium runs get` prints why a held step waits: the agent and when its window
    frees."""
    address, stub = await podium(agents_setting(example_agents, echo="rate=1/60s"))
    inline = plan([{"id": f"e{i}", "agent": "echo", "input": {}} for i in range(2)])
    run_id = (await start_run(stub, inline=inline)).run.id

    async def held() -> bool:
        step = step_of(await get_run(stub, run_id), "e1")
        return step.waiting.reason == run_pb2.StepWaiting.REASON_RATE_LIMITED

    await wait_until(held, "e1 held by the rate limit")
    result = await podium_plain("runs", "get", run_id, "--address", address)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.split()[0] == "e1")
    assert "QUEUED" in line and "rate limited by agent echo until" in line, line
    await stub.CancelRun(pb.CancelRunRequest(run_id=run_id))
