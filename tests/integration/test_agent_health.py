"""Native agents are discovered and watched: RegisterAgent and static agents take what
is not given from the agent's card (contradictions refused), an agent that does not
answer is refused unless the registration is lazy (its card is then read when it first
answers), each replica watches the agents' health (ListAgents shows it), and a step
whose agent goes down for a few seconds waits for it, with the reason visible, instead
of using its attempts."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from podium.client.agent import Agent, AgentServer, Skill, Task
from podium.orchestration.v1 import agent_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.config import ConfigError, Settings
from tests.integration.client_helpers import podium_json, podium_plain
from tests.integration.conftest import LOOPBACK_AGENTS, StartServer
from tests.integration.pg_cluster import free_port
from tests.integration.rpc import error_details, rpc_error, violations
from tests.integration.runs_helpers import (
    all_events,
    create_definition,
    get_run,
    start_run,
    wait_for_run,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
Health = agent_pb2.AgentHealth


def carded_agent() -> Agent:
    """An agent whose card says: skills sleep and nap, 2 at once, 42 s timeout."""

    async def handle(task: Task) -> dict[str, Any]:
        await asyncio.sleep(float(task.input.get("seconds", 0)))
        return {"done": task.step_id}

    return Agent(
        "carded",
        skills=[Skill("sleep", name="Sleep"), Skill("nap", name="Nap")],
        max_concurrency=2,
        default_timeout_seconds=42,
        handler=handle,
    )


async def agent_named(stub: pb_grpc.OrchestrationServiceAsyncStub, name: str) -> agent_pb2.Agent:
    listed = (await stub.ListAgents(pb.ListAgentsRequest())).agents
    return next(a for a in listed if a.name == name)


async def health_is(
    stub: pb_grpc.OrchestrationServiceAsyncStub, name: str, state: Health.State.ValueType
) -> agent_pb2.Agent:
    async def reached() -> bool:
        return (await agent_named(stub, name)).health.state == state

    await wait_until(reached, f"agent {name} in health state {Health.State.Name(state)}")
    return await agent_named(stub, name)


async def test_register_takes_what_is_not_given_from_the_card(start_server: StartServer) -> None:
    served = await carded_agent().serve("127.0.0.1:0")
    server = await start_server()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            bare = agent_pb2.Agent(name="bare", endpoint=served.address)
            stored = (await stub.RegisterAgent(pb.RegisterAgentRequest(agent=bare))).agent
            assert list(stored.skills) == ["sleep", "nap"]
            assert (stored.max_concurrency, stored.default_timeout_seconds) == (2, 42.0)
            assert stored.HasField("card_time")

            # Given values narrow (skills, max) or override (timeout) the card's.
            narrow = agent_pb2.Agent(
                name="narrow",
                endpoint=served.address,
                skills=["nap"],
                max_concurrency=1,
                default_timeout_seconds=5,
            )
            stored = (await stub.RegisterAgent(pb.RegisterAgentRequest(agent=narrow))).agent
            assert list(stored.skills) == ["nap"]
            assert (stored.max_concurrency, stored.default_timeout_seconds) == (1, 5.0)

            # Values that contradict the card are refused, one violation each.
            wrong = agent_pb2.Agent(
                name="wrong", endpoint=served.address, skills=["nap", "fly"], max_concurrency=3
            )
            error = await rpc_error(stub.RegisterAgent(pb.RegisterAgentRequest(agent=wrong)))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            found = violations(error)
            assert sorted(found) == ["agent.max_concurrency", "agent.skills[1]"]
            assert "does not offer skill 'fly'" in found["agent.skills[1]"]
            assert "at most 2" in found["agent.max_concurrency"]
            names = [a.name for a in (await stub.ListAgents(pb.ListAgentsRequest())).agents]
            assert names == ["bare", "narrow"]

            # Lazy changes nothing for an agent that answers.
            eager = agent_pb2.Agent(name="eager", endpoint=served.address)
            request = pb.RegisterAgentRequest(agent=eager, lazy=True)
            stored = (await stub.RegisterAgent(request)).agent
            assert list(stored.skills) == ["sleep", "nap"] and stored.HasField("card_time")

            # Each replica watches the agents' health; ListAgents and GetAgent show it.
            listed = await health_is(stub, "bare", Health.STATE_SERVING)
            assert listed.health.HasField("since_time") and not listed.health.message
            got = (await stub.GetAgent(pb.GetAgentRequest(name="bare"))).agent
            assert got.health.state == Health.STATE_SERVING and list(got.skills) == ["sleep", "nap"]
            error = await rpc_error(stub.GetAgent(pb.GetAgentRequest(name="nobody")))
            assert error.code() is grpc.StatusCode.NOT_FOUND
            error = await rpc_error(stub.GetAgent(pb.GetAgentRequest()))
            assert list(violations(error)) == ["name"]

            # The watch ends when the agent says NOT_SERVING: it does not hold the
            # agent's graceful stop for its whole grace period.
            began = time.monotonic()
            await served.stop(5.0)
            assert time.monotonic() - began < 3
            await health_is(stub, "bare", Health.STATE_NOT_SERVING)
    finally:
        await served.stop(0)


async def test_an_agent_that_does_not_answer_is_refused_unless_lazy(
    start_server: StartServer,
) -> None:
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    server = await start_server()
    served: AgentServer | None = None
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            absent = agent_pb2.Agent(name="later", endpoint=endpoint, skills=["nap", "fly"])
            error = await rpc_error(stub.RegisterAgent(pb.RegisterAgentRequest(agent=absent)))
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
            info = error_details(error)[0]
            assert info.reason == "AGENT_NOT_ANSWERING"
            assert info.metadata["endpoint"] == endpoint
            assert info.metadata["code"] == "AGENT_UNAVAILABLE"
            assert "lazy" in (error.details() or "")
            assert not (await stub.ListAgents(pb.ListAgentsRequest())).agents

            # Lazy: stored as given, its card pending, seen not serving.
            request = pb.RegisterAgentRequest(agent=absent, lazy=True)
            stored = (await stub.RegisterAgent(request)).agent
            assert list(stored.skills) == ["nap", "fly"] and not stored.HasField("card_time")
            down = await health_is(stub, "later", Health.STATE_NOT_SERVING)
            assert "unreachable" in down.health.message

            # The agent comes up: its card is read (the given skills narrowed to it).
            served = await carded_agent().serve(endpoint)
            await health_is(stub, "later", Health.STATE_SERVING)

            async def card_read() -> bool:
                return (await agent_named(stub, "later")).HasField("card_time")

            await wait_until(card_read, "the lazy agent's card read")
            later = await agent_named(stub, "later")
            assert list(later.skills) == ["nap"]
            assert (later.max_concurrency, later.default_timeout_seconds) == (2, 42.0)

        # The CLI: --lazy registers an agent that does not answer.
        other = f"127.0.0.1:{free_port()}"
        args = ["agents", "register", "cli-later", other, "--lazy", "--address", server.address]
        data = await podium_json(*args)
        assert data["name"] == "cli-later" and "card_time" not in data
    finally:
        if served is not None:
            await served.stop(0)


async def test_static_agents_are_discovered_too(
    start_server: StartServer, database_url: str
) -> None:
    served = await carded_agent().serve("127.0.0.1:0")
    absent = f"127.0.0.1:{free_port()}"
    try:
        server = await start_server(agents=f"carded={served.address},later={absent};skills=x")
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            carded = await agent_named(stub, "carded")
            assert list(carded.skills) == ["sleep", "nap"] and carded.max_concurrency == 2
            assert carded.HasField("card_time")
            later = await agent_named(stub, "later")  # did not answer: as configured
            assert list(later.skills) == ["x"] and not later.HasField("card_time")
        # An entry that contradicts its agent's card stops the start.
        settings = Settings.from_env(
            {},
            database_url=database_url,
            listen_address="127.0.0.1:0",
            agents=f"carded={served.address};skills=fly",
            agent_allowed_networks=LOOPBACK_AGENTS,
        )
        contradicted = PodiumServer(settings)
        try:
            with pytest.raises(ConfigError, match=r"entry 1 \('carded'\): skills\[0\]"):
                await contradicted.start()
        finally:
            await contradicted.stop(0)
    finally:
        await served.stop(0)


def spawn_agent(port: int, log: Path) -> subprocess.Popen[bytes]:
    """The chaos suite's agent (``work`` skill, sleeps ``input.seconds``) as a process."""
    command = [sys.executable, "-m", "tests.chaos.agent", "--name", "worker"]
    command += ["--port", str(port), "--log", str(log)]
    return subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)


