"""Observability end to end: /metrics after real runs, spans and W3C propagation to a
real agent (also across a restart), and Health while the database goes away.

Metrics are read with a real HTTP GET of the metrics port and parsed with
prometheus-client's parser; spans are collected by an in-memory exporter on a tracer
provider given to the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from podium.client.agent import Agent, AgentServer, Task, TaskFailed
from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from podium.server.config import SecretValue, Settings

from .conftest import StartServer, static_agents
from .runs_helpers import (
    Run,
    StepRun,
    plan,
    start_run,
    struct,
    wait_for_run,
    wait_for_step,
    wait_until,
)

SERVICE = "podium.orchestration.v1.OrchestrationService"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers ---------------------------------------------------------------------------


async def http_get(address: str, path: str) -> tuple[int, str]:
    """A real HTTP/1.1 GET; returns (status, body)."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: */*\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


async def scrape(server: PodiumServer) -> Samples:
    """Every sample of GET /metrics by (name, labels)."""
    assert server.metrics_server is not None
    status, body = await http_get(server.metrics_server.address, "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample (0 when the series does not exist yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@contextlib.asynccontextmanager
async def serve_agent(name: str, handler: Callable[[Task], Awaitable[dict[str, Any]]]) -> Any:
    """A one-off SDK agent on a free port."""
    agent = Agent(name, description="test agent", handler=handler)
    server: AgentServer = await agent.serve("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop(0)


def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


ServeTraced = Callable[..., Awaitable[PodiumServer]]


@pytest.fixture
async def serve_traced(database_url: str) -> AsyncIterator[ServeTraced]:
    """Factory: a server on the test database with a given tracer provider."""
    servers: list[PodiumServer] = []

    async def start(provider: TracerProvider | None, **overrides: Any) -> PodiumServer:
        values: dict[str, Any] = {
            "database_url": database_url,
            "listen_address": "127.0.0.1:0",
            "shutdown_grace_seconds": 0.0,
            "lease_seconds": 5.0,
            "poll_interval_seconds": 0.2,
            "agent_allowed_networks": "loopback",
            "auth": "disabled",  # its tests open channels of their own
            **overrides,
        }
        server = PodiumServer(Settings.from_env({}, **values), tracer_provider=provider)
        await server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(servers):
            await server.stop(0)


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def parse_traceparent(value: str) -> tuple[int, int]:
    version, trace_id, span_id, _flags = value.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


# -- metrics ---------------------------------------------------------------------------


async def test_metrics_count_runs_steps_attempts_and_rpcs(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    server = await start_server(
        agents=static_agents(example_agents, "echo", "flaky"),
        metrics_address="127.0.0.1:0",
        queue_depth_interval_seconds=0.1,
    )
    before = await scrape(server)
    fast_retry = {"max_attempts": 3, "backoff": {"initial_seconds": 0.01, "max_seconds": 0.01}}
    flaky = {"id": "f", "agent": "flaky", "on_failure": fast_retry}
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        # Two echo steps in sequence: succeeded.
        ok = await start_run(
            stub,
            inline=plan(
                [
                    {"id": "a", "agent": "echo"},
                    {"id": "b", "agent": "echo", "depends_on": ["a"]},
                ]
            ),
        )
        # Fails once (retryable), then succeeds.
        retried = await start_run(
            stub,
            inline=plan([{**flaky, "input": {"failures": 1}}]),
        )
        # A non-retryable failure fails the run.
        failed = await start_run(
            stub,
            inline=plan([{**flaky, "input": {"failures": 1, "fatal": True}}]),
        )
        for response, state in ((ok, Run.STATE_SUCCEEDED), (retried, Run.STATE_SUCCEEDED)):
            assert (await wait_for_run(stub, response.run.id)).state == state
        assert (await wait_for_run(stub, failed.run.id)).state == Run.STATE_FAILED

        # A long step, watched, then cancelled.
        slow = await start_run(
            stub, inline=plan([{"id": "s", "agent": "echo", "input": {"delay": 60}}])
        )
        await wait_for_step(stub, slow.run.id, "s", [StepRun.STATE_RUNNING])
        watch = stub.WatchRun(pb.WatchRunRequest(run_id=slow.run.id))
        await watch.read()
        during = await scrape(server)
        assert value(during, "orchestration_watchers") == 1
        assert value(during, "orchestration_active_steps") == 1
        watch.cancel()  # the client goes away: CANCELLED

        async def unwatched() -> bool:
            now = await scrape(server)
            return value(now, "orchestration_watchers") == 0 and delta(
                before, now, "grpc_server_handled_total", grpc_service=SERVICE,
                grpc_method="WatchRun", grpc_code="CANCELLED",
            ) == 1  # fmt: skip

        await wait_until(unwatched, "the closed watch in /metrics")
        await stub.CancelRun(pb.CancelRunRequest(run_id=slow.run.id, reason="test"))
        # Cancelling twice counts the run once.
        await stub.CancelRun(pb.CancelRunRequest(run_id=slow.run.id, reason="again"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetRun(pb.GetRunRequest(run_id="not-a-uuid"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        async def settled() -> bool:
            now = await scrape(server)
            return (
                delta(before, now, "orchestration_step_attempts_total", agent="echo",
                      outcome="cancelled") == 1
                and value(now, "orchestration_active_steps") == 0
            )  # fmt: skip

        await wait_until(settled, "the cancelled attempt in /metrics")
    after = await scrape(server)

    def d(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert d("orchestration_runs_total", state="succeeded") == 2
    assert d("orchestration_runs_total", state="failed") == 1
    assert d("orchestration_runs_total", state="cancelled") == 1
    for run_state, count in (("succeeded", 2), ("failed", 1), ("cancelled", 1)):
        assert d("orchestration_run_duration_seconds_count", state=run_state) == count
    assert d("orchestration_steps_total", agent="echo", state="succeeded") == 2
    assert d("orchestration_steps_total", agent="flaky", state="succeeded") == 1
    assert d("orchestration_steps_total", agent="flaky", state="failed") == 1
    assert d("orchestration_step_attempts_total", agent="echo", outcome="succeeded") == 2
    assert d("orchestration_step_attempts_total", agent="flaky", outcome="retry") == 1
    assert d("orchestration_step_attempts_total", agent="flaky", outcome="succeeded") == 1
    assert d("orchestration_step_attempts_total", agent="flaky", outcome="failed") == 1
    # Timed: every attempt that produced an outcome (not the cancelled one).
    assert d("orchestration_step_duration_seconds_count", agent="echo") == 2
    assert d("orchestration_step_duration_seconds_count", agent="flaky") == 3
    assert d("orchestration_step_duration_seconds_bucket", agent="echo", le="+Inf") == 2

    rpc = {"grpc_service": SERVICE}
    assert d("grpc_server_handled_total", grpc_method="StartRun", grpc_code="OK", **rpc) == 4
    assert d("grpc_server_handled_total", grpc_method="CancelRun", grpc_code="OK", **rpc) == 2
    assert d("grpc_server_handled_total", grpc_method="GetRun", grpc_code="INVALID_ARGUMENT",
             **rpc) == 1  # fmt: skip
    assert d("grpc_server_handled_total", grpc_method="WatchRun", grpc_code="CANCELLED",
             **rpc) == 1  # fmt: skip
    assert d("grpc_server_handling_seconds_count", grpc_method="StartRun", **rpc) == 4

    # Defined even while nothing feeds them.
    for name, labels in (
        ("orchestration_cache_hits_total", {}),
        ("orchestration_cache_misses_total", {}),
        ("orchestration_webhook_deliveries_total", {"outcome": "delivered"}),
        ("orchestration_queue_depth", {}),
    ):
        assert (name, frozenset(labels.items())) in after, name
    # The queue depth gauge is refreshed periodically (it may still show a step queued
    # a moment ago); its value is checked with a short interval in the test below.
    assert all("run_id" not in dict(labels) for _, labels in after)

    assert server.metrics_server is not None
    status, _ = await http_get(server.metrics_server.address, "/other")
    assert status == 404


class HookReceiver:
    """A local webhook receiver answering every POST with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.posts = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        self.posts += 1
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()


async def test_webhook_deliveries_are_counted_by_outcome(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    good, bad = HookReceiver(200), HookReceiver(500)
    await good.start()
    await bad.start()
    server = await start_server(
        agents=static_agents(example_agents, "echo"),
        metrics_address="127.0.0.1:0",
        webhook_secret=SecretValue("whsec_" + base64.b64encode(b"0123456789abcdef").decode()),
        allow_private_webhooks=True,
        webhook_max_attempts=2,
        webhook_backoff_initial_seconds=0.01,
        webhook_backoff_max_seconds=0.01,
    )
    try:
        before = await scrape(server)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            for hook in (good, bad):
                request = pb.StartRunRequest(
                    plan=plan([{"id": "a", "agent": "echo"}]), webhook_url=hook.url, start=True
                )
                run = (await stub.StartRun(request)).run
                assert (await wait_for_run(stub, run.id)).state == Run.STATE_SUCCEEDED
            events = len((await stub.ListRunEvents(pb.ListRunEventsRequest(run_id=run.id))).events)

        async def delivered() -> bool:
            now = await scrape(server)
            counts = {
                outcome: delta(before, now, "orchestration_webhook_deliveries_total",
                               outcome=outcome)
                for outcome in ("delivered", "failed", "dead")
            }  # fmt: skip
            return counts == {"delivered": events, "failed": events, "dead": events}

        await wait_until(delivered, f"{events} delivered, failed then dead in /metrics")
        assert good.posts == events and bad.posts == 2 * events
    finally:
        await good.stop()
        await bad.stop()


async def test_queue_depth_counts_queued_steps(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    # No agent may run: ORCHESTRATION_MAX_CONCURRENCY=1 and a long first step keep the
    # others queued (max_parallel 5 per run lets them be queued, not pending).
    server = await start_server(
        agents=static_agents(example_agents, "echo"),
        metrics_address="127.0.0.1:0",
        queue_depth_interval_seconds=0.1,
        max_concurrency=1,
        default_max_parallel=5,
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        steps = [{"id": f"s{i}", "agent": "echo", "input": {"delay": 30}} for i in range(4)]
        response = await start_run(stub, inline=plan(steps))

        async def three_queued() -> bool:
            return value(await scrape(server), "orchestration_queue_depth") == 3

        await wait_until(three_queued, "orchestration_queue_depth == 3")
        await stub.CancelRun(pb.CancelRunRequest(run_id=response.run.id))

        async def none_queued() -> bool:
            return value(await scrape(server), "orchestration_queue_depth") == 0

        await wait_until(none_queued, "orchestration_queue_depth == 0")


# -- tracing ---------------------------------------------------------------------------


async def test_spans_run_step_agent_call_and_traceparent_reach_the_agent(
    serve_traced: ServeTraced,
) -> None:
    provider, exporter = tracing()
    received: list[tuple[str, str]] = []

    async def record(task: Task) -> dict[str, Any]:
        received.append((task.step_id, str(task.metadata.get("traceparent", ""))))
        return {"ok": True}

    async with serve_agent("tracer", record) as agent:
        server = await serve_traced(provider, agents=f"tracer={agent.address}")
        client_trace, client_span = secrets.randbits(128), secrets.randbits(64)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            request = pb.StartRunRequest(
                plan=plan(
                    [
                        {"id": "a", "agent": "tracer"},
                        {"id": "b", "agent": "tracer", "depends_on": ["a"]},
                    ]
                ),
                input=struct({}),
                start=True,
            )
            response = await stub.StartRun(
                request, metadata=(("traceparent", traceparent(client_trace, client_span)),)
            )
            run_id = response.run.id
            assert (await wait_for_run(stub, run_id)).state == Run.STATE_SUCCEEDED

    spans = exporter.get_finished_spans()
    # The whole run is one trace, the client's (each GetRun poll is a trace of its own).
    run_trace = [s for s in spans if s.name != f"/{SERVICE}/GetRun"]
    assert {s.context.trace_id for s in run_trace} == {client_trace}
    ids = {s.context.span_id: s for s in spans}

    # gRPC server span (OTel instrumentation), child of the client's span.
    [start_span] = [s for s in spans if s.name == f"/{SERVICE}/StartRun"]
    assert start_span.kind == SpanKind.SERVER
    assert start_span.parent is not None and start_span.parent.span_id == client_span

    [run_span] = by_name(spans, "run")
    assert run_span.parent is not None and run_span.parent.span_id == start_span.context.span_id
    assert run_span.attributes is not None
    assert run_span.attributes["podium.run_id"] == run_id

    steps = by_name(spans, "step")
    assert sorted(str((s.attributes or {})["podium.step_id"]) for s in steps) == ["a", "b"]
    for step in steps:
        attributes = step.attributes or {}
        assert step.parent is not None and step.parent.span_id == run_span.context.span_id
        assert attributes["podium.run_id"] == run_id
        assert attributes["podium.attempt"] == 1
        assert attributes["podium.agent"] == "tracer"
        assert attributes["podium.step.outcome"] == "succeeded"

    calls = by_name(spans, "invoke_agent tracer")
    assert len(calls) == 2
    by_step = {}
    for call in calls:
        attributes = call.attributes or {}
        assert call.kind == SpanKind.CLIENT
        assert call.status.status_code != StatusCode.ERROR
        assert attributes["rpc.system"] == "grpc"
        assert attributes["rpc.service"] == "podium.agent.v1.AgentService"
        assert attributes["rpc.method"] == "ExecuteTask"
        assert attributes["rpc.grpc.status_code"] == 0
        assert attributes["gen_ai.operation.name"] == "invoke_agent"
        assert attributes["gen_ai.agent.name"] == "tracer"
        assert call.parent is not None
        parent = ids[call.parent.span_id]
        assert parent.name == "step"
        by_step[(parent.attributes or {})["podium.step_id"]] = call

    # The agent saw the trace: its parent is the agent call span of its step.
    assert sorted(step for step, _ in received) == ["a", "b"]
    for step_id, header in received:
        trace_id, parent_id = parse_traceparent(header)
        assert trace_id == client_trace
        assert parent_id == by_step[step_id].context.span_id


async def test_failed_agent_call_marks_the_spans(serve_traced: ServeTraced) -> None:
    provider, exporter = tracing()

    async def fail(task: Task) -> dict[str, Any]:
        raise TaskFailed("BROKEN", "always", retryable=False)

    async with serve_agent("broken", fail) as agent:
        server = await serve_traced(provider, agents=f"broken={agent.address}")
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            response = await start_run(stub, inline=plan([{"id": "x", "agent": "broken"}]))
            assert (await wait_for_run(stub, response.run.id)).state == Run.STATE_FAILED
    spans = exporter.get_finished_spans()
    [call] = by_name(spans, "invoke_agent broken")
    [step] = by_name(spans, "step")
    for span in (call, step):
        assert span.status.status_code == StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "BROKEN"
    assert (step.attributes or {})["podium.step.outcome"] == "failed"


async def test_steps_executed_by_another_server_continue_the_trace(
    serve_traced: ServeTraced,
) -> None:
    received: list[str] = []

    async def record(task: Task) -> dict[str, Any]:
        received.append(str(task.metadata.get("traceparent", "")))
        return {}

    first_provider, first_spans = tracing()
    second_provider, second_spans = tracing()
    async with serve_agent("tracer", record) as agent:
        first = await serve_traced(first_provider, agents=f"tracer={agent.address}")
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            response = await start_run(
                stub, inline=plan([{"id": "only", "agent": "tracer"}]), start=False
            )
        await first.stop(0)
        [run_span] = by_name(first_spans.get_finished_spans(), "run")

        # Another replica (after the first stopped) starts and executes the run.
        second = await serve_traced(second_provider, agents=f"tracer={agent.address}")
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            await stub.ContinueRun(pb.ContinueRunRequest(run_id=response.run.id))
            assert (await wait_for_run(stub, response.run.id)).state == Run.STATE_SUCCEEDED

    [step] = by_name(second_spans.get_finished_spans(), "step")
    assert step.context.trace_id == run_span.context.trace_id
    assert step.parent is not None and step.parent.span_id == run_span.context.span_id
    [header] = received
    assert parse_traceparent(header)[0] == run_span.context.trace_id


async def test_without_tracing_the_callers_trace_still_reaches_the_agent(
    serve_traced: ServeTraced,
) -> None:
    received: list[str | None] = []

    async def record(task: Task) -> dict[str, Any]:
        header = task.metadata.get("traceparent")
        received.append(None if header is None else str(header))
        return {}

    async with serve_agent("tracer", record) as agent:
        server = await serve_traced(None, agents=f"tracer={agent.address}")
        assert not server.tracing.enabled
        client_trace, client_span = secrets.randbits(128), secrets.randbits(64)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.OrchestrationServiceStub(channel)
            traced = await stub.StartRun(
                pb.StartRunRequest(plan=plan([{"id": "t", "agent": "tracer"}]), start=True),
                metadata=(("traceparent", traceparent(client_trace, client_span)),),
            )
            assert (await wait_for_run(stub, traced.run.id)).state == Run.STATE_SUCCEEDED
            untraced = await start_run(stub, inline=plan([{"id": "u", "agent": "tracer"}]))
            assert (await wait_for_run(stub, untraced.run.id)).state == Run.STATE_SUCCEEDED
    first, second = received
    assert first is not None
    assert parse_traceparent(first) == (client_trace, client_span)
    assert second is None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A fake OTLP/gRPC collector: keeps the names of the spans it receives."""

    def __init__(self) -> None:
        self.spans: list[str] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(span.name for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_are_exported_over_otlp_when_the_endpoint_is_set(
    serve_traced: ServeTraced, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = Collector()
    otlp = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, otlp)  # type: ignore[no-untyped-call]
    port = otlp.add_insecure_port("127.0.0.1:0")
    await otlp.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")

    async def ok(task: Task) -> dict[str, Any]:
        return {}

    try:
        async with serve_agent("tracer", ok) as agent:
            server = await serve_traced(None, agents=f"tracer={agent.address}")
            assert server.tracing.enabled
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = pb_grpc.OrchestrationServiceStub(channel)
                response = await start_run(stub, inline=plan([{"id": "x", "agent": "tracer"}]))
                assert (await wait_for_run(stub, response.run.id)).state == Run.STATE_SUCCEEDED
            await server.stop(0)  # flushes the batch
        assert {"run", "step", "invoke_agent tracer"} <= set(collector.spans)
    finally:
        await otlp.stop(0)


# -- health ----------------------------------------------------------------------------


class DatabaseProxy:
    """A TCP proxy in front of the test database that can cut it off: while down, open
    connections are dropped and new ones are closed at once (as if it had stopped)."""

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        query = parse_qs(parts.query)
        self._socket: str | None = None
        if "host" in query:  # embedded: unix socket
            port = query.get("port", ["5432"])[0]
            self._socket = f"{query['host'][0]}/.s.PGSQL.{port}"
        else:
            self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 5432
        self._url = parts
        self.up = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        user = self._url.username or "postgres"
        self.url = urlunsplit(("postgresql", f"{user}@127.0.0.1:{port}", self._url.path, "", ""))

    def down(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            if self._socket is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self._socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


async def test_health_is_not_serving_while_the_database_is_unreachable(database_url: str) -> None:
    proxy = DatabaseProxy(database_url)
    await proxy.start()
    settings = Settings.from_env(
        {},
        database_url=proxy.url,
        listen_address="127.0.0.1:0",
        health_check_interval_seconds=0.1,
        poll_interval_seconds=0.2,
        auth="disabled",
    )
    server = PodiumServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status_is(wanted: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    answers = [
                        await health.Check(health_pb2.HealthCheckRequest(service=name))
                        for name in ("", SERVICE)
                    ]
                    return all(answer.status == wanted for answer in answers)

                return check

            serving = health_pb2.HealthCheckResponse.SERVING
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            assert await status_is(serving)()
            proxy.down()
            await wait_until(status_is(not_serving), "NOT_SERVING while the database is away")
            proxy.up = True
            await wait_until(status_is(serving), "SERVING once the database is back")
            # And the server works again.
            stub = pb_grpc.OrchestrationServiceStub(channel)
            await stub.ListRuns(pb.ListRunsRequest(), timeout=10)
    finally:
        await server.stop(0)
        await proxy.stop()


async def test_sub_orchestration_steps_have_an_agent_label_of_their_own(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """A step running a child run calls no agent: it is counted as
    ``agent="(orchestration)"``, not as an unregistered agent."""
    server = await start_server(
        agents=static_agents(example_agents, "echo"), metrics_address="127.0.0.1:0"
    )
    before = await scrape(server)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        child = plan([{"id": "c", "agent": "echo"}])
        child.name = "metrics-child"
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=child))
        parent = await start_run(
            stub, inline=plan([{"id": "p", "orchestration": {"name": "metrics-child"}}])
        )
        assert (await wait_for_run(stub, parent.run.id)).state == Run.STATE_SUCCEEDED
    after = await scrape(server)
    label = "(orchestration)"
    assert delta(before, after, "orchestration_steps_total", agent=label, state="succeeded") == 1
    assert delta(before, after, "orchestration_step_attempts_total", agent=label,
                 outcome="succeeded") == 1  # fmt: skip
    agents = {dict(labels).get("agent") for _, labels in after}
    assert "unregistered" not in agents
