"""Agents reached over TLS (``grpcs://HOST:PORT``) with real handshakes: a run whose
agent is a separate process serving mTLS completes; a wrong CA, a certificate for
another name, or a missing client certificate fails the step at once with a clear
``AGENT_UNAVAILABLE`` error."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from podium.client import agent_server_credentials
from podium.client.examples.agents import serve_examples
from podium.orchestration.v1 import agent_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.conftest import NODE_DIR, StartServer
from tests.integration.runs_helpers import plain, plan, start_run, step_of, wait_for_run
from tests.integration.tls_certs import Certs, agent_mtls_settings, certs, mtls_agent_process

__all__ = ["certs"]  # the fixture, used by name


@pytest.fixture
async def tls_agent_process(certs: Certs, tmp_path: Path) -> AsyncIterator[int]:
    """The echo example agent as its own process, serving mTLS with a certificate for
    localhost only; yields its port."""
    command = (sys.executable, "-m", "podium.client.examples.agents", "--only", "echo")
    port_file = ("--port-file", str(tmp_path / "agents.json"))
    async with mtls_agent_process(certs, *command, *port_file, address_key="echo") as (
        process,
        port,
    ):
        yield port
    assert process.returncode == 0


async def run_once(address: str, endpoint: str | None, agent: str = "echo") -> run_pb2.Run:
    """Register ``agent`` at ``endpoint`` (None: a static agent) and run one step on it
    (one attempt)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        if endpoint is not None:
            await stub.RegisterAgent(
                pb.RegisterAgentRequest(
                    agent=agent_pb2.Agent(name=agent, endpoint=endpoint), lazy=True
                )
            )
        step: dict[str, Any] = {
            "id": "a",
            "agent": agent,
            "input": {"word": "secure"},
            "on_failure": {"max_attempts": 1},
        }
        started = await start_run(stub, inline=plan([step]))
        return await wait_for_run(stub, started.run.id, within=60)


async def test_a_run_on_an_mtls_agent_process_completes(
    start_server: StartServer, certs: Certs, tls_agent_process: int
) -> None:
    server = await start_server(**agent_mtls_settings(certs))
    # The guard resolves localhost to 127.0.0.1 and connects there; the certificate
    # (no IP address in it) is verified against the name localhost.
    run = await run_once(server.address, f"grpcs://localhost:{tls_agent_process}")
    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run
    assert plain(step_of(run, "a").output) == {"echo": {"word": "secure"}}
    # The same agent as a static agent (PODIUM_AGENTS) of another server.
    static = await start_server(
        agents=f"echo=grpcs://localhost:{tls_agent_process}", **agent_mtls_settings(certs)
    )
    run = await run_once(static.address, None)
    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run


async def test_a_run_on_a_node_agent_over_mtls_completes(
    start_server: StartServer, certs: Certs, node: str
) -> None:
    agent = str(NODE_DIR / "examples" / "agent.js")
    async with mtls_agent_process(certs, node, agent, address_key="address") as (_, port):
        server = await start_server(**agent_mtls_settings(certs))
        run = await run_once(server.address, f"grpcs://localhost:{port}", "node-text")
        assert run.state == run_pb2.Run.STATE_SUCCEEDED, run
        assert plain(step_of(run, "a").output) == {"echo": {"word": "secure"}}
        # Without Podium's client certificate the Node agent refuses the handshake.
        plain_server = await start_server(agent_tls_ca_file=certs.ca)
        refused = await run_once(plain_server.address, f"grpcs://localhost:{port}", "node-text")
        assert refused.state == run_pb2.Run.STATE_FAILED, refused
        assert step_of(refused, "a").error.code == "AGENT_UNAVAILABLE"


@pytest.mark.parametrize(
    ("agent_cert", "server_settings", "expected"),
    [
        ("server", {"agent_tls_ca_file": "other-ca"}, "CERTIFICATE_VERIFY_FAILED"),
        ("agent-other-name", {"agent_tls_ca_file": "ca"}, "Hostname Verification"),
        # The agent closes the connection: the message can only say so.
        ("server", {"agent_tls_ca_file": "ca", "no_client_cert": True}, "127.0.0.1"),
    ],
    ids=["wrong-ca", "certificate-for-another-name", "agent-requires-a-client-certificate"],
)
async def test_a_failed_agent_handshake_fails_the_step_clearly(
    start_server: StartServer,
    certs: Certs,
    agent_cert: str,
    server_settings: dict[str, Any],
    expected: str,
) -> None:
    credentials = agent_server_credentials(certs.cert(agent_cert), certs.key(agent_cert), certs.ca)
    examples = await serve_examples(names=["echo"], credentials=credentials)
    try:
        settings: dict[str, Any] = {
            "agent_tls_ca_file": certs.cert(server_settings["agent_tls_ca_file"])
        }
        if not server_settings.get("no_client_cert"):
            settings["agent_tls_cert_file"] = certs.cert("podium")
            settings["agent_tls_key_file"] = certs.key("podium")
        server = await start_server(**settings)
        port = examples.servers["echo"].port
        run = await run_once(server.address, f"grpcs://localhost:{port}")
    finally:
        await examples.stop(0)
    assert run.state == run_pb2.Run.STATE_FAILED, run
    error = step_of(run, "a").error
    assert error.code == "AGENT_UNAVAILABLE", error
    assert expected in error.message, error.message
    assert examples["echo"].stats.calls == 0


async def test_a_plaintext_endpoint_of_a_tls_agent_fails(
    start_server: StartServer, certs: Certs
) -> None:
    credentials = agent_server_credentials(certs.cert("server"), certs.key("server"))
    examples = await serve_examples(names=["echo"], credentials=credentials)
    try:
        server = await start_server(agent_tls_ca_file=certs.ca)
        port = examples.servers["echo"].port
        run = await run_once(server.address, f"127.0.0.1:{port}")
        assert run.state == run_pb2.Run.STATE_FAILED, run
        # The same agent as grpcs:// (an IP literal: verified against the IP SAN).
        tls_run = await run_once(server.address, f"grpcs://127.0.0.1:{port}")
        assert tls_run.state == run_pb2.Run.STATE_SUCCEEDED, tls_run
    finally:
        await examples.stop(0)
