"""Wiring: settings -> database -> engine -> gRPC server.

:class:`PodiumServer` owns the life cycle of one replica:

1. bind the gRPC port and serve Health (NOT_SERVING) and reflection at once, so
   probes get an answer while the database comes up;
2. start the embedded PostgreSQL when no ``PODIUM_DATABASE_URL`` is set;
3. apply pending migrations (serialized across replicas by an advisory lock);
4. open the pool, start the engine, and flip Health to SERVING;
5. on stop: NOT_SERVING, drain RPCs for the grace period, stop the engine, close the
   pool and stop the embedded PostgreSQL.

A background monitor pings the database every ``PODIUM_HEALTH_CHECK_INTERVAL_SECONDS``
and flips Health (the server and the orchestration service) to NOT_SERVING while it is
unreachable, back to SERVING when it returns.

The web console and HTTP/JSON gateway (``PODIUM_CONSOLE_ADDRESS``, package
``server/gateway``) run in the same loop and reach this server through its own gRPC
port, like any client; so does A2A's JSON-RPC binding (``PODIUM_A2A_HTTP_ADDRESS``).
``lf.a2a.v1.A2AService`` (Podium as an A2A agent, ``api/a2a.py``) is served on the
gRPC port beside OrchestrationService.

Telemetry: Prometheus metrics on ``PODIUM_METRICS_ADDRESS`` (served from the start, so
a replica waiting for its database is visible), a gRPC interceptor counting RPCs, and
OpenTelemetry tracing when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (or a tracer provider
is passed in, as tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import grpc
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.constants import PROTOCOL_VERSION_1_0
from grpc_health.v1 import health_pb2
from opentelemetry.sdk.trace import TracerProvider
from starlette.routing import Route

from podium.orchestration.v1 import orchestration_service_pb2_grpc
from podium.server.agents.static import StaticAgent
from podium.server.api.a2a import A2A_SERVICE_NAME, A2AServicer, PodiumRequestHandler
from podium.server.api.auth import AuthInterceptor
from podium.server.api.malformed import MalformedRequestInterceptor
from podium.server.api.orchestration import SERVICE_NAME, OrchestrationServicer
from podium.server.api.probes import (
    HEALTH_SERVICE_NAME,
    ListingHealthServicer,
    add_health,
    add_reflection,
)
from podium.server.config import ConfigError, Settings, redact_url
from podium.server.engine.engine import Engine, check_configuration
from podium.server.engine.errors import Unavailable
from podium.server.gateway.a2a import a2a_routes
from podium.server.gateway.server import Gateway
from podium.server.gateway.upstream import Upstream, loopback_target
from podium.server.storage.database import Database
from podium.server.storage.embedded import EmbeddedPostgres
from podium.server.storage.errors import StorageError, StorageUnavailable
from podium.server.storage.migrations import migrate
from podium.server.storage.runs import RunsRepository
from podium.server.telemetry.exposition import MetricsServer
from podium.server.telemetry.interceptors import MetricsInterceptor
from podium.server.telemetry.metrics import Metrics
from podium.server.telemetry.tracing import (
    Tracing,
    TracingConfigError,
    server_span_interceptor,
    tracer_provider_from_env,
)
from podium.server.tls import ReloadingServerCredentials, ServerTls

log = logging.getLogger("podium.server")

_WILDCARDS = ("", "0.0.0.0", "[::]", "::")
"""Listen hosts that are no address an agent could call back."""

QUEUE_DEPTH_LIMIT = 100_000
"""The queue-depth gauge counts at most this many queued steps (a bounded query)."""

# SQLSTATEs that retrying a connection cannot fix: unknown database, bad credentials.
_PERMANENT_CONNECT_ERRORS = frozenset({"3D000", "28000", "28P01"})


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """Channel arguments of the gRPC server: explicit message limits, keepalive and the
    backlog of calls not yet started."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Ping idle connections every 30 s so half-open WatchRun streams are noticed.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept client pings down to every 10 s without data, then GOAWAY abusers.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
        # Calls received but not yet picked up by the event loop. gRPC's defaults (1,000,
        # then random early drops up to 3,000) cancelled about 10% of a burst of 2,000
        # WatchRun streams before their first event; one limit, no random drops.
        ("grpc.server.max_pending_requests", settings.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", settings.max_pending_calls),
    ]


class StartupError(Exception):
    """The server cannot start for a reason retrying will not fix; the message says why."""


