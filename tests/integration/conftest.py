"""Fixtures that run a real Podium server on 127.0.0.1:0 against a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from podium.client.demo import agents_setting
from podium.client.examples.agents import ExampleAgents, serve_examples
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.config import Settings

LOOPBACK_AGENTS = "loopback"
"""PODIUM_AGENT_ALLOWED_NETWORKS of test servers: the example agents listen on loopback,
which the outbound guard refuses unless allowed."""


@pytest.fixture
async def podium_server(database_url: str, tmp_path: object) -> AsyncIterator[PodiumServer]:
    """A started server on a free port, stopped (without grace) after the test."""
    settings = Settings.from_env(
        {},
        database_url=database_url,
        listen_address="127.0.0.1:0",
        shutdown_grace_seconds=0.0,
        agent_allowed_networks=LOOPBACK_AGENTS,
    )
    server = PodiumServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
async def channel(podium_server: PodiumServer) -> AsyncIterator[grpc.aio.Channel]:
    """An insecure aio channel to the test server."""
    async with grpc.aio.insecure_channel(podium_server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.OrchestrationServiceAsyncStub:
    """Generated OrchestrationService stub on the test channel."""
    return pb_grpc.OrchestrationServiceStub(channel)


@pytest.fixture
async def example_agents() -> AsyncIterator[ExampleAgents]:
    """Every built-in example agent as a real gRPC server on a free port."""
    agents = await serve_examples()
    try:
        yield agents
    finally:
        await agents.stop(0)


StartServer = Callable[..., Awaitable[PodiumServer]]


@pytest.fixture
async def start_server(database_url: str) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(agents=..., **settings)`` starts a server on the
    test database (fast scheduler timers); every server is stopped after the test."""
    servers: list[PodiumServer] = []

    async def start(**overrides: Any) -> PodiumServer:
        values: dict[str, Any] = {
            "database_url": database_url,
            "listen_address": "127.0.0.1:0",
            "shutdown_grace_seconds": 0.0,
            "lease_seconds": 5.0,
            "poll_interval_seconds": 0.2,
            "agent_allowed_networks": LOOPBACK_AGENTS,
            **overrides,
        }
        server = PodiumServer(Settings.from_env({}, **values))
        await server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(servers):
            await server.stop(0)


def static_agents(examples: ExampleAgents, *names: str) -> str:
    """A ``PODIUM_AGENTS`` value for the named example agents (all when none given),
    with the skills of each agent's card."""
    return agents_setting(examples, list(names) or None)
