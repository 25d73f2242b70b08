"""The outbound guard of agent endpoints on a real server: RegisterAgent refuses
non-public endpoints (a field violation on ``agent.endpoint``, nothing stored), a
refused static agent stops the start with an error naming ``PODIUM_AGENTS``, and a
stored agent whose endpoint is no longer admitted fails its step at dispatch time
without a connection."""

from __future__ import annotations

import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import agent_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.config import ConfigError, Settings
from tests.integration.conftest import StartServer
from tests.integration.rpc import error_details, rpc_error, violations
from tests.integration.runs_helpers import plan, start_run, step_of, wait_for_run

PROBE = [
    "169.254.169.254:80",
    "10.0.0.1:22",
    "127.0.0.1:5432",
    "[::1]:5432",
    "0.0.0.0:22",
    "[::ffff:169.254.169.254]:80",
    "unix:///var/run/docker.sock",
    "dns:///metadata.google.internal:80",
    "2130706433:80",
    "localhost:5432",
]


async def test_register_agent_refuses_non_public_endpoints(start_server: StartServer) -> None:
    server = await start_server(agent_allowed_networks="none")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        for endpoint in PROBE:
            error = await rpc_error(
                stub.RegisterAgent(
                    pb.RegisterAgentRequest(agent=agent_pb2.Agent(name="probe", endpoint=endpoint))
                )
            )
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (endpoint, error.details())
            assert error_details(error)[0].reason == "INVALID_AGENT"
            assert list(violations(error)) == ["agent.endpoint"], endpoint
        assert not (await stub.ListAgents(pb.ListAgentsRequest())).agents


async def test_the_allow_list_admits_loopback_agents(start_server: StartServer) -> None:
    server = await start_server(agent_allowed_networks="127.0.0.0/8")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=agent_pb2.Agent(name="local", endpoint="127.0.0.1:9"), lazy=True
            )
        )
        error = await rpc_error(
            stub.RegisterAgent(
                pb.RegisterAgentRequest(agent=agent_pb2.Agent(name="v6", endpoint="[::1]:9"))
            )
        )
        assert "PODIUM_AGENT_ALLOWED_NETWORKS" in violations(error)["agent.endpoint"]


@pytest.mark.parametrize("agents", ["meta=169.254.169.254:80", "db=127.0.0.1:5432"])
async def test_a_refused_static_agent_stops_the_start(database_url: str, agents: str) -> None:
    settings = Settings.from_env(
        {},
        database_url=database_url,
        listen_address="127.0.0.1:0",
        agents=agents,
        agent_allowed_networks="none",
    )
    server = PodiumServer(settings)
    try:
        with pytest.raises(ConfigError, match="PODIUM_AGENTS: entry 1") as refused:
            await server.start()
        assert "PODIUM_AGENT_ALLOWED_NETWORKS" in str(refused.value)
    finally:
        await server.stop(0)


async def test_dispatch_checks_the_endpoint_again(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    # Registered while loopback was allowed; the next server admits nothing.
    first = await start_server()
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        endpoint = example_agents.addresses["echo"]
        await stub.RegisterAgent(
            pb.RegisterAgentRequest(agent=agent_pb2.Agent(name="echo", endpoint=endpoint))
        )
    await first.stop(0)
    second = await start_server(agent_allowed_networks="none")
    async with grpc.aio.insecure_channel(second.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        started = await start_run(stub, inline=plan([{"id": "a", "agent": "echo", "input": {}}]))
        run = await wait_for_run(stub, started.run.id)
    assert run.state == run_pb2.Run.STATE_FAILED, run
    error = step_of(run, "a").error
    assert error.code == "AGENT_ENDPOINT_REFUSED", error
    assert example_agents["echo"].stats.calls == 0
