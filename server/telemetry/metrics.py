"""Prometheus metrics of one Podium replica.

Every :class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry`, so
several servers in one process (tests) never share or collide on series. The
``/metrics`` endpoint (:mod:`podium.server.telemetry.exposition`) serves that registry.

Label values are bounded: never a run or step id. Agent names come from the agent
registry, but a plan may name an agent that is not registered (its attempts fail with
``AGENT_NOT_FOUND``), so :meth:`Metrics.agent_label` caps the distinct agent values
(``unregistered`` for names without an endpoint, ``other`` past the cap). A
sub-orchestration step calls no agent: it is counted as ``(orchestration)``.

Counters are per replica: a run is counted by the replica whose transaction ended it
(the completer that committed its last step or its failure, or the replica that served
CancelRun), so ``sum()`` across replicas counts each run once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "ATTEMPT_OUTCOMES",
    "DEFAULT_MAX_AGENT_LABELS",
    "ORCHESTRATION_AGENT",
    "TIMER_AGENT",
    "RUN_STATES",
    "WEBHOOK_OUTCOMES",
    "Metrics",
]

DEFAULT_MAX_AGENT_LABELS = 200
"""Distinct agent label values per replica; further agents are counted as ``other``."""

RUN_STATES = ("succeeded", "failed", "cancelled")
"""Values of ``orchestration_runs_total{state}``: the terminal run states."""

ATTEMPT_OUTCOMES = ("succeeded", "failed", "retry", "cancelled", "stale", "input_required")
"""Values of ``orchestration_step_attempts_total{outcome}``: ``succeeded``; ``failed``
(final: the step and its run fail); ``retry`` (failed, another attempt is scheduled);
``cancelled`` (the run was cancelled or failed, the lease was lost, or the replica
stopped: the call was cancelled); ``stale`` (the outcome was refused by fencing: the
attempt was no longer current when it was committed); ``input_required`` (an A2A agent
asked for more input: the step waits for the answer)."""

WEBHOOK_OUTCOMES = ("delivered", "failed", "dead")
"""Values of ``orchestration_webhook_deliveries_total{outcome}``: a try answered 2xx
(``delivered``), a try that failed and will be retried (``failed``), a try that failed
for the last time (``dead``)."""

# Runs last from milliseconds (one no-op step) to days (human approvals).
_RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200,
                21600, 86400)  # fmt: skip
# One attempt: a no-op agent answers in about a millisecond, a model call in minutes.
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                 600, 1800, 3600)  # fmt: skip
_GRPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                 60, 300)  # fmt: skip

OTHER_AGENTS = "other"
"""Agent label of agents past :data:`DEFAULT_MAX_AGENT_LABELS`."""
UNREGISTERED_AGENT = "unregistered"
"""Agent label of a step whose agent (or skill) has no registered endpoint."""
ORCHESTRATION_AGENT = "(orchestration)"
"""Agent label of a sub-orchestration step (it runs a child run, not an agent)."""
TIMER_AGENT = "(timer)"
"""Agent label of a sleep or wait_for_event step (no agent is called)."""


class _WebhookDeliveries(Collector):
    """``orchestration_webhook_deliveries_total{outcome}``: deliveries counted here with
    :meth:`Metrics.webhook_delivery`, plus the dispatcher's own counters when tracked."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(WEBHOOK_OUTCOMES, 0.0)
        self.read: Callable[[], Mapping[str, float]] | None = None

    def collect(self) -> Iterator[Metric]:
        values = dict(self.counts)
        if self.read is not None:
            for outcome, count in self.read().items():
                values[outcome] = values.get(outcome, 0.0) + count
        family = CounterMetricFamily(
            "orchestration_webhook_deliveries",
            "Webhook delivery tries by outcome: delivered (2xx), failed (retried later), "
            "dead (failed for the last time).",
            labels=["outcome"],
        )
        for outcome, count in values.items():
            family.add_metric([outcome], count)
        yield family