async def listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the agent process did not listen"
            await asyncio.sleep(0.05)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
async def test_a_step_waits_for_an_agent_that_is_down_without_using_attempts(
    start_server: StartServer, tmp_path: Path, stop: signal.Signals
) -> None:
    """The agent process is killed (or stopped: NOT_SERVING first) mid-run and comes
    back 5 s later: with one attempt per step the run still succeeds; while it is down
    ListAgents shows it NOT_SERVING and the running step says it waits for it."""
    port = free_port()
    log = tmp_path / "calls.log"
    process = spawn_agent(port, log)
    await listening(port)
    server = await start_server()
    steps: list[dict[str, Any]] = []
    for index in range(6):
        step: dict[str, Any] = {
            "id": f"s{index}",
            "agent": "worker",
            "input": {"seconds": 0.5},
            "on_failure": {"max_attempts": 1},
        }
        if index:
            step["depends_on"] = [f"s{index - 1}"]
        steps.append(step)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            worker = agent_pb2.Agent(name="worker", endpoint=f"127.0.0.1:{port}")
            stored = (await stub.RegisterAgent(pb.RegisterAgentRequest(agent=worker))).agent
            assert list(stored.skills) == ["work"]
            await health_is(stub, "worker", Health.STATE_SERVING)
            await create_definition(stub, "outage", steps)
            run_id = (await start_run(stub, "outage")).run.id
            await asyncio.sleep(1.2)  # s2 is running
            process.send_signal(stop)
            process.wait()
            killed = time.monotonic()
            down = await health_is(stub, "worker", Health.STATE_NOT_SERVING)
            assert down.health.message
            shown = await podium_plain("agents", "get", "worker", "--address", server.address)
            assert "health=not_serving" in shown.stdout, shown

            async def step_waits() -> bool:
                run = await get_run(stub, run_id)
                return any(
                    s.waiting.reason == run_pb2.StepWaiting.REASON_AGENT_UNAVAILABLE
                    and s.waiting.agent == "worker"
                    and s.state == run_pb2.StepRun.STATE_RUNNING
                    for s in run.steps
                )

            await wait_until(step_waits, "a running step waiting for its agent")
            await asyncio.sleep(max(0.0, 5 - (time.monotonic() - killed)))
            process = spawn_agent(port, log)
            run = await wait_for_run(stub, run_id, within=90)
            events = await all_events(stub, run_id)
            await health_is(stub, "worker", Health.STATE_SERVING)
    finally:
        process.kill()
        process.wait()
    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run
    assert [s.attempt for s in run.steps] == [1] * 6
    assert any("waiting for the agent" in e.progress.message for e in events)