class PodiumServer:
    """One Podium replica: gRPC server, database, engine."""

    def __init__(
        self, settings: Settings, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        """``tracer_provider``: record spans there (tests pass one with an in-memory
        exporter); by default one is built from the OTel environment, if it asks for one."""
        self.settings = settings
        self.port = 0
        self.health = ListingHealthServicer()
        self.metrics = Metrics()
        """This replica's metrics (its own registry)."""
        self.tracing = Tracing(tracer_provider)
        self._owns_tracer_provider = False
        self.metrics_server: MetricsServer | None = None
        self.gateway: Gateway | None = None
        self.a2a_gateway: Gateway | None = None
        """Podium as an A2A agent over JSON-RPC, when PODIUM_A2A_HTTP_ADDRESS is set."""
        # With TLS on the gRPC port, the gateway's own plaintext unix socket.
        self._gateway_dir: str | None = None
        self._gateway_target: str | None = None
        """The HTTP/JSON gateway and console, when PODIUM_CONSOLE_ADDRESS is set."""
        self._sampler: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None
        self.tls: ReloadingServerCredentials | None = None
        """The gRPC port's TLS credentials, following their files; None in plaintext."""
        self._embedded: EmbeddedPostgres | None = None
        self._db: Database | None = None
        self._static_agents: list[StaticAgent] = []
        self._engine: Engine | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = False
        self._serving = False

    @property
    def engine(self) -> Engine:
        """The engine, once the database is ready; raises Unavailable before."""
        if self._engine is None:
            raise Unavailable(
                "Podium is starting: the database is not ready yet", reason="NOT_READY"
            )
        return self._engine

    @property
    def address(self) -> str:
        """The bound address, with the real port when 0 was asked for."""
        host = self.settings.listen_address.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind, serve, bring the database up, and report SERVING."""
        started = time.perf_counter()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.tracing.provider is None:
            try:
                provider = tracer_provider_from_env()
            except TracingConfigError as exc:
                raise StartupError(str(exc)) from None
            if provider is not None:
                self.tracing = Tracing(provider)
                self._owns_tracer_provider = True
                log.info("tracing: exporting spans over OTLP")
        server = grpc.aio.server(
            options=server_options(self.settings), interceptors=self._interceptors()
        )
        servicer = OrchestrationServicer(
            lambda: self.engine,
            self.settings.organization_id,
            self.settings.max_streams_per_connection,
        )
        orchestration_service_pb2_grpc.add_OrchestrationServiceServicer_to_server(servicer, server)
        a2a_handler = PodiumRequestHandler(
            lambda: self.engine, self.settings.organization_id, self._a2a_interfaces
        )
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(  # type: ignore[no-untyped-call]
            A2AServicer(a2a_handler, servicer.streams), server
        )
        add_health(self.health, server)
        add_reflection((SERVICE_NAME, A2A_SERVICE_NAME, HEALTH_SERVICE_NAME), server)
        try:
            tls = self.settings.server_tls()  # read now: the files may have been replaced
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        try:
            if tls is None:
                self.port = server.add_insecure_port(self.settings.listen_address)
            else:
                self.tls = ReloadingServerCredentials(
                    tls, self._load_server_tls, self.settings.server_tls_files()
                )
                self.port = server.add_secure_port(
                    self.settings.listen_address, self.tls.credentials
                )
                if (
                    self.settings.console_address is not None
                    or self.settings.a2a_http_address is not None
                ):
                    # The gateways reach this server over a plaintext unix socket that
                    # only this user can open, not through the TLS port (which would need
                    # a client certificate under mTLS); API keys are checked all the same.
                    self._gateway_dir = tempfile.mkdtemp(prefix="podium-gateway-")
                    self._gateway_target = f"unix:{self._gateway_dir}/grpc.sock"
                    server.add_insecure_port(self._gateway_target)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {self.settings.listen_address}: {exc}") from None
        self._server = server
        await server.start()
        log.info(
            "gRPC listening",
            extra={
                "address": self.address,
                "tls": "off" if tls is None else "mtls" if tls[1] is not None else "on",
            },
        )
        if not self.settings.auth_required:
            log.warning(
                "authentication is disabled: every caller acts as an admin of the "
                "organization %r (PODIUM_AUTH=required, or a PODIUM_DATABASE_URL, turns it on)",
                self.settings.organization_id,
            )
        if self.settings.metrics_address is not None:
            token = self.settings.metrics_token
            metrics_server = MetricsServer(
                self.metrics.registry,
                self.settings.metrics_address,
                token=token.value if token is not None else None,
            )
            self.metrics_server = metrics_server
            try:
                await metrics_server.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot serve metrics on {self.settings.metrics_address}: {exc}"
                ) from None
            log.info("metrics at /metrics", extra={"address": metrics_server.address})

        if self.settings.console_address is not None:
            await self._start_gateway(self.settings.console_address)
        if self.settings.a2a_http_address is not None:
            await self._start_a2a_gateway(self.settings.a2a_http_address)

        # Every setting is checked before the first database write (migrations included):
        # a replica that refuses its configuration changes nothing shared.
        self._static_agents = await check_configuration(self.settings)
        dsn = self.settings.database_url
        if dsn is None:
            self._embedded = EmbeddedPostgres(self.settings.data_dir)
            dsn = await asyncio.to_thread(self._embedded.start)
            log.info("embedded PostgreSQL started", extra={"data_dir": str(self.settings.data_dir)})
        await self._connect(dsn, self.settings.database_direct_url or dsn)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._monitor = asyncio.create_task(self._monitor_database(), name="podium-health-monitor")
        if self.metrics_server is not None:
            self._sampler = asyncio.create_task(self._sample_queue_depth(), name="podium-metrics")
        # Start-up objects (modules, descriptors, settings) live for the whole process:
        # keep them out of the cyclic collector's generations.
        gc.freeze()
        log.info(
            "Podium serving",
            extra={
                "address": self.address,
                "startup_seconds": round(time.perf_counter() - started, 3),
                # uvloop or asyncio (PODIUM_EVENT_LOOP)
                "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            },
        )

    def _gateway(
        self, address: str, routes: Callable[[Gateway, Upstream], list[Route]] | None = None
    ) -> Gateway:
        """A gateway on ``address``, a client of this server's gRPC port (it answers
        UNAVAILABLE like any client until the database is ready)."""
        return Gateway(
            address,
            self._gateway_target or loopback_target(self.address),
            max_body_bytes=self.settings.console_max_body_bytes,
            max_message_bytes=self.settings.max_message_bytes,
            routes=routes,
        )

    @staticmethod
    async def _serve_gateway(gateway: Gateway, address: str, what: str) -> None:
        try:
            await gateway.start()
        except OSError as exc:
            raise StartupError(f"cannot serve {what} on {address}: {exc}") from None
        log.info("serving %s", what, extra={"url": gateway.url})

    async def _start_gateway(self, address: str) -> None:
        """Serve the console and HTTP gateway."""
        self.gateway = self._gateway(address)
        await self._serve_gateway(self.gateway, address, "the console")

    async def _start_a2a_gateway(self, address: str) -> None:
        """Serve A2A's JSON-RPC binding, a client of this server's A2AService."""

        def url() -> str:
            assert self.a2a_gateway is not None
            return self.a2a_gateway.url

        self.a2a_gateway = self._gateway(
            address,
            lambda _, upstream: a2a_routes(
                upstream.channel, url, self.settings.console_max_body_bytes
            ),
        )
        await self._serve_gateway(self.a2a_gateway, address, "A2A JSON-RPC")

    def _a2a_interfaces(self) -> list[a2a_pb2.AgentInterface]:
        """The A2A bindings of the agent card: gRPC on the listen address, JSON-RPC
        when served."""
        interfaces = [
            a2a_pb2.AgentInterface(
                url=self.address, protocol_binding="GRPC", protocol_version=PROTOCOL_VERSION_1_0
            )
        ]
        if self.a2a_gateway is not None:
            interfaces.append(
                a2a_pb2.AgentInterface(
                    url=self.a2a_gateway.url,
                    protocol_binding="JSONRPC",
                    protocol_version=PROTOCOL_VERSION_1_0,
                )
            )
        return interfaces

    async def _connect(self, dsn: str, direct_dsn: str) -> None:
        """Migrate, open the pool and start the engine. ``dsn`` serves the pool (it may
        be a transaction pooler); ``direct_dsn`` reaches PostgreSQL itself, for the
        sessions the migrator's lock and the LISTEN connections need."""
        delay = 0.5
        while True:
            try:
                applied = await migrate(direct_dsn)
                if applied:
                    log.info("migrations applied", extra={"migrations": applied})
                self._db = await Database.connect(
                    dsn,
                    min_size=self.settings.db_pool_min_size,
                    max_size=self.settings.db_pool_max_size,
                    prepared_statements=self.settings.database_pool_mode == "session",
                )
                break
            except StorageUnavailable as exc:
                if exc.sqlstate in _PERMANENT_CONNECT_ERRORS:
                    # Retrying cannot fix a wrong database name or bad credentials.
                    raise StartupError(
                        f"cannot use the database {redact_url(dsn)}: {exc}"
                    ) from None
                log.warning(
                    "database unreachable, retrying",
                    extra={"database": redact_url(dsn), "error": str(exc), "retry_in": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._engine = Engine(self._db, direct_dsn, self.settings, self._static_agents)
        # Where agents reach this server with their step credentials.
        self._engine.scheduler.executor.podium_address = self.settings.agent_callback_address or (
            "" if self.settings.listen_address.rpartition(":")[0] in _WILDCARDS else self.address
        )
        self._instrument(self._engine)
        await self._engine.start()

    def _load_server_tls(self) -> ServerTls:
        """The TLS files again (a replaced set); raises ConfigError when unusable."""
        tls = self.settings.server_tls()
        if tls is None:  # pragma: no cover - the settings do not change
            raise ConfigError("PODIUM_TLS_CERT_FILE is no longer set")
        return tls

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """gRPC metrics always; server spans when tracing is on."""
        interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [
            MetricsInterceptor(self.metrics),
            # Last: the others see its INVALID_ARGUMENT for undecodable request bytes.
            MalformedRequestInterceptor(),
        ]
        # Before the malformed-request check: an unauthenticated caller learns nothing.
        # With authentication off it checks only step credentials (api/auth.py).
        interceptors.insert(
            1,
            AuthInterceptor(
                lambda: self.engine,
                {cn: (org, role) for cn, org, role in self.settings.mtls_identities},
                steps_only=not self.settings.auth_required,
            ),
        )
        if self.tracing.enabled:
            interceptors.insert(0, server_span_interceptor(self.tracing))
        return interceptors

    def _instrument(self, engine: Engine) -> None:
        """Point the engine's metrics and spans at this server's."""
        engine.scheduler.instrument(self.metrics, self.tracing)
        engine.runs.instrument(self.metrics, self.tracing)
        engine.approvals.instrument(self.metrics)
        engine.external_events.metrics = self.metrics
        engine.schedule_loop.instrument(self.metrics)
        engine.webhooks.retention.on_deleted = self.metrics.retention_deleted
        hub = engine.watch.hub
        self.metrics.track_watchers(lambda: hub.run_watchers + hub.org_watchers)
        dispatcher = engine.webhooks.dispatcher
        if dispatcher is not None:
            # failed_total counts every failed try, the last ones (dead) included.
            self.metrics.track_webhook_deliveries(
                lambda: {
                    "delivered": dispatcher.delivered_total,
                    "failed": dispatcher.failed_total - dispatcher.dead_total,
                    "dead": dispatcher.dead_total,
                }
            )

    async def _sample_queue_depth(self) -> None:
        """Set orchestration_queue_depth every PODIUM_QUEUE_DEPTH_INTERVAL_SECONDS (one
        bounded count, never per scrape); the last value stays while the database is away."""
        assert self._db is not None
        repository = RunsRepository(self._db)
        while True:
            try:
                depth = await repository.count_queued_steps(QUEUE_DEPTH_LIMIT)
                waiting = await repository.count_runs_waiting_for_key(QUEUE_DEPTH_LIMIT)
            except StorageError as exc:
                log.debug("queue depth not sampled: %s", exc)
            else:
                self.metrics.queue_depth.set(depth)
                self.metrics.runs_waiting_for_key.set(waiting)
            await asyncio.sleep(self.settings.queue_depth_interval_seconds)

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        self._serving = status == health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def _monitor_database(self) -> None:
        interval = self.settings.health_check_interval_seconds
        while True:
            await asyncio.sleep(interval)
            assert self._engine is not None
            try:
                # A black-holed database would hang the ping: it must answer in time.
                # (asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
                # cancellation that stop() sends when the ping finishes at that moment.)
                async with asyncio.timeout(max(interval, 2.0)):
                    ok = await self._engine.healthy()
            except TimeoutError:
                ok = False
            if self._stopping:
                return
            if ok != self._serving:
                log.warning("database %s", "reachable again" if ok else "unreachable")
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )

    async def wait_for_termination(self) -> None:
        """Block until the gRPC server stops."""
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, drain for ``grace`` seconds, release everything."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        log.info("shutting down", extra={"grace_seconds": grace})
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        self._serving = False
        for task in (self._monitor, self._sampler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        deadline = time.monotonic() + grace
        try:
            for gateway in (self.gateway, self.a2a_gateway):
                if gateway is not None:
                    # First: its event streams would otherwise wait on WatchRun streams.
                    await gateway.stop()
            if self._gateway_dir is not None:
                shutil.rmtree(self._gateway_dir, ignore_errors=True)
                self._gateway_dir = None
            if self._engine is not None:
                # Watch streams never end by themselves: end them first (UNAVAILABLE,
                # clients reconnect elsewhere) so they do not hold the grace period.
                await self._engine.watch.hub.stop()
            if self._server is not None:
                await self._server.stop(grace)
            if self._engine is not None:
                # One grace period in all: running steps get what the RPCs left.
                await self._engine.stop(max(0.0, deadline - time.monotonic()))
            if self._db is not None:
                await self._db.close()
        finally:
            if self._embedded is not None:
                await asyncio.to_thread(self._embedded.stop)
                log.info("embedded PostgreSQL stopped")
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            if self._owns_tracer_provider:
                # Flushes the spans still batched (bounded by the exporter's timeout).
                await asyncio.to_thread(self.tracing.shutdown)
        log.info("stopped")
