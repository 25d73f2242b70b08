"""Fixtures shared by the client and CLI tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc


@pytest.fixture
async def bare_server() -> AsyncIterator[str]:
    """Address of a gRPC server with the generated OrchestrationService base servicer:
    every RPC answers UNIMPLEMENTED, like a Podium that predates a part of the contract."""
    server = grpc.aio.server()
    servicer = pb_grpc.OrchestrationServiceServicer()  # type: ignore[abstract]
    pb_grpc.add_OrchestrationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