class _Children:
    """The labelled series of one metric by their label values (in the metric's label
    order), looked up in a dict instead of ``labels()`` (which validates and joins its
    arguments on every call): the metrics recorded per step use these."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child


class Metrics:
    """Every Podium metric, registered on ``registry`` (a new one by default).

    Attributes are the prometheus-client instruments; the engine calls the small
    methods below so that label handling (bounds, pre-created series) stays here.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_agent_labels: int = DEFAULT_MAX_AGENT_LABELS,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        self.max_agent_labels = max_agent_labels
        self._agents: set[str] = set()
        r = self.registry

        # -- runs (seed names)
        self.runs_total = Counter(
            "orchestration_runs_total",
            "Runs that ended, by terminal state (counted by the replica that ended them).",
            ["state"],
            registry=r,
        )
        self.run_duration_seconds = Histogram(
            "orchestration_run_duration_seconds",
            "Wall time of ended runs from start (creation if never started) to end.",
            ["state"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        # -- steps
        self.steps_total = Counter(
            "orchestration_steps_total",
            "Steps that reached a final state on this replica (succeeded, or failed or "
            "skipped after their last attempt).",
            ["agent", "state"],
            registry=r,
        )
        self.step_duration_seconds = Histogram(
            "orchestration_step_duration_seconds",
            "Execution time of one step attempt (input resolution and the agent call).",
            ["agent"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.step_attempts_total = Counter(
            "orchestration_step_attempts_total",
            "Step attempts executed by this replica, by outcome: succeeded, failed (final), "
            "retry, cancelled, stale (refused by fencing).",
            ["agent", "outcome"],
            registry=r,
        )
        self.agent_tokens_total = Counter(
            "orchestration_agent_tokens_total",
            "Tokens agents reported with the attempts this replica recorded, by kind "
            "(input, output).",
            ["agent", "kind"],
            registry=r,
        )
        self.agent_cost_usd_total = Counter(
            "orchestration_agent_cost_usd_total",
            "Cost in US dollars agents reported with the attempts this replica recorded.",
            ["agent"],
            registry=r,
        )
        self.active_steps = Gauge(
            "orchestration_active_steps",
            "Step attempts this replica is executing or committing now.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "orchestration_queue_depth",
            "Queued steps waiting for a replica, all organizations (sampled every few "
            "seconds, capped; the same value on every replica).",
            registry=r,
        )
        self.runs_waiting_for_key = Gauge(
            "orchestration_runs_waiting_for_key",
            "Started runs waiting for their concurrency key (max_runs_per_key), all "
            "organizations (sampled with orchestration_queue_depth, capped).",
            registry=r,
        )
        self.watchers = Gauge(
            "orchestration_watchers",
            "WatchRun and WatchRuns streams open on this replica.",
            registry=r,
        )
        self.scheduled_runs_total = Counter(
            "orchestration_scheduled_runs_total",
            "Runs started by this replica's schedule loop: kind=tick (a schedule's tick) or "
            "kind=delayed (a StartRun start_time that came due).",
            ["kind"],
            registry=r,
        )
        for kind in ("tick", "delayed"):
            self.scheduled_runs_total.labels(kind=kind)
        # -- step-output cache: defined for dashboards; the cache is not built yet, so
        # both stay at 0 until it lands (it will call cache_hit() / cache_miss()).
        self.cache_hits_total = Counter(
            "orchestration_cache_hits_total",
            "Steps answered from the step-output cache.",
            registry=r,
        )
        self.cache_misses_total = Counter(
            "orchestration_cache_misses_total",
            "Cacheable steps that were not in the step-output cache.",
            registry=r,
        )
        # -- timers and external events
        self.step_waits_total = Counter(
            "orchestration_step_waits_total",
            "Claims of sleep and wait_for_event steps on this replica, by kind (sleep, "
            "wait_for_event) and result: waiting (parked), due (a sleep ended), received "
            "(an event completed a wait), timeout.",
            ["kind", "result"],
            registry=r,
        )
        self.external_events_total = Counter(
            "orchestration_external_events_total",
            "SendEvent requests on this replica, by result: new or duplicate (event id "
            "already received).",
            ["result"],
            registry=r,
        )
        self.event_deliveries_total = Counter(
            "orchestration_event_deliveries_total",
            "Waiting steps woken by SendEvent requests on this replica.",
            registry=r,
        )
        # -- webhooks
        self._webhook_deliveries = _WebhookDeliveries()
        r.register(self._webhook_deliveries)
        # -- retention
        self.retention_deleted_total = Counter(
            "orchestration_retention_deleted_total",
            "Rows deleted by this replica's retention passes, by kind: runs (child runs "
            "included; their steps, attempts, events... go with them), events, "
            "webhook_deliveries.",
            ["kind"],
            registry=r,
        )
        for kind in ("runs", "events", "webhook_deliveries"):
            self.retention_deleted_total.labels(kind=kind)
        # -- gRPC server (names of go-grpc-prometheus)
        self.grpc_server_handled_total = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.grpc_server_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (whole stream for streaming RPCs).",
            ["grpc_service", "grpc_method"],
            buckets=_GRPC_BUCKETS,
            registry=r,
        )

        # Series that exist from the start, so rate() and dashboards see zeros.
        for state in RUN_STATES:
            self.runs_total.labels(state=state)
        # The series recorded per step, by label values (the label counts are bounded:
        # agents by max_agent_labels, outcomes and states by their lists).
        self._attempts = _Children(self.step_attempts_total)
        self._durations = _Children(self.step_duration_seconds)
        self._steps = _Children(self.steps_total)
        self._tokens = _Children(self.agent_tokens_total)
        self._cost = _Children(self.agent_cost_usd_total)

    # -- labels ------------------------------------------------------------------------

    def agent_label(
        self,
        agent: str | None,
        *,
        registered: bool = True,
        orchestration: bool = False,
        timer: bool = False,
    ) -> str:
        """The ``agent`` label value of ``agent``: its name while fewer than
        ``max_agent_labels`` distinct names were seen, else ``other``;
        ``unregistered`` when it has no endpoint (a name only a plan mentions);
        ``(orchestration)`` for a sub-orchestration step, ``(timer)`` for a sleep or
        wait_for_event step."""
        if orchestration:
            return ORCHESTRATION_AGENT
        if timer:
            return TIMER_AGENT
        if not registered or not agent:
            return UNREGISTERED_AGENT
        if agent in self._agents:
            return agent
        if len(self._agents) >= self.max_agent_labels:
            return OTHER_AGENTS
        self._agents.add(agent)
        return agent

    # -- recording ---------------------------------------------------------------------

    def run_ended(self, state: str, seconds: float | None) -> None:
        """A run ended in ``state`` (``succeeded``, ``failed``, ``cancelled``) after
        ``seconds`` (None when unknown: counted, not timed)."""
        self.runs_total.labels(state=state).inc()
        if seconds is not None:
            self.run_duration_seconds.labels(state=state).observe(max(0.0, seconds))

    def attempt_finished(
        self, agent: str, outcome: str, seconds: float | None, final_state: str | None
    ) -> None:
        """One attempt ended with ``outcome`` (see :data:`ATTEMPT_OUTCOMES`) after
        ``seconds`` of execution; ``final_state`` is the step's final state when this
        attempt decided it (``succeeded``, ``failed`` or ``skipped``), else None. ``agent`` is a
        value from :meth:`agent_label`."""
        self._attempts(agent, outcome).inc()
        if seconds is not None:
            self._durations(agent).observe(seconds)
        if final_state is not None:
            self._steps(agent, final_state).inc()

    def usage(self, agent: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        """Usage an agent reported with a recorded attempt (``agent`` from
        :meth:`agent_label`); nothing when it reported none."""
        if input_tokens > 0:
            self._tokens(agent, "input").inc(input_tokens)
        if output_tokens > 0:
            self._tokens(agent, "output").inc(output_tokens)
        if cost_usd > 0:
            self._cost(agent).inc(cost_usd)

    def webhook_delivery(self, outcome: str) -> None:
        """Count one webhook delivery try; ``outcome`` is one of :data:`WEBHOOK_OUTCOMES`."""
        self._webhook_deliveries.counts[outcome] += 1

    def track_webhook_deliveries(self, read: Callable[[], Mapping[str, float]]) -> None:
        """Add the totals ``read`` returns (by outcome, monotonic) at each scrape: the
        dispatcher keeps its own counters, so it needs no reference to this object."""
        self._webhook_deliveries.read = read

    def retention_deleted(self, kind: str, count: int) -> None:
        """A retention batch deleted ``count`` rows of ``kind`` (runs, events,
        webhook_deliveries)."""
        self.retention_deleted_total.labels(kind=kind).inc(count)

    def cache_hit(self) -> None:
        """Count a step answered from the step-output cache."""
        self.cache_hits_total.inc()

    def cache_miss(self) -> None:
        """Count a cacheable step that was not in the cache."""
        self.cache_misses_total.inc()

    def step_wait(self, kind: str, result: str) -> None:
        """A claimed sleep or wait_for_event step came out ``result``."""
        self.step_waits_total.labels(kind=kind, result=result).inc()

    def external_event(self, *, duplicate: bool, delivered: int) -> None:
        """One SendEvent: new or duplicate, and the steps it woke."""
        self.external_events_total.labels(result="duplicate" if duplicate else "new").inc()
        if delivered and not duplicate:
            self.event_deliveries_total.inc(delivered)

    def track_active_steps(self, read: Callable[[], float]) -> None:
        """Read ``orchestration_active_steps`` from ``read`` at each scrape."""
        self.active_steps.set_function(read)

    def track_watchers(self, read: Callable[[], float]) -> None:
        """Read ``orchestration_watchers`` from ``read`` at each scrape."""
        self.watchers.set_function(read)
