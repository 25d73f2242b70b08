"""Fixtures that run a real Podium server on 127.0.0.1:0 against a fresh database.

``podium_server`` runs with authentication on (as every server with a database URL
does): it makes an admin key of the default organization, puts it in
``PODIUM_API_KEY`` for the test (the Python clients and the CLI read it) and the
``channel`` fixture sends it with every call, so tests need not know about keys.
``start_server`` and the ``podium serve`` helpers of ``processes.py`` start servers
with authentication off unless a test asks for it (``auth="required"``), because their
tests open channels of their own; the auth tests are in ``test_auth*.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from podium.client.client import API_KEY_ENV
from podium.client.demo import agents_setting
from podium.client.examples.agents import ExampleAgents, serve_examples
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.config import Settings

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
"""The Node.js package (clients/node): its client, agent SDK and examples."""

LOOPBACK_AGENTS = "loopback"
"""PODIUM_AGENT_ALLOWED_NETWORKS of test servers: the example agents listen on loopback,
which the outbound guard refuses unless allowed."""


def _with_key(details: Any, key: str) -> Any:
    """``details`` with ``authorization: Bearer <key>`` added, unless the call brings an
    ``authorization`` of its own (as the auth tests' calls do)."""
    metadata = list(details.metadata or ())
    if not any(k == "authorization" for k, _ in metadata):
        metadata.append(("authorization", f"Bearer {key}"))
    return details._replace(metadata=grpc.aio.Metadata(*metadata))


class BearerUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Sends an API key with every unary call of a channel."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self.key), request)


class BearerStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Sends an API key with every server-streaming call of a channel."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self.key), request)


async def public_tables(database_url: str) -> int:
    """How many tables the database's public schema holds (0: nothing was written, not
    even a migration)."""
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
    finally:
        await connection.close()
    return count


@pytest.fixture
def node() -> str:
    """The ``node`` executable, with clients/node's packages installed; the test is
    skipped without them (and fails in CI, where ``make node-deps`` ran)."""
    found = shutil.which("node")
    if found is None or not (NODE_DIR / "node_modules").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node and clients/node/node_modules are required in CI (make node-deps)")
        pytest.skip("node or clients/node/node_modules missing (run: make node-deps)")
    return found


def bearer_channel(address: str, key: str) -> grpc.aio.Channel:
    """An insecure aio channel sending ``key`` with every call (one interceptor per call
    kind: a channel files each interceptor under one kind only)."""
    interceptors: Any = [BearerUnary(key), BearerStream(key)]
    return grpc.aio.insecure_channel(address, interceptors=interceptors)


@pytest.fixture
async def podium_server(
    database_url: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[PodiumServer]:
    """A started server on a free port with authentication on, stopped (without grace)
    after the test; ``PODIUM_API_KEY`` holds an admin key of the default organization
    for the test's duration (see :func:`admin_key`)."""
    settings = Settings.from_env(
        {},
        database_url=database_url,
        listen_address="127.0.0.1:0",
        shutdown_grace_seconds=0.0,
        agent_allowed_networks=LOOPBACK_AGENTS,
        auth="required",
    )
    server = PodiumServer(settings)
    await server.start()
    try:
        new = await server.engine.api_keys.create(settings.organization_id, "admin", "tests")
        monkeypatch.setenv(API_KEY_ENV, new.key)
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
def admin_key(podium_server: PodiumServer) -> str:
    """The admin key of ``podium_server`` (default organization)."""
    return os.environ[API_KEY_ENV]


@pytest.fixture
async def channel(podium_server: PodiumServer, admin_key: str) -> AsyncIterator[grpc.aio.Channel]:
    """An insecure aio channel to the test server, sending the admin key with every call."""
    async with bearer_channel(podium_server.address, admin_key) as ch:
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
            # Its tests open channels of their own: auth only where a test asks for it.
            "auth": "disabled",
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
