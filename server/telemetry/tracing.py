"""OpenTelemetry tracing: the run, step attempt and agent call spans, and W3C propagation.

Spans (tracer ``podium.server``):

- ``run``: a short span at StartRun, child of the caller's span (``traceparent`` in the
  StartRun metadata, or the gRPC server span when the server instrumentation is on).
  Its context is stored with the run (``orchestration_runs.trace_context``, W3C
  ``traceparent``/``tracestate``), so every step, executed later or by another
  replica, continues the same trace.
- ``step``: one per attempt, child of the run's stored context; attributes
  ``podium.run_id``, ``podium.step_id``, ``podium.attempt``, ``podium.agent``.
- ``invoke_agent {agent}``: the agent call, a CLIENT span with the RPC and GenAI
  semantic conventions (``rpc.system=grpc``, ``rpc.service``, ``rpc.method``,
  ``gen_ai.operation.name=invoke_agent``, ``gen_ai.agent.name``, status). Its context
  is sent to the agent as W3C ``traceparent`` call metadata.

Without a tracer provider (no ``OTEL_EXPORTER_OTLP_ENDPOINT``) the API's no-op tracer is
used: no span is recorded or exported, but a caller's trace context still flows
through (stored at StartRun, sent to agents, shown in logs); the step and agent call
spans are then made without the API's context managers, and without touching the
context at all when the run has no trace context. With one, spans go to a
``BatchSpanProcessor`` and the OTLP exporter (gRPC by default;
``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` uses the HTTP exporter when it is
installed). The exporter is imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, NoOpTracer, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "AGENT_RPC_METHOD",
    "AGENT_RPC_SERVICE",
    "TRACER_NAME",
    "Tracing",
    "TracingConfigError",
    "tracer_provider_from_env",
]

TRACER_NAME = "podium.server"
AGENT_RPC_SERVICE = "podium.agent.v1.AgentService"
AGENT_RPC_METHOD = "ExecuteTask"

_PROPAGATOR = TraceContextTextMapPropagator()
_GRPC_CODES = {status.name: status.value[0] for status in grpc.StatusCode}


class TracingConfigError(ValueError):
    """The OTel environment asks for an exporter that cannot be built."""


def _env_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def tracer_provider_from_env(env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A tracer provider exporting over OTLP when the standard OTel variables ask for it.

    None (tracing off, nothing recorded) unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; also None with ``OTEL_SDK_DISABLED=true``
    or ``OTEL_TRACES_EXPORTER=none``. The exporter reads its own variables (endpoint,
    headers, insecure, timeout); ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``
    override the default ``service.name=podium``; ``OTEL_TRACES_SAMPLER`` applies.
    """
    env = os.environ if env is None else env
    if _env_true(env.get("OTEL_SDK_DISABLED")):
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    exporter: Any
    # Imported here only: without an endpoint the exporter (and grpc/protobuf encoders)
    # costs nothing, not even an import.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as HttpSpanExporter,
            )
        except ImportError:
            raise TracingConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs the package "
                "opentelemetry-exporter-otlp-proto-http (pip install it), or use grpc"
            ) from None
        exporter = HttpSpanExporter()
    else:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected grpc or http/protobuf"
        )
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The OTel variables win over the default service name.
    resource = Resource.create({"service.name": "podium"}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


T = TypeVar("T")


class _Current(AbstractContextManager[T], Generic[T]):
    """A no-op tracer's span made current for a ``with`` block: what
    ``NoOpTracer.start_as_current_span`` does, without its three generator context
    managers, and without touching the context when ``span`` is already the current
    one (tracing off, no stored trace context: the usual step)."""

    __slots__ = ("_span", "_token", "_value")

    def __init__(self, value: T, span: Span | None) -> None:
        self._value = value
        self._span = span
        self._token: object = None

    def __enter__(self) -> T:
        if self._span is not None:
            self._token = context_api.attach(trace.set_span_in_context(self._span))
        return self._value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            context_api.detach(self._token)  # type: ignore[arg-type]


def _noop_child(parent: Context | None) -> tuple[Span, bool]:
    """The span ``NoOpTracer.start_span`` makes under ``parent`` (the current context
    when None), and whether it must be made current (it is not already)."""
    current = trace.get_current_span(parent)
    if isinstance(current, NonRecordingSpan):
        return current, parent is not None
    return NonRecordingSpan(current.get_span_context()), True


def _endpoint_attributes(endpoint: str) -> dict[str, Any]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        return {"server.address": endpoint}
    return {"server.address": host.strip("[]"), "server.port": int(port)}


class Tracing:
    """The tracer of one server, and the span helpers the engine uses.

    ``provider`` None means tracing is off: the no-op tracer, which records nothing but
    keeps an incoming trace context current (so it is stored, propagated and logged).
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: trace.Tracer = (
            provider.get_tracer(TRACER_NAME) if provider is not None else NoOpTracer()
        )

    # -- propagation -------------------------------------------------------------------

    @staticmethod
    def context_from(carrier: Mapping[str, str] | None) -> Context | None:
        """The context a stored or received ``traceparent``/``tracestate`` carries,
        None when there is none (a malformed one is ignored)."""
        if not carrier or "traceparent" not in carrier:
            return None
        return _PROPAGATOR.extract(carrier)

    @staticmethod
    def current_carrier() -> dict[str, str] | None:
        """``traceparent`` (and ``tracestate``) of the current span, None without one."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier or None

    # -- spans ---------------------------------------------------------------------------

    @contextmanager
    def run_span(
        self, incoming: Mapping[str, str] | None, attributes: Mapping[str, Any]
    ) -> Iterator[tuple[Span, dict[str, str] | None]]:
        """The ``run`` span around creating a run; yields it and the carrier to store.

        Its parent is the current span (the gRPC server span) when there is one, else
        the caller's ``traceparent`` from ``incoming`` (the StartRun metadata).
        """
        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            parent = self.context_from(incoming)
        with self.tracer.start_as_current_span(
            "run",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes if self.enabled else None,
        ) as span:
            yield span, self.current_carrier()

    def step_span(
        self, trace_context: Mapping[str, str] | None, attributes: Mapping[str, Any]
    ) -> AbstractContextManager[Span]:
        """The ``step`` span of one attempt, child of the run's stored context."""
        if not self.enabled:  # the no-op tracer's span, made cheaply (once per step)
            span, attach = _noop_child(self.context_from(trace_context))
            return _Current(span, span if attach else None)
        return self._step_span(trace_context, attributes)

    @contextmanager
    def _step_span(
        self, trace_context: Mapping[str, str] | None, attributes: Mapping[str, Any]
    ) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            "step",
            context=self.context_from(trace_context),
            kind=SpanKind.INTERNAL,
            attributes=attributes if self.enabled else None,
            # The outcome is set by step_result; an exception here is a cancellation
            # (run cancelled or failed, lease lost, shutdown), not an error of the step.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def agent_call_span(
        self, agent: str, endpoint: str, conversation_id: str
    ) -> AbstractContextManager[tuple[Span, tuple[tuple[str, str], ...]]]:
        """The ``invoke_agent {agent}`` CLIENT span; yields it and the call metadata
        carrying its W3C context (empty when there is no trace)."""
        if not self.enabled:  # the no-op tracer's span, made cheaply (once per step)
            span, attach = _noop_child(None)
            metadata: tuple[tuple[str, str], ...] = ()
            if span.get_span_context().is_valid:
                carrier: dict[str, str] = {}
                _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
                metadata = tuple(carrier.items())
            return _Current((span, metadata), span if attach else None)
        return self._agent_call_span(agent, endpoint, conversation_id)

    @contextmanager
    def _agent_call_span(
        self, agent: str, endpoint: str, conversation_id: str
    ) -> Iterator[tuple[Span, tuple[tuple[str, str], ...]]]:
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": AGENT_RPC_SERVICE,
            "rpc.method": AGENT_RPC_METHOD,
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "gen_ai.conversation.id": conversation_id,
            **_endpoint_attributes(endpoint),
        }
        with self.tracer.start_as_current_span(
            f"invoke_agent {agent}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            # A failed call is described by agent_call_result; an exception here is a
            # cancellation (run cancelled, lease lost, shutdown).
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            carrier = self.current_carrier()
            yield span, tuple(carrier.items()) if carrier else ()

    @staticmethod
    def agent_call_result(
        span: Span,
        *,
        error_code: str | None,
        grpc_status: str | None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Record the outcome of an agent call on its span: the gRPC status code, the
        error code (``error.type``, span status ERROR) and the reported usage."""
        if not span.is_recording():
            return
        span.set_attribute("rpc.grpc.status_code", _GRPC_CODES.get(grpc_status or "OK", 2))
        if input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if error_code is not None:
            span.set_attribute("error.type", error_code)
            span.set_status(Status(StatusCode.ERROR, error_code))

    @staticmethod
    def step_result(span: Span, outcome: str, error_code: str | None) -> None:
        """Record an attempt's outcome (``succeeded``, ``failed``, ``retry``) on its span;
        the error code only, never the agent's message or output."""
        if not span.is_recording():
            return
        span.set_attribute("podium.step.outcome", outcome)
        if error_code is not None:
            span.set_attribute("error.type", error_code)
            span.set_status(Status(StatusCode.ERROR, error_code))

    def shutdown(self) -> None:
        """Flush and stop the provider's processors (blocking: run it in a thread)."""
        if self.provider is not None:
            self.provider.shutdown()


_UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def server_span_interceptor(tracing: Tracing) -> grpc.aio.ServerInterceptor[Any, Any]:
    """The OpenTelemetry gRPC instrumentation's server interceptor on ``tracing``'s
    provider: a SERVER span per RPC, child of the caller's ``traceparent``. Health and
    reflection are not traced (probes would flood the traces)."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.instrumentation.grpc.filters import negate, service_name

    untraced = [service_name(name) for name in _UNTRACED_SERVICES]
    return aio_server_interceptor(  # type: ignore[no-untyped-call,no-any-return]
        tracer_provider=tracing.provider,
        filter_=negate(lambda details: any(f(details) for f in untraced)),
    )
