"""The engine: the use cases behind every RPC and the scheduler, wired to one database."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from podium.server.agents.a2a_http import A2ACards
from podium.server.agents.dispatch import AgentDispatcher
from podium.server.agents.endpoints import EndpointGuard
from podium.server.agents.static import StaticAgent, parse_static_agents
from podium.server.config import ConfigError, Settings
from podium.server.engine.agents import (
    AgentService,
    check_static_agents,
    discover_static_agents,
)
from podium.server.engine.api_keys import ApiKeyService
from podium.server.engine.approvals import ApprovalService
from podium.server.engine.cache import CacheService, StepCache
from podium.server.engine.child_runs import ChildRuns
from podium.server.engine.definitions import DefinitionService
from podium.server.engine.external_events import ExternalEventService
from podium.server.engine.fanout import FanOut
from podium.server.engine.payloads import PayloadService
from podium.server.engine.policies import RoutingPolicies
from podium.server.engine.replicas import ReplicaPresence
from podium.server.engine.runs import RunService
from podium.server.engine.schedule_loop import ScheduleLoop
from podium.server.engine.scheduler import Scheduler, SchedulerConfig
from podium.server.engine.schedules import ScheduleService
from podium.server.engine.sizes import response_budget
from podium.server.engine.start_rate import StartRateLimiter
from podium.server.engine.step_credentials import StepCredentials
from podium.server.engine.triggers import EventTriggers
from podium.server.engine.usage import UsageService
from podium.server.engine.watch import WatchConfig, WatchService
from podium.server.engine.webhooks import WebhookService, check_webhook_configuration
from podium.server.events.hub import EventHub
from podium.server.storage.agents import AgentsRepository
from podium.server.storage.api_keys import ApiKeysRepository
from podium.server.storage.approvals import ApprovalsRepository
from podium.server.storage.cache import CacheRepository
from podium.server.storage.database import Database
from podium.server.storage.definitions import DefinitionsRepository
from podium.server.storage.events import EventsRepository
from podium.server.storage.external_events import ExternalEventsRepository
from podium.server.storage.policies import PolicyRepository
from podium.server.storage.runs import RunsRepository
from podium.server.storage.schedules import SchedulesRepository
from podium.server.storage.start_rate import StartRateRepository
from podium.server.storage.usage import UsageRepository

log = logging.getLogger("podium.engine")


async def check_configuration(settings: Settings) -> list[StaticAgent]:
    """Every check of the settings that needs no database: the static agents (parsed,
    endpoints through the outbound guard, native ones merged with the cards of those that
    answer), the webhook target and its secret, the TLS files of agent channels.
    ``PodiumServer`` runs it before it touches the database, so a replica that refuses
    its configuration writes nothing shared (not even a migration). Returns the static
    agents.

    Raises:
        ConfigError: the first refused setting, named.
    """
    try:
        agents = parse_static_agents(settings.agents) if settings.agents else []
    except ValueError as exc:
        raise ConfigError(f"PODIUM_AGENTS: {exc}") from None
    await check_webhook_configuration(settings)
    tls_ca, tls_client = settings.agent_tls()
    guard = EndpointGuard(settings.agent_allow_list)  # one check at start: no cache
    await check_static_agents(agents, guard)
    if not any(agent.protocol == "podium_v1" for agent in agents):
        return agents
    # Native static agents take what their cards say; one that contradicts it is refused.
    dispatcher = AgentDispatcher(
        max_message_bytes=settings.max_message_bytes,
        guard=guard,
        tls_ca=tls_ca,
        tls_client=tls_client,
    )
    try:
        return await discover_static_agents(agents, dispatcher)
    finally:
        await dispatcher.close()


class Engine:
    """Owns the services and the scheduler of one Podium replica. The API calls into it."""

    def __init__(
        self, db: Database, dsn: str, settings: Settings, static_agents: Sequence[StaticAgent]
    ) -> None:
        """``static_agents``: what :func:`check_configuration` returned."""
        self.db = db
        self.settings = settings
        keys = ApiKeysRepository(db)
        self.api_keys = ApiKeyService(keys, settings.auth_cache_seconds)
        self.step_credentials = StepCredentials(keys)
        self.definitions = DefinitionService(
            DefinitionsRepository(db), cache_size=settings.cache_max_definitions
        )
        runs = RunsRepository(db, max_running_steps_per_org=settings.max_running_steps_per_org)
        agents = AgentsRepository(db)
        self.runs = RunService(runs, self.definitions, settings, agents)
        self.policies = RoutingPolicies(PolicyRepository(db), settings.routing_policy_cache_seconds)
        self.definitions.policies = self.policies
        self.runs.policies = self.policies
        self.child_runs = ChildRuns(
            runs, self.definitions, settings, self.runs.effective_max_parallel
        )
        self.schedules = ScheduleService(
            SchedulesRepository(db, runs), self.runs, settings.schedule_misfire_grace_seconds
        )
        self.schedule_loop = ScheduleLoop(dsn, self.schedules, settings.poll_interval_seconds)
        # The outbound guard of agent endpoints: registration, static agents, every call.
        guard = EndpointGuard(
            settings.agent_allow_list, cache_seconds=settings.agent_dns_cache_seconds
        )
        # Raises ConfigError when a TLS file of agent channels became unusable since start.
        agent_tls_ca, agent_tls_client = settings.agent_tls()
        # The cards of A2A agents registered by URL: read at registration, kept for the
        # calls (the dispatcher closes it).
        a2a_cards = A2ACards(
            guard, refresh_seconds=settings.a2a_card_refresh_seconds, tls_ca=agent_tls_ca
        )
        self.agent_client = AgentDispatcher(
            max_message_bytes=settings.max_message_bytes,
            guard=guard,
            wait_seconds=settings.agent_wait_seconds,
            tls_ca=agent_tls_ca,
            tls_client=agent_tls_client,
            cards=a2a_cards,
        )
        # Native agents' cards (RegisterAgent, static agents) and health go through the
        # dispatcher.
        self.agents = AgentService(agents, guard, a2a_cards, self.agent_client)
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
            start_child=self.child_runs.start_child,
            approvals=approvals,
            cache=self.step_cache,
            timers=external_events,
        )
        self.scheduler.executor.fanout = FanOut(runs, settings)
        self.scheduler.executor.budget_gate = runs.budget_gate
        self.scheduler.executor.routing = self.policies
        self.scheduler.executor.start_plan = self.child_runs.start_plan
        self.usage = UsageService(UsageRepository(db), settings)
        self.runs.usage = self.usage
        self.runs.unavailable_agents = self.agents.unavailable
        if settings.start_run_rate is not None:
            limit, window = settings.start_run_rate
            self.runs.start_rate = StartRateLimiter(StartRateRepository(db), limit, window)
        self.runs.scheduler = self.scheduler
        # This replica's row, keyed by its lease owner id, and the static agents it declares.
        self.replica = ReplicaPresence(
            agents,
            self.scheduler.owner,
            organization_id=settings.organization_id,
            group=settings.agent_group,
            agents=static_agents,
            lease_seconds=settings.lease_seconds,
        )

    async def start(self) -> None:
        """Declare this replica and its static agents, store the global webhook target,
        then start the watch hub, the webhook sender (with retention), the scheduler, the
        schedule loop, the replica's renewal and the agents' health watch. The
        configuration was checked before (:func:`check_configuration`, which read the
        static agents' cards); a replica that fails after declaring withdraws again."""
        try:
            loaded = await self.replica.join()
            if loaded:
                log.info("static agents declared", extra={"agents": [a.name for a in loaded]})
            await self.webhooks.start()
            await self.watch.hub.start()
            await self.scheduler.start()
            await self.schedule_loop.start()
            self.replica.start()
            self.agents.start_health()
        except BaseException:
            await self.agents.stop_health()
            await self.replica.leave()
            raise

    async def stop(self, grace: float = 0.0) -> None:
        """End the watch streams, stop the scheduler (running steps get ``grace``
        seconds), close agent channels, then withdraw this replica (deleting the static
        agents no other live replica declares). Webhook tries in flight are given back
        at once (another replica resends them)."""
        await self.schedule_loop.stop()
        await self.webhooks.stop()
        await self.watch.hub.stop()
        await self.scheduler.stop(grace)
        await self.agents.stop_health()
        await self.agent_client.close()
        await self.replica.leave()

    async def healthy(self) -> bool:
        """Whether the database answers."""
        try:
            await self.db.ping()
        except Exception:
            return False
        return True
