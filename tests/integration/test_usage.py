"""Usage accounting on real servers and the real example agents: usage summed per run
across steps, retries, cache hits (which record none and report what they saved) and
child runs; GetUsage totals and groups; the Prometheus counters; organization quotas
refusing StartRun across two server processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1 import run_pb2
from tests.integration.client_helpers import podium_json, podium_plain
from tests.integration.conftest import StartServer, static_agents
from tests.integration.processes import start_podium
from tests.integration.rpc import rpc_error, violations
from tests.integration.runs_helpers import create_definition, start_run, step_of, wait_for_run
from tests.integration.test_observability import delta, scrape

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

Run = run_pb2.Run
Dimension = pb.GetUsageRequest.Dimension


def usage(tokens_in: int, tokens_out: int, cost: float, model: str) -> dict[str, Any]:
    return {
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost_usd": cost,
        "model": model,
    }


@pytest.fixture
async def stub_server(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[tuple[Any, OrchestrationServiceAsyncStub]]:
    server = await start_server(agents=static_agents(example_agents), metrics_address="127.0.0.1:0")
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield server, pb_grpc.OrchestrationServiceStub(channel)


async def test_usage_sums_steps_retries_cache_hits_and_child_runs(
    stub_server: tuple[Any, OrchestrationServiceAsyncStub],
) -> None:
    """A run with a flaky step (3 attempts, each reporting 5+5 tokens: all counted), a
    cached echo step (12+8 tokens, 0.02 USD) and a sub-orchestration whose child reports
    7+3 tokens: the run's own usage, its total with the child, the attempts in GetUsage
    grouped by agent and model, and the Prometheus counters agree. A second run hits
    the cache: it records no usage for that step and reports 20 tokens saved."""
    server, stub = stub_server
    before = await scrape(server)
    fast_retry = {"max_attempts": 3, "backoff": {"initial_seconds": 0.01, "max_seconds": 0.01}}
    await create_definition(
        stub, "usage-kid", [{"id": "k", "agent": "echo", "input": {"usage": usage(7, 3, 0, "mk")}}]
    )
    steps = [
        {
            "id": "f",
            "agent": "flaky",
            "on_failure": fast_retry,
            "input": {"failures": 2, "usage": usage(5, 5, 0.001, "mf")},
        },
        {
            "id": "c",
            "agent": "echo",
            "caching": {"enabled": True},
            "input": {"usage": usage(12, 8, 0.02, "mc")},
        },
        {"id": "sub", "orchestration": {"name": "usage-kid"}},
    ]
    await create_definition(stub, "usage-parent", steps)
    first = await wait_for_run(stub, (await start_run(stub, "usage-parent")).run.id)
    assert first.state == Run.STATE_SUCCEEDED, first.error
    assert len(step_of(first, "f").attempts) == 3
    own = first.usage
    assert (own.input_tokens, own.output_tokens) == (15 + 12, 15 + 8)
    assert own.cost_usd == pytest.approx(0.003 + 0.02)
    total = first.total_usage
    assert (total.input_tokens, total.output_tokens) == (27 + 7, 23 + 3)
    assert not first.saved_usage.input_tokens
    assert step_of(first, "f").usage.input_tokens == 15

    second = await wait_for_run(stub, (await start_run(stub, "usage-parent")).run.id)
    assert second.state == Run.STATE_SUCCEEDED
    assert step_of(second, "c").cached
    assert step_of(second, "c").usage.input_tokens == 0
    assert (second.usage.input_tokens, second.usage.output_tokens) == (15, 15)
    saved = second.saved_usage
    assert (saved.input_tokens, saved.output_tokens) == (12, 8)
    assert saved.cost_usd == pytest.approx(0.02)

    # GetUsage, grouped by agent and model.
    rows = (
        await stub.GetUsage(
            pb.GetUsageRequest(group_by=[Dimension.DIMENSION_AGENT, Dimension.DIMENSION_MODEL])
        )
    ).rows
    by = {(r.agent, r.model): r for r in rows}
    assert set(by) == {("flaky", "mf"), ("echo", "mc"), ("echo", "mk"), ("echo", "")}
    assert by[("flaky", "mf")].step_attempts == 6
    assert by[("flaky", "mf")].usage.input_tokens == 30
    assert by[("echo", "mc")].step_attempts == 1 and by[("echo", "mc")].usage.output_tokens == 8
    hit = by[("echo", "")]  # the cache hit reported no model and no usage
    assert (hit.step_attempts, hit.cache_hits, hit.usage.input_tokens) == (1, 1, 0)
    assert (hit.saved.input_tokens, hit.saved.output_tokens) == (12, 8)
    assert by[("echo", "mk")].step_attempts == 2

    # Grouped by definition (the child runs belong to their own definition).
    rows = (await stub.GetUsage(pb.GetUsageRequest(group_by=[Dimension.DIMENSION_DEFINITION]))).rows
    by_definition = {r.definition_name: r for r in rows}
    assert by_definition["usage-parent"].usage.input_tokens == 30 + 12
    assert by_definition["usage-parent"].cache_hits == 1
    assert by_definition["usage-parent"].saved.input_tokens == 12
    assert by_definition["usage-kid"].usage.input_tokens == 14

    # One total row; filters; a range with nothing.
    (row,) = (await stub.GetUsage(pb.GetUsageRequest())).rows
    assert row.usage.input_tokens == 30 + 12 + 14 and row.step_attempts == 10
    (row,) = (await stub.GetUsage(pb.GetUsageRequest(model="mk"))).rows
    assert row.usage.input_tokens == 14
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    (row,) = (
        await stub.GetUsage(pb.GetUsageRequest(agent="flaky", group_by=[Dimension.DIMENSION_DAY]))
    ).rows
    assert row.day == today and row.usage.output_tokens == 30
    old = pb.GetUsageRequest()
    old.end_time.FromDatetime(datetime.now(UTC) - timedelta(days=2))
    assert not (await stub.GetUsage(old)).rows

    # The counters of this replica.
    after = await scrape(server)
    name = "orchestration_agent_tokens_total"
    assert delta(before, after, name, agent="flaky", kind="input") == 30
    assert delta(before, after, name, agent="echo", kind="input") == 12 + 14
    assert delta(before, after, name, agent="echo", kind="output") == 8 + 6
    cost = delta(before, after, "orchestration_agent_cost_usd_total", agent="flaky")
    assert cost == pytest.approx(0.006)


async def test_get_usage_refuses_bad_requests(
    stub_server: tuple[Any, OrchestrationServiceAsyncStub],
) -> None:
    _, stub = stub_server
    bad = pb.GetUsageRequest(
        group_by=[Dimension.DIMENSION_DAY, Dimension.DIMENSION_DAY, Dimension.ValueType(9)],
        agent="x" * 300,
    )
    bad.start_time.FromDatetime(datetime.now(UTC))
    bad.end_time.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    error = await rpc_error(stub.GetUsage(bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"start_time", "agent", "group_by[1]", "group_by[2]"}
    long = pb.GetUsageRequest()
    long.start_time.FromDatetime(datetime.now(UTC) - timedelta(days=400))
    error = await rpc_error(stub.GetUsage(long))
    assert set(violations(error)) == {"start_time"}
    # Timestamps that are not timestamps (found by the fuzz: nanos -1 was INTERNAL).
    broken = pb.GetUsageRequest()
    broken.start_time.nanos = -1
    broken.end_time.seconds = 10**15
    error = await rpc_error(stub.GetUsage(broken))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"start_time", "end_time"}


async def test_usage_cli_table_and_json(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """`podium usage --by agent --json` and the text table."""
    server = await start_server(agents=static_agents(example_agents))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub,
            "cli-usage",
            [{"id": "a", "agent": "echo", "input": {"usage": usage(3, 2, 0.5, "m")}}],
        )
        run = await wait_for_run(stub, (await start_run(stub, "cli-usage")).run.id)
        assert run.state == Run.STATE_SUCCEEDED
    data = await podium_json("usage", "--by", "agent", "--address", server.address)
    (row,) = data["rows"]
    assert row["agent"] == "echo" and row["usage"]["input_tokens"] == 3
    result = await podium_plain(
        "usage", "--by", "definition", "--by", "model", "--json", "--address", server.address
    )
    assert result.returncode == 0, result.stderr
    assert '"definition_name": "cli-usage"' in result.stdout
    result = await podium_plain("usage", "--by", "agent", "--address", server.address)
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "AGENT",
        "INPUT",
        "OUTPUT",
        "COST_USD",
        "ATTEMPTS",
        "CACHE_HITS",
        "SAVED_TOKENS",
    ]
    assert lines[1].split() == ["echo", "3", "2", "0.500000", "1", "0", "0"]
    shown = await podium_plain("runs", "get", run.id, "--address", server.address)
    assert "usage: 5 tokens (3 in, 2 out), 0.500000 USD" in shown.stdout, shown.stdout


async def test_daily_quota_refuses_start_run_across_two_server_processes(
    database_url: str, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    """Two `podium serve` processes on one database with PODIUM_QUOTA_DAILY_TOKENS=25:
    runs on the first use 30 tokens; then StartRun on the second is RESOURCE_EXHAUSTED
    with a QuotaFailure naming the organization, and creates nothing."""
    env = {
        "PODIUM_DATABASE_URL": database_url,
        "PODIUM_AGENTS": static_agents(example_agents, "echo"),
        "PODIUM_QUOTA_DAILY_TOKENS": "25",
        "PODIUM_POLL_INTERVAL_SECONDS": "0.2",
        "PODIUM_SHUTDOWN_GRACE_SECONDS": "0",
    }
    first = await start_podium(env, tmp_path / "first.log")
    second = await start_podium(env, tmp_path / "second.log")
    try:
        async with (
            grpc.aio.insecure_channel(first.address) as one,
            grpc.aio.insecure_channel(second.address) as two,
        ):
            stub_one = pb_grpc.OrchestrationServiceStub(one)
            stub_two = pb_grpc.OrchestrationServiceStub(two)
            ten = {"id": "a", "agent": "echo", "input": {"usage": usage(5, 5, 0, "m")}}
            await create_definition(stub_one, "quota", [ten])
            for _ in range(3):
                run = await wait_for_run(stub_one, (await start_run(stub_one, "quota")).run.id)
                assert run.state == Run.STATE_SUCCEEDED
            request_id = str(uuid.uuid4())
            error = await rpc_error(start_run(stub_two, "quota", request_id=request_id))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            assert status is not None
            quota = _quota_failure(status)
            assert [v.subject for v in quota.violations] == ["organization:default"]
            assert "PODIUM_QUOTA_DAILY_TOKENS" in quota.violations[0].description
            listed = await stub_two.ListRuns(pb.ListRunsRequest(definition_name="quota"))
            assert len(listed.runs) == 3
    finally:
        await asyncio.to_thread(first.cleanup)
        await asyncio.to_thread(second.cleanup)


def _quota_failure(status: status_pb2.Status) -> error_details_pb2.QuotaFailure:
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):  # type: ignore[arg-type]
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            return quota
    raise AssertionError(f"no QuotaFailure in {status}")
