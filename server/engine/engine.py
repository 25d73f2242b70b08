"""The engine: the use cases behind every RPC and the scheduler, wired to one database."""

from __future__ import annotations

import logging

from podium.server.agents.dispatch import AgentDispatcher
from podium.server.agents.endpoints import EndpointGuard
from podium.server.agents.static import parse_static_agents
from podium.server.config import ConfigError, Settings
from podium.server.engine.agents import AgentService
from podium.server.engine.api_keys import ApiKeyService
from podium.server.engine.approvals import ApprovalService
from podium.server.engine.cache import CacheService, StepCache
from podium.server.engine.definitions import DefinitionService
from podium.server.engine.external_events import ExternalEventService
from podium.server.engine.fanout import FanOut
from podium.server.engine.payloads import PayloadService
from podium.server.engine.runs import RunService
from podium.server.engine.schedule_loop import ScheduleLoop
from podium.server.engine.scheduler import Scheduler, SchedulerConfig
from podium.server.engine.schedules import ScheduleService
from podium.server.engine.sizes import response_budget
from podium.server.engine.start_rate import StartRateLimiter
from podium.server.engine.triggers import EventTriggers
from podium.server.engine.usage import UsageService
from podium.server.engine.watch import WatchConfig, WatchService
from podium.server.engine.webhooks import WebhookService
from podium.server.events.hub import EventHub
from podium.server.storage.agents import AgentsRepository
from podium.server.storage.api_keys import ApiKeysRepository
from podium.server.storage.approvals import ApprovalsRepository
from podium.server.storage.cache import CacheRepository
from podium.server.storage.database import Database
from podium.server.storage.definitions import DefinitionsRepository
from podium.server.storage.events import EventsRepository
from podium.server.storage.external_events import ExternalEventsRepository
from podium.server.storage.runs import RunsRepository
from podium.server.storage.schedules import SchedulesRepository
from podium.server.storage.start_rate import StartRateRepository
from podium.server.storage.usage import UsageRepository

log = logging.getLogger("podium.engine")


class Engine:
    """Owns the services and the scheduler of one Podium replica. The API calls into it."""

    def __init__(self, db: Database, dsn: str, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        try:
            self._static_agents = parse_static_agents(settings.agents) if settings.agents else []
        except ValueError as exc:
            raise ConfigError(f"PODIUM_AGENTS: {exc}") from None
        self.api_keys = ApiKeyService(ApiKeysRepository(db), settings.auth_cache_seconds)
        self.definitions = DefinitionService(
            DefinitionsRepository(db), cache_size=settings.cache_max_definitions
        )
        runs = RunsRepository(db)
        agents = AgentsRepository(db)
        self.runs = RunService(runs, self.definitions, settings, agents)
        self.schedules = ScheduleService(
            SchedulesRepository(db, runs), self.runs, settings.schedule_misfire_grace_seconds
        )
        self.schedule_loop = ScheduleLoop(dsn, self.schedules, settings.poll_interval_seconds)
        # The outbound guard of agent endpoints: registration, static agents, every call.
        guard = EndpointGuard(settings.agent_allow_list)
        # Raises ConfigError when a TLS file of agent channels became unusable since start.
        agent_tls_ca, agent_tls_client = settings.agent_tls()
        self.agent_client = AgentDispatcher(
            max_message_bytes=settings.max_message_bytes,
            guard=guard,
            wait_seconds=settings.agent_wait_seconds,
            tls_ca=agent_tls_ca,
            tls_client=agent_tls_client,
        )
        # Cards (RegisterAgent, static agents) and health go through the dispatcher.
        self.agents = AgentService(agents, guard, self.agent_client)
        approvals = ApprovalsRepository(db)
        self.approvals = ApprovalService(approvals)
        # Raises ConfigError when a webhook URL is configured without a secret.
        self.webhooks = WebhookService(db, dsn, settings)
        events = EventsRepository(db)
        # One LISTEN podium_events connection per replica, fanned out to the watchers;
        # its fallback poll uses the scheduler's fallback timer.
        hub = EventHub(dsn, events, poll_interval=settings.poll_interval_seconds)
        budget = response_budget(settings.max_message_bytes)
        self.watch = WatchService(hub, events, WatchConfig(max_event_bytes=budget))
        self.payloads = PayloadService(runs, budget)
        self.approvals.max_response_bytes = budget
        for service in (self.definitions, self.agents, self.schedules, self.webhooks):
            service.max_response_bytes = budget
        cache_repository = CacheRepository(db)
        self.step_cache = StepCache(
            cache_repository,
            max_entries=settings.cache_max_step_outputs,
            poll_interval_seconds=settings.poll_interval_seconds,
        )
        self.cache = CacheService(cache_repository, self.definitions, self.step_cache)
        external_events = ExternalEventsRepository(db)
        self.external_events = ExternalEventService(
            external_events,
            settings.external_event_retention_seconds,
            EventTriggers(external_events, self.runs.start),
        )
        self.scheduler = Scheduler(
            dsn,
            runs,
            self.agent_client,
            SchedulerConfig(
                slots=settings.max_concurrency or settings.worker_slots,
                batch_size=settings.claim_batch_size,
                lease_seconds=settings.lease_seconds,
                poll_interval_seconds=settings.poll_interval_seconds,
                default_timeout_seconds=settings.default_step_timeout_seconds,
            ),
            start_child=self.runs.start_child,
            approvals=approvals,
            cache=self.step_cache,
            timers=external_events,
        )
        self.scheduler.executor.fanout = FanOut(runs, settings)
        self.scheduler.executor.budget_gate = runs.budget_gate
        self.usage = UsageService(UsageRepository(db), settings)
        self.runs.usage = self.usage
        self.runs.unavailable_agents = self.agents.unavailable
        if settings.start_run_rate is not None:
            limit, window = settings.start_run_rate
            self.runs.start_rate = StartRateLimiter(StartRateRepository(db), limit, window)
        self.runs.scheduler = self.scheduler

    async def start(self) -> None:
        """Check the configuration, load the static agents (with what their cards say)
        and the global webhook target, then start the watch hub, the webhook sender (with
        retention), the scheduler, the schedule loop and the agents' health watch.

        Every check comes before the first write: a replica that refuses to start
        (ConfigError) leaves the agents and webhook targets of the running ones as they
        are."""
        await self.webhooks.check_configuration()
        await self.agents.check_static(self._static_agents)
        static = await self.agents.discover_static(self._static_agents)
        loaded = await self.agents.load_static(self.settings.organization_id, static)
        if loaded:
            log.info("static agents loaded", extra={"agents": [a.name for a in loaded]})
        await self.webhooks.start()
        await self.watch.hub.start()
        await self.scheduler.start()
        await self.schedule_loop.start()
        self.agents.start_health()

    async def stop(self, grace: float = 0.0) -> None:
        """End the watch streams, stop the scheduler (running steps get ``grace``
        seconds), close agent channels. Webhook tries in flight are given back at once
        (another replica resends them)."""
        await self.schedule_loop.stop()
        await self.webhooks.stop()
        await self.watch.hub.stop()
        await self.scheduler.stop(grace)
        await self.agents.stop_health()
        await self.agent_client.close()

    async def healthy(self) -> bool:
        """Whether the database answers."""
        try:
            await self.db.ping()
        except Exception:
            return False
        return True
