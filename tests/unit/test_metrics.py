"""Telemetry pieces without a server: label bounds, the tracing set-up from the OTel
environment, and trace ids in log records (tests/integration/test_metrics_endpoint.py:
the /metrics endpoint)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import generate_latest

from podium.server.telemetry.logging import JsonFormatter, TextFormatter, TraceContextFilter
from podium.server.telemetry.metrics import Metrics
from podium.server.telemetry.tracing import Tracing, TracingConfigError, tracer_provider_from_env


def test_agent_labels_are_bounded() -> None:
    metrics = Metrics(max_agent_labels=2)
    assert metrics.agent_label("a") == "a"
    assert metrics.agent_label("b") == "b"
    assert metrics.agent_label("c") == "other"
    assert metrics.agent_label("a") == "a"
    assert metrics.agent_label("typo", registered=False) == "unregistered"
    assert metrics.agent_label(None) == "unregistered"
    # A sub-orchestration step runs a child run: a bounded label of its own.
    assert metrics.agent_label(None, registered=False, orchestration=True) == "(orchestration)"
    assert metrics.agent_label(None, registered=False, timer=True) == "(timer)"


def test_timer_and_external_event_counters() -> None:
    metrics = Metrics()
    metrics.step_wait("sleep", "waiting")
    metrics.external_event(duplicate=False, delivered=3)
    metrics.external_event(duplicate=True, delivered=3)  # a resend woke nobody
    text = generate_latest(metrics.registry).decode()
    assert 'orchestration_step_waits_total{kind="sleep",result="waiting"} 1.0' in text
    assert 'orchestration_external_events_total{result="new"} 1.0' in text
    assert 'orchestration_external_events_total{result="duplicate"} 1.0' in text
    assert "orchestration_event_deliveries_total 3.0" in text


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.run_ended("succeeded", 1.5)
    first.webhook_delivery("dead")
    text = generate_latest(first.registry).decode()
    assert 'orchestration_runs_total{state="succeeded"} 1.0' in text
    assert 'orchestration_webhook_deliveries_total{outcome="dead"} 1.0' in text
    assert (
        'orchestration_runs_total{state="succeeded"} 0.0'
        in generate_latest(second.registry).decode()
    )


def test_tracing_is_off_without_an_otlp_endpoint() -> None:
    assert tracer_provider_from_env({}) is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert tracer_provider_from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    assert tracer_provider_from_env({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None
    with pytest.raises(TracingConfigError, match="expected grpc or http/protobuf"):
        tracer_provider_from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})


def test_an_otlp_endpoint_builds_a_provider_named_podium() -> None:
    provider = tracer_provider_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert isinstance(provider, TracerProvider)
    try:
        assert provider.resource.attributes["service.name"] == "podium"
    finally:
        provider.shutdown()


def test_without_a_provider_a_callers_context_passes_through() -> None:
    tracing = Tracing(None)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.run_span({"traceparent": parent}, {}) as (span, carrier):
        assert not span.is_recording()
        assert carrier == {"traceparent": parent}
    with tracing.run_span(None, {}) as (_, carrier):
        assert carrier is None


def _log_line(formatter: logging.Formatter) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger("podium.test.trace")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    tracing = Tracing(TracerProvider())
    with tracing.step_span(None, {}) as span:
        logger.info("inside", extra={"run_id": "r1"})
        context = span.get_span_context()
    logger.info("outside")
    assert context.is_valid
    return stream.getvalue() + f"|{context.trace_id:032x}|{context.span_id:016x}"


def test_log_records_carry_the_current_trace() -> None:
    text, trace_id, span_id = _log_line(JsonFormatter()).split("|")
    inside, outside = (json.loads(line) for line in text.splitlines())
    assert inside["trace_id"] == trace_id and inside["span_id"] == span_id
    assert inside["run_id"] == "r1"
    assert "trace_id" not in outside
    text, trace_id, _ = _log_line(TextFormatter()).split("|")
    inside_line, outside_line = text.splitlines()
    assert inside_line.endswith(f"[trace {trace_id}]")
    assert "[trace " not in outside_line
