"""Fixtures that run a real Podium server on 127.0.0.1:0 against a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.config import Settings


@pytest.fixture
async def podium_server(database_url: str, tmp_path: object) -> AsyncIterator[PodiumServer]:
    """A started server on a free port, stopped (without grace) after the test."""
    settings = Settings.from_env(
        {}, database_url=database_url, listen_address="127.0.0.1:0", shutdown_grace_seconds=0.0
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
