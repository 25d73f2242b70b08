"""API keys on a real server: no, bad, malformed and revoked keys are UNAUTHENTICATED,
a role without the RPC is PERMISSION_DENIED, Health and reflection need no key, keys are
stored as hashes only and never appear in logs, metrics or events; PODIUM_AUTH's
auto/required/disabled; ``podium keys`` and ``--api-key`` of the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import generate_latest

from podium.client import PodiumClient
from podium.client.errors import UnauthenticatedError
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from tests.integration.conftest import StartServer
from tests.integration.rpc import error_details
from tests.integration.runs_helpers import definition

PODIUM = str(Path(sys.executable).parent / "podium")


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def auth_server(start_server: StartServer, **overrides: object) -> PodiumServer:
    """A server with authentication on and no key cache (revocations act at once)."""
    return await start_server(auth="required", auth_cache_seconds=0.0, **overrides)


async def test_calls_without_a_valid_key_are_unauthenticated(
    start_server: StartServer,
) -> None:
    server = await auth_server(start_server)
    admin = await server.engine.api_keys.create("default", "admin", "admin")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        request = pb.ListRunsRequest()
        cases = {
            "API_KEY_MISSING": (),
            "API_KEY_MALFORMED": bearer("not-a-podium-key"),
            "API_KEY_INVALID": bearer("pdm_0123456789ab_" + "A" * 43),
        }
        for reason, metadata in cases.items():
            error = await refused(stub.ListRuns(request, metadata=metadata))
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED, reason
            assert error_details(error)[0].reason == reason
        # Basic instead of Bearer, and two authorization entries, are refused too.
        for metadata in (
            (("authorization", "Basic " + admin.key),),
            bearer(admin.key) + bearer(admin.key),
        ):
            error = await refused(stub.ListRuns(request, metadata=metadata))
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
            assert error_details(error)[0].reason == "API_KEY_MALFORMED"
        # Streaming calls are checked as well.
        error = await refused(stub.WatchRuns(pb.WatchRunsRequest()).read())
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        # The valid key works; revoked, it stops working.
        await stub.ListRuns(request, metadata=bearer(admin.key))
        await server.engine.api_keys.revoke(admin.record.prefix)
        error = await refused(stub.ListRuns(request, metadata=bearer(admin.key)))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert error_details(error)[0].reason == "API_KEY_REVOKED"


async def test_revocation_takes_effect_within_the_cache_time(start_server: StartServer) -> None:
    server = await start_server(auth="required", auth_cache_seconds=0.5)
    key = await server.engine.api_keys.create("default", "viewer")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await stub.ListRuns(pb.ListRunsRequest(), metadata=bearer(key.key))
        await server.engine.api_keys.revoke(str(key.record.id))
        # Cached: still admitted right after the revocation ...
        await stub.ListRuns(pb.ListRunsRequest(), metadata=bearer(key.key))
        await asyncio.sleep(0.6)
        # ... refused once the cached answer expired.
        error = await refused(stub.ListRuns(pb.ListRunsRequest(), metadata=bearer(key.key)))
        assert error_details(error)[0].reason == "API_KEY_REVOKED"


async def test_roles_are_checked_per_rpc(start_server: StartServer) -> None:
    server = await auth_server(start_server)
    keys = {
        role: (await server.engine.api_keys.create("default", role, role)).key
        for role in ("admin", "operator", "viewer", "agent")
    }
    plan = definition("", [{"id": "s", "wait_for_event": {"name": "never"}}])
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        viewer = bearer(keys["viewer"])
        error = await refused(stub.StartRun(pb.StartRunRequest(plan=plan), metadata=viewer))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert error_details(error)[0].reason == "ROLE_NOT_ALLOWED"
        assert keys["viewer"] not in (error.details() or "")
        assert (await stub.ListRuns(pb.ListRunsRequest(), metadata=viewer)).runs == []
        # An operator starts runs but cannot store definitions; an admin can.
        created = definition("flow", [{"id": "s", "wait_for_event": {"name": "never"}}])
        error = await refused(
            stub.CreateDefinition(
                pb.CreateDefinitionRequest(definition=created), metadata=bearer(keys["operator"])
            )
        )
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        await stub.CreateDefinition(
            pb.CreateDefinitionRequest(definition=created), metadata=bearer(keys["admin"])
        )
        started = await stub.StartRun(
            pb.StartRunRequest(definition=pb.DefinitionRef(name="flow")),
            metadata=bearer(keys["operator"]),
        )
        # An agent starts runs, sends events and reads runs, but does not cancel them.
        agent = bearer(keys["agent"])
        await stub.StartRun(pb.StartRunRequest(plan=plan), metadata=agent)
        await stub.SendEvent(pb.SendEventRequest(event_id="e1", name="never"), metadata=agent)
        await stub.GetRun(pb.GetRunRequest(run_id=started.run.id), metadata=agent)
        error = await refused(
            stub.CancelRun(pb.CancelRunRequest(run_id=started.run.id), metadata=agent)
        )
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        error = await refused(stub.ListApprovals(pb.ListApprovalsRequest(), metadata=agent))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_health_and_reflection_need_no_key(start_server: StartServer) -> None:
    server = await auth_server(start_server)
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [
            s.name async for response in call for s in response.list_services_response.service
        ]
        assert "podium.orchestration.v1.OrchestrationService" in services


async def test_last_used_is_recorded_at_most_once_a_minute(
    start_server: StartServer, database_url: str
) -> None:
    server = await auth_server(start_server)
    key = await server.engine.api_keys.create("default", "viewer")
    conn = await asyncpg.connect(database_url)
    try:
        query = "SELECT last_used_at FROM api_keys WHERE id = $1"
        assert await conn.fetchval(query, key.record.id) is None
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            await stub.ListRuns(pb.ListRunsRequest(), metadata=bearer(key.key))
            first = await conn.fetchval(query, key.record.id)
            assert first is not None
            for _ in range(3):
                await stub.ListRuns(pb.ListRunsRequest(), metadata=bearer(key.key))
            assert await conn.fetchval(query, key.record.id) == first
    finally:
        await conn.close()


async def test_keys_are_stored_as_hashes_and_never_logged(
    start_server: StartServer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await auth_server(start_server, metrics_address="127.0.0.1:0")
    admin = await server.engine.api_keys.create("default", "admin", "ops")
    revoked = await server.engine.api_keys.create("default", "viewer", "old")
    await server.engine.api_keys.revoke(revoked.record.prefix)
    secret = admin.key.split("_", 2)[2]
    unknown = "pdm_0123456789ab_" + "B" * 43
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        plan = definition("", [{"id": "s", "wait_for_event": {"name": "never"}}])
        await stub.StartRun(pb.StartRunRequest(plan=plan), metadata=bearer(admin.key))
        messages = []
        for key in (revoked.key, unknown, admin.key + "x"):
            error = await refused(stub.ListRuns(pb.ListRunsRequest(), metadata=bearer(key)))
            messages.append(f"{error.details()} {error.trailing_metadata()}")
        error = await refused(
            stub.GetRun(pb.GetRunRequest(run_id="nope"), metadata=bearer(admin.key))
        )
        messages.append(f"{error.details()} {error.trailing_metadata()}")
    conn = await asyncpg.connect(database_url)
    try:
        rows = [dict(r) for r in await conn.fetch("SELECT * FROM api_keys")]
        events = [str(dict(r)) for r in await conn.fetch("SELECT * FROM orchestration_events")]
    finally:
        await conn.close()
    stored = {str(r["id"]): r for r in rows}
    row = stored[str(admin.record.id)]
    assert row["key_hash"] == hashlib.sha256(admin.key.encode()).hexdigest()
    assert row["key_prefix"] == admin.record.prefix and row["role"] == "admin"
    everything = " ".join(
        [str(rows), *events, *messages, generate_latest(server.metrics.registry).decode()]
        + [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    )
    for key in (admin.key, revoked.key, unknown):
        assert key.split("_", 2)[2] not in everything
    assert secret not in everything


@pytest.mark.parametrize(
    ("auth", "with_url", "required"),
    [("auto", True, True), ("auto", False, False), ("disabled", True, False)],
)
async def test_auth_setting(
    start_server: StartServer, auth: str, with_url: bool, required: bool
) -> None:
    from podium.server.config import Settings

    settings = Settings.from_env(
        {"PODIUM_AUTH": auth}, database_url="postgresql://x@h/db" if with_url else None
    )
    assert settings.auth_required is required
    if with_url:
        server = await start_server(auth=auth)
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = pb_grpc.OrchestrationServiceStub(channel).ListRuns(pb.ListRunsRequest())
            if required:
                assert (await refused(call)).code() is grpc.StatusCode.UNAUTHENTICATED
            else:
                assert (await call).runs == []


async def _podium(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [PODIUM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


async def test_cli_keys_and_api_key(
    start_server: StartServer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"PODIUM_DATABASE_URL": database_url, "PODIUM_API_KEY": ""}
    created = await _podium("keys", "create", "--org", "acme", "--role", "operator", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    prefix = key.split("_")[1]
    assert key.startswith(f"pdm_{prefix}_") and "shown only this once" in created.stderr
    listed = await _podium("keys", "list", "--org", "acme", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert key.split("_", 2)[2] not in listed.stdout
    assert prefix in listed.stdout and '"role": "operator"' in listed.stdout
    bad = await _podium("keys", "create", "--org", "Not An Org", "--role", "admin", env=env)
    assert bad.returncode == 1 and "organization" in bad.stderr

    server = await start_server(auth="required", auth_cache_seconds=0.0)
    address = ["--address", server.address]
    ok = await _podium("runs", "list", *address, "--api-key", key, env={"PODIUM_API_KEY": ""})
    assert ok.returncode == 0, ok.stderr
    via_env = await _podium("runs", "list", *address, env={"PODIUM_API_KEY": key})
    assert via_env.returncode == 0, via_env.stderr
    shown = await _podium("config", "-o", "json", env={"PODIUM_API_KEY": key})
    assert f"pdm_{prefix}_***" in shown.stdout and key not in shown.stdout
    missing = await _podium("runs", "list", *address, env={"PODIUM_API_KEY": ""})
    assert missing.returncode == 1 and "API key" in missing.stderr
    # The key acts for its organization: acme sees none of the default organization's runs.
    async with PodiumClient(server.address, api_key=key) as client:
        assert (await client.list_runs()).items == []
    revoked = await _podium("keys", "revoke", prefix, env=env)
    assert revoked.returncode == 0, revoked.stderr
    after = await _podium("runs", "list", *address, "--api-key", key, env={})
    assert after.returncode == 1 and "revoked" in after.stderr
    async with PodiumClient(server.address, api_key=key) as client:
        with pytest.raises(UnauthenticatedError):
            await client.list_runs()
