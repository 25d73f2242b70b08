"""The per-organization StartRun rate limit (PODIUM_START_RUN_RATE): counted in the
database, so two replicas share it; a refused call is RESOURCE_EXHAUSTED with
QuotaFailure and RetryInfo and writes no run; another organization is not affected."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.conftest import StartServer, bearer_channel
from tests.integration.rpc import error_details, rpc_error
from tests.integration.runs_helpers import plan

PLAN = plan([{"id": "a", "agent": "nobody"}])


def _request(request_id: str) -> pb.StartRunRequest:
    return pb.StartRunRequest(plan=PLAN, start=False, request_id=request_id)


def _details(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    return status


async def test_start_run_rate_is_per_organization_across_replicas(
    start_server: StartServer,
) -> None:
    servers = [await start_server(auth="required", start_run_rate=(3, 3600.0)) for _ in range(2)]
    key_a = (await servers[0].engine.api_keys.create("default", "operator", "a")).key
    key_b = (await servers[0].engine.api_keys.create("org-b", "operator", "b")).key
    async with (
        bearer_channel(servers[0].address, key_a) as first,
        bearer_channel(servers[1].address, key_a) as second,
        bearer_channel(servers[1].address, key_b) as other,
    ):
        stubs = [pb_grpc.OrchestrationServiceStub(ch) for ch in (first, second)]
        for i in range(3):  # three calls, on both replicas: within the limit
            await stubs[i % 2].StartRun(_request(f"r{i}"))
        error = await rpc_error(stubs[1].StartRun(_request("r3")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info, _ = error_details(error)
        assert info.reason == "START_RATE_LIMITED"
        status = _details(error)
        retry = error_details_pb2.RetryInfo()
        quota = error_details_pb2.QuotaFailure()
        for detail in status.details:
            # Unpack fills the message only when the detail is of its type.
            detail.Unpack(retry) or detail.Unpack(quota)
        assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 3600
        assert quota.violations[0].subject == "organization:default"
        assert "PODIUM_START_RUN_RATE" in quota.violations[0].description
        # The refused call wrote nothing; the other organization starts as it likes.
        assert len((await stubs[0].ListRuns(pb.ListRunsRequest())).runs) == 3
        await pb_grpc.OrchestrationServiceStub(other).StartRun(_request("b0"))
