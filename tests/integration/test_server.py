"""The server's operator surface: health, reflection, readiness, graceful shutdown."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.config import ConfigError, Settings
from tests.integration.conftest import LOOPBACK_AGENTS, public_tables

SERVICE = "podium.orchestration.v1.OrchestrationService"
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


async def test_health_reports_serving_for_server_and_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_list_names_every_service(channel: grpc.aio.Channel) -> None:
    """Health/List (advertised by the Health descriptor) answers every service with a
    status, not UNIMPLEMENTED."""
    health = health_pb2_grpc.HealthStub(channel)
    listed = await health.List(health_pb2.HealthListRequest())
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        SERVICE: health_pb2.HealthCheckResponse.SERVING,
    }


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_is_served_as_v1_and_v1alpha(
    channel: grpc.aio.Channel, version: str
) -> None:
    """Both reflection versions answer (the messages are the same on the wire): list
    the services, then the file that defines OrchestrationService."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    answers = [answer async for answer in call(iter(requests))]
    assert SERVICE in {s.name for s in answers[0].list_services_response.service}
    assert answers[1].file_descriptor_response.file_descriptor_proto


async def test_reflection_lists_services_and_every_rpc(podium_server: PodiumServer) -> None:
    listed = await asyncio.to_thread(
        subprocess.run,
        [GRPCURL, "-plaintext", podium_server.address, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    services = set(listed.stdout.split())
    assert {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services

    described = await asyncio.to_thread(
        subprocess.run,
        [GRPCURL, "-plaintext", podium_server.address, "describe", SERVICE],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    for method in pb.DESCRIPTOR.services_by_name["OrchestrationService"].methods:
        assert f"rpc {method.name} (" in described.stdout, method.name


async def test_grpcurl_cycle_is_rejected_with_field_violations(
    podium_server: PodiumServer, admin_key: str
) -> None:
    body = (
        '{"definition": {"name": "loop", "steps": ['
        '{"id": "a", "agent": "echo", "depends_on": ["b"]},'
        '{"id": "b", "agent": "echo", "depends_on": ["a"]}]}}'
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [
            GRPCURL,
            "-plaintext",
            "-H",
            f"authorization: Bearer {admin_key}",
            "-d",
            body,
            podium_server.address,
            f"{SERVICE}/CreateDefinition",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "InvalidArgument" in output
    assert "cycle" in output and "a" in output and "b" in output


async def test_not_serving_and_unavailable_until_the_database_is_ready(tmp_path: Path) -> None:
    # Port 1 on loopback refuses connections: the server listens but cannot get ready.
    settings = Settings.from_env(
        {}, database_url="postgresql://postgres@127.0.0.1:1/podium", listen_address="127.0.0.1:0"
    )
    server = PodiumServer(settings)
    starting = asyncio.create_task(server.start())
    try:
        while server.port == 0:  # noqa: ASYNC110 - the port is set inside start()
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(server.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            response = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.OrchestrationServiceStub(ch).ListDefinitions(
                    pb.ListDefinitionsRequest(), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not starting.done()
    finally:
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await server.stop(0)


async def test_watchers_see_not_serving_when_shutdown_starts(database_url: str) -> None:
    settings = Settings.from_env({}, database_url=database_url, listen_address="127.0.0.1:0")
    server = PodiumServer(settings)
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(server.address) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE)
            )
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.create_task(server.stop(grace=5))
            second = await asyncio.wait_for(watch.read(), timeout=10)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    finally:
        if stopping is None:
            await server.stop(0)
        else:
            await stopping


async def test_a_replica_refusing_its_configuration_changes_nothing_shared(
    database_url: str,
) -> None:
    """A second replica whose configuration is refused (a loopback webhook URL without
    ORCHESTRATION_ALLOW_PRIVATE_WEBHOOKS) fails to start before writing anything: the
    running replica's static agents stay registered."""
    first = PodiumServer(
        Settings.from_env(
            {},
            database_url=database_url,
            listen_address="127.0.0.1:0",
            shutdown_grace_seconds=0.0,
            agents="echo=127.0.0.1:50999",
            agent_allowed_networks=LOOPBACK_AGENTS,
            auth="disabled",
        )
    )
    await first.start()
    try:
        second = PodiumServer(
            Settings.from_env(
                {},
                database_url=database_url,
                listen_address="127.0.0.1:0",
                shutdown_grace_seconds=0.0,
                agent_allowed_networks=LOOPBACK_AGENTS,
                progress_webhook_url="http://127.0.0.1:9/hook",
                webhook_secret="whsec_" + base64.b64encode(b"x" * 32).decode(),
                allow_private_webhooks=False,
            )
        )
        with pytest.raises(ConfigError, match="PROGRESS_WEBHOOK_URL"):
            await second.start()
        await second.stop(0)
        async with grpc.aio.insecure_channel(first.address) as channel:
            listed = await pb_grpc.OrchestrationServiceStub(channel).ListAgents(
                pb.ListAgentsRequest()
            )
        assert [agent.name for agent in listed.agents] == ["echo"]
    finally:
        await first.stop(0)


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ({"agents": "echo=127.0.0.1:50999;max=x"}, "PODIUM_AGENTS: entry 1"),
        ({"agents": "echo=127.0.0.1:50999"}, "PODIUM_AGENTS: entry 1 \\('echo'\\): endpoint"),
        ({"progress_webhook_url": "https://hooks.example.com/x"}, "PODIUM_WEBHOOK_SECRET"),
    ],
    ids=["malformed-agents", "refused-agent-endpoint", "webhook-without-secret"],
)
async def test_a_refused_configuration_writes_nothing_not_even_a_migration(
    empty_database_url: str, settings: dict[str, str], refusal: str
) -> None:
    server = PodiumServer(
        Settings.from_env(
            {}, database_url=empty_database_url, listen_address="127.0.0.1:0", **settings
        )
    )
    with pytest.raises(ConfigError, match=refusal):
        await server.start()
    await server.stop(0)
    assert await public_tables(empty_database_url) == 0
