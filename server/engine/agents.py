"""Agents: the registry behind RegisterAgent / ListAgents / DeregisterAgent, and the
static agents of the server configuration (``PODIUM_AGENTS``).

A registered agent never replaces a static one of the same name (ALREADY_EXISTS) and a
static agent cannot be deregistered (FAILED_PRECONDITION): the configuration is changed
instead. Static agents are declared by each replica at start and belong to the replicas
that declare them (:mod:`podium.server.engine.replicas`).

Endpoints go through the outbound guard (:mod:`podium.server.agents.endpoints`): a
RegisterAgent endpoint that is refused or does not resolve is a field violation on
``agent.endpoint``, and so is the card URL of an A2A agent whose card cannot be read
or lists no interface Podium calls (:mod:`podium.server.agents.a2a_http`; the card's
skill ids are the agent's skills when RegisterAgent gives none); a refused static
agent stops the server with an error naming ``PODIUM_AGENTS`` (one whose name does not
resolve yet is only logged: calls check it again; an A2A static agent's card is read by
its first call).

``podium.agent.v1`` agents are discovered (``agents/discovery.py``): RegisterAgent reads
the agent's card through the dispatcher (so through the outbound guard) and takes the
skills, max concurrency and default timeout not given from it; an agent that does not
answer is FAILED_PRECONDITION (``AGENT_NOT_ANSWERING``) unless the registration is
``lazy``. Static agents read their cards at start, before any database write
(:func:`discover_static_agents`); one that does not answer is stored as configured.
Either way a stored agent whose card was not read gets it the first time the replica's
health watch sees it serving (:meth:`AgentService.discover_lazy`, the monitor's
``on_serving``). Every replica watches the health of every ``podium_v1``
endpoint of the table (:meth:`AgentService.sync_health`, every
:data:`HEALTH_SYNC_SECONDS`, and at once for agents it registers, lists or calls);
ListAgents shows it.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from podium.orchestration.v1 import agent_pb2
from podium.server.agents.a2a_http import A2ACards, CardUnavailable, is_card_url
from podium.server.agents.client import AgentCallError
from podium.server.agents.discovery import merge_card
from podium.server.agents.dispatch import AgentDispatcher
from podium.server.agents.endpoints import EndpointGuard, EndpointRefused
from podium.server.agents.health import Health
from podium.server.agents.static import MAX_SKILLS, StaticAgent, agent_problems, skill_id_problem
from podium.server.config import ConfigError
from podium.server.engine.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from podium.server.engine.paging import bounded_name_page, decode_token
from podium.server.engine.paging import page_size as effective_page_size
from podium.server.engine.sizes import DEFAULT_MAX_RESPONSE_BYTES
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.agents import (
    AgentRecord,
    AgentsRepository,
    StaticAgentConflict,
    static_conflict,
)

__all__ = [
    "HEALTH_SYNC_SECONDS",
    "AgentService",
    "agent_to_violations",
    "check_static_agents",
    "discover_static_agents",
    "record_to_agent",
]

HEALTH_SYNC_SECONDS = 15.0
"""How often a replica re-reads which endpoints to watch (agents registered or removed
on other replicas)."""

CARD_TIMEOUT_SECONDS = 5.0
"""Deadline of the GetAgentCard call of RegisterAgent and of a lazy agent's discovery."""

STATIC_CARD_TIMEOUT_SECONDS = 2.0
"""Deadline of each static agent's GetAgentCard call at start, and of a lazy
registration's."""

Agent = agent_pb2.Agent

_log = logging.getLogger(__name__)

_PROTOCOL_TO_PB = {
    "podium_v1": Agent.Protocol.PROTOCOL_PODIUM_V1,
    "a2a": Agent.Protocol.PROTOCOL_A2A,
}
_PROTOCOL_FROM_PB = {
    Agent.Protocol.PROTOCOL_UNSPECIFIED: "podium_v1",
    Agent.Protocol.PROTOCOL_PODIUM_V1: "podium_v1",
    Agent.Protocol.PROTOCOL_A2A: "a2a",
}
_SOURCE_TO_PB = {
    "registered": Agent.Source.SOURCE_REGISTERED,
    "static": Agent.Source.SOURCE_STATIC,
}
_HEALTH_TO_PB = {
    "unknown": agent_pb2.AgentHealth.State.STATE_UNKNOWN,
    "serving": agent_pb2.AgentHealth.State.STATE_SERVING,
    "not_serving": agent_pb2.AgentHealth.State.STATE_NOT_SERVING,
}


def record_to_agent(record: AgentRecord, health: Health | None = None) -> Agent:
    """The proto of a stored agent, output-only fields set (``active_tasks`` stays 0;
    ``health`` as given, else unset)."""
    agent = Agent(
        name=record.name,
        endpoint=record.endpoint,
        skills=record.skills,
        max_concurrency=record.max_concurrency,
        default_timeout_seconds=record.default_timeout_seconds,
        labels=record.labels,
        protocol=_PROTOCOL_TO_PB.get(record.protocol, Agent.Protocol.PROTOCOL_UNSPECIFIED),
        source=_SOURCE_TO_PB.get(record.source, Agent.Source.SOURCE_UNSPECIFIED),
        organization_id=record.organization_id,
    )
    if record.rate_period_seconds > 0:
        agent.rate_limit.requests_per_period = record.requests_per_period
        agent.rate_limit.tokens_per_period = record.tokens_per_period
        agent.rate_limit.period_seconds = record.rate_period_seconds
        agent.rate_limit.per_key = record.rate_per_key
    agent.create_time.FromDatetime(record.create_time)
    agent.update_time.FromDatetime(record.update_time)
    if record.card_read_at is not None:
        agent.card_time.FromDatetime(record.card_read_at)
    if health is not None:
        agent.health.state = _HEALTH_TO_PB[health.state]
        agent.health.since_time.FromDatetime(health.since)
        agent.health.message = health.message
    return agent


def agent_to_violations(agent: Agent, *, prefix: str = "agent") -> list[FieldViolation]:
    """Every problem of a RegisterAgent input, one violation per problem, with field
    paths under ``prefix`` (``agent.endpoint``, ``agent.skills[1]``, ``agent.labels.team``).
    Output-only fields are ignored."""
    problems = agent_problems(
        name=agent.name,
        endpoint=agent.endpoint,
        skills=list(agent.skills),
        max_concurrency=agent.max_concurrency,
        default_timeout_seconds=agent.default_timeout_seconds,
        labels=dict(agent.labels),
        requests_per_period=agent.rate_limit.requests_per_period,
        tokens_per_period=agent.rate_limit.tokens_per_period,
        rate_period_seconds=agent.rate_limit.period_seconds,
        protocol=_PROTOCOL_FROM_PB.get(agent.protocol, "podium_v1"),
    )
    violations = [
        FieldViolation(field=f"{prefix}.{path}", description=description)
        for path, description in problems
    ]
    if agent.protocol not in _PROTOCOL_FROM_PB:
        allowed = ", ".join(
            value.name for value in Agent.Protocol.DESCRIPTOR.values if value.number != 0
        )
        violations.append(
            FieldViolation(
                field=f"{prefix}.protocol",
                description=f"unknown value {agent.protocol}; expected one of {allowed}",
            )
        )
    return violations


class AgentService:
    """Use cases behind the agent RPCs, and the static agents of the configuration."""

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    """What one page may take (``sizes.response_budget``; the engine sets it)."""

    def __init__(
        self,
        repository: AgentsRepository,
        guard: EndpointGuard | None = None,
        cards: A2ACards | None = None,
        dispatcher: AgentDispatcher | None = None,
    ) -> None:
        self._repository = repository
        self._guard = guard if guard is not None else EndpointGuard()
        self._cards = cards if cards is not None else A2ACards(self._guard)
        self._dispatcher = dispatcher
        self._sync_task: asyncio.Task[None] | None = None
        if dispatcher is not None:
            dispatcher.health.on_serving = self.discover_lazy

    @property
    def repository(self) -> AgentsRepository:
        """The registry's repository (the scheduler reads agents through it)."""
        return self._repository

    async def register(self, organization_id: str, agent: Agent, *, lazy: bool = False) -> Agent:
        """Validate and store ``agent`` (insert, or update the registered agent of its
        name); output-only fields of the input are ignored. A ``podium_v1`` agent's
        card is read first (module doc) unless ``lazy``.

        Raises:
            InvalidArgument: one violation per problem (reason ``INVALID_AGENT``),
                contradictions with the agent's card included.
            FailedPrecondition: the agent does not answer GetAgentCard (reason
                ``AGENT_NOT_ANSWERING``), and ``lazy`` is not set.
            AlreadyExists: a static agent has that name (reason ``STATIC_AGENT``).
        """
        violations = agent_to_violations(agent)
        skills = list(agent.skills)
        if not violations:
            try:
                if is_card_url(agent.endpoint):
                    skills = await self._read_card(agent.endpoint, skills)
                else:
                    await self._guard.resolve(agent.endpoint)
            except (EndpointRefused, CardUnavailable) as exc:
                violations = [FieldViolation(field="agent.endpoint", description=str(exc))]
        protocol = _PROTOCOL_FROM_PB.get(agent.protocol, "podium_v1")
        card_read = False
        if not violations and protocol == "podium_v1":
            async with storage_errors():
                existing = await self._repository.get(organization_id, agent.name)
            if existing is not None and existing.source == "static":
                conflict = static_conflict(agent.name, "register")  # before calling the agent
                raise AlreadyExists(
                    str(conflict), reason="STATIC_AGENT", metadata={"name": conflict.name}
                )
            try:
                agent, violations = await self._discover(agent, lazy)
                skills = list(agent.skills)
                card_read = True
            except FailedPrecondition:
                if not lazy:
                    raise
        if violations:
            raise InvalidArgument(
                f"agent {agent.name!r} is invalid: {len(violations)} problem(s)",
                reason="INVALID_AGENT",
                violations=violations,
            )
        async with storage_errors():
            try:
                record = await self._repository.upsert(
                    organization_id,
                    agent.name,
                    endpoint=agent.endpoint,
                    skills=skills,
                    max_concurrency=agent.max_concurrency,
                    default_timeout_seconds=agent.default_timeout_seconds,
                    labels=dict(agent.labels),
                    protocol=protocol,
                    source="registered",
                    card_read=card_read,
                    **_rate_columns(agent.rate_limit),
                )
            except StaticAgentConflict as exc:
                raise AlreadyExists(
                    str(exc), reason="STATIC_AGENT", metadata={"name": exc.name}
                ) from exc
        return record_to_agent(record, self._health(record))

    async def _read_card(self, url: str, skills: builtins.list[str]) -> builtins.list[str]:
        """Read the card of the A2A agent at ``url`` (through the outbound guard), check
        that it lists an interface Podium calls and that its address is admitted, and
        keep it for the calls; the skills to store: ``skills``, or when empty the ids of
        the card's skills (those that are valid skill ids, at most ``MAX_SKILLS``).

        Raises:
            EndpointRefused: the URL, the interface's or an address is refused.
            CardUnavailable: the card cannot be read or lists no interface Podium calls.
        """
        card = await self._cards.fetch(url)
        binding = (await self._cards.remember(url, card)).binding
        if binding.grpc:
            await self._guard.resolve(binding.url)
        else:
            await self._guard.resolve_url(binding.url)
        if skills:
            return skills
        ids = list(dict.fromkeys(skill.id for skill in card.skills))
        return [skill for skill in ids if skill_id_problem(skill) is None][:MAX_SKILLS]

    async def _discover(
        self, agent: Agent, lazy: bool
    ) -> tuple[Agent, builtins.list[FieldViolation]]:
        """``agent`` with the values its card gives (module doc), and the contradictions;
        ``lazy`` waits less for the card (the caller stores the agent without it).

        Raises:
            FailedPrecondition: the agent does not answer (``AGENT_NOT_ANSWERING``).
        """
        if self._dispatcher is None:
            return agent, []
        timeout = STATIC_CARD_TIMEOUT_SECONDS if lazy else CARD_TIMEOUT_SECONDS
        try:
            card = await self._dispatcher.read_card(agent.endpoint, timeout=timeout)
        except (AgentCallError, EndpointRefused) as exc:
            code = exc.code if isinstance(exc, AgentCallError) else "AGENT_ENDPOINT_REFUSED"
            raise FailedPrecondition(
                f"agent {agent.name!r} does not answer GetAgentCard at {agent.endpoint}: {exc}; "
                "start it first, or register it with lazy=true (CLI --lazy) to read its card "
                "when it answers",
                reason="AGENT_NOT_ANSWERING",
                metadata={"name": agent.name, "endpoint": agent.endpoint, "code": code},
            ) from None
        values, problems = merge_card(
            card,
            skills=list(agent.skills),
            max_concurrency=agent.max_concurrency,
            default_timeout_seconds=agent.default_timeout_seconds,
        )
        merged = Agent()
        merged.CopyFrom(agent)
        del merged.skills[:]
        merged.skills.extend(values.skills)
        merged.max_concurrency = values.max_concurrency
        merged.default_timeout_seconds = values.default_timeout_seconds
        violations = [
            FieldViolation(field=f"agent.{path}", description=description)
            for path, description in problems
        ]
        return merged, violations

    def _health(self, record: AgentRecord) -> Health | None:
        """The health this replica knows of ``record`` (watching it from now on); None
        without a dispatcher. A2A agents are not watched: unknown."""
        if self._dispatcher is None:
            return None
        monitor = self._dispatcher.health
        if record.protocol != "podium_v1":
            return Health("unknown", record.update_time)  # A2A agents are not watched
        monitor.watch(record.endpoint)
        return monitor.health(record.endpoint)

    async def unavailable(self, organization_id: str, names: Sequence[str]) -> dict[str, Health]:
        """Of the agents ``names``, those this replica sees not serving, by name (no
        query while every watched agent serves)."""
        if self._dispatcher is None or not names:
            return {}
        down = self._dispatcher.health.not_serving
        if not down:
            return {}
        async with storage_errors():
            found = await self._repository.endpoints(organization_id, names)
        return {
            name: self._dispatcher.health.health(endpoint)
            for name, (endpoint, protocol) in found.items()
            if protocol == "podium_v1" and endpoint in down
        }

    async def discover_lazy(self, endpoint: str) -> None:
        """Read the card of the agents at ``endpoint`` whose card was not read yet (lazy
        registrations, static agents that did not answer at start) and store what it
        gives them; given values that contradict it are narrowed to it (logged)."""
        if self._dispatcher is None:
            return
        async with storage_errors():
            waiting = await self._repository.awaiting_card(endpoint)
        if not waiting:
            return
        try:
            card = await self._dispatcher.read_card(endpoint, timeout=CARD_TIMEOUT_SECONDS)
        except (AgentCallError, EndpointRefused) as exc:
            _log.warning(
                "agent card not read; it is read again when the agent serves again",
                extra={"endpoint": endpoint, "error": str(exc)},
            )
            return
        for record in waiting:
            values, _ = merge_card(
                card,
                skills=record.skills,
                max_concurrency=record.max_concurrency,
                default_timeout_seconds=record.default_timeout_seconds,
                narrow=True,
            )
            narrowed = (record.skills and values.skills != record.skills) or (
                record.max_concurrency and values.max_concurrency != record.max_concurrency
            )
            if narrowed:
                _log.warning(
                    "agent values given contradict its card: narrowed to it",
                    extra={
                        "agent": record.name,
                        "organization_id": record.organization_id,
                        "skills": list(values.skills),
                        "max_concurrency": values.max_concurrency,
                    },
                )
            async with storage_errors():
                await self._repository.set_card(
                    record,
                    skills=values.skills,
                    max_concurrency=values.max_concurrency,
                    default_timeout_seconds=values.default_timeout_seconds,
                )

    async def sync_health(self) -> None:
        """Watch the health of exactly the ``podium_v1`` endpoints of the table, and read
        the pending cards of those serving (a card read that failed when the agent
        became serving is tried again here)."""
        if self._dispatcher is None:
            return
        async with storage_errors():
            endpoints = await self._repository.watched_endpoints()
        monitor = self._dispatcher.health
        monitor.keep(endpoints)
        for endpoint, pending in endpoints.items():
            if pending and monitor.health(endpoint).state == "serving":
                await self.discover_lazy(endpoint)

    def start_health(self, interval: float = HEALTH_SYNC_SECONDS) -> None:
        """Start the loop of :meth:`sync_health` (every ``interval`` seconds)."""

        async def loop() -> None:
            while True:
                try:
                    await self.sync_health()
                except Exception:
                    _log.warning("reading the agents to watch failed", exc_info=True)
                await asyncio.sleep(interval)

        if self._sync_task is None:
            self._sync_task = asyncio.create_task(loop(), name="podium-agent-health-sync")

    async def stop_health(self) -> None:
        """Stop the loop of :meth:`start_health` (the watches stop with the dispatcher)."""
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def get(self, organization_id: str, name: str) -> Agent:
        """The agent called ``name``, with its health (GetAgent).

        Raises:
            InvalidArgument: ``name`` is empty.
            NotFound: there is none (reason ``AGENT_NOT_FOUND``).
        """
        if not name:
            raise InvalidArgument(
                "name is required",
                violations=[FieldViolation(field="name", description="an agent name is required")],
            )
        record = await self.get_record(organization_id, name)
        if record is None:
            raise _not_found(name)
        return record_to_agent(record, self._health(record))

    async def get_record(self, organization_id: str, name: str) -> AgentRecord | None:
        """The stored agent called ``name``, or None (for the step executor)."""
        async with storage_errors():
            return await self._repository.get(organization_id, name)

    async def list(
        self,
        organization_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        skill: str = "",
    ) -> tuple[builtins.list[Agent], str]:
        """A page of agents (registered and static) ordered by name, and the next page
        token ("" on the last page). ``skill`` keeps the agents offering it."""
        size = effective_page_size(page_size)
        filters = {"skill": skill}
        after = decode_token(page_token, filters)
        if after is not None and not isinstance(after, str):
            raise InvalidArgument(
                "page_token is not a token issued by this server",
                reason="INVALID_PAGE_TOKEN",
                violations=[FieldViolation(field="page_token", description="malformed page token")],
            )
        async with storage_errors():
            records = await self._repository.list(
                organization_id, after_name=after, limit=size + 1, skill=skill or None
            )
        more = len(records) > size
        records = records[:size]
        return bounded_name_page(
            [record_to_agent(record, self._health(record)) for record in records],
            [record.name for record in records],
            more,
            filters,
            self.max_response_bytes,
        )

    async def deregister(self, organization_id: str, name: str) -> None:
        """Remove the registered agent ``name``.

        Raises:
            InvalidArgument: ``name`` is empty.
            NotFound: there is no agent of that name (reason ``AGENT_NOT_FOUND``).
            FailedPrecondition: it is a static agent (reason ``STATIC_AGENT``).
        """
        if not name:
            raise InvalidArgument(
                "name is required",
                violations=[FieldViolation(field="name", description="an agent name is required")],
            )
        async with storage_errors():
            try:
                deleted = await self._repository.delete(organization_id, name)
            except StaticAgentConflict as exc:
                raise FailedPrecondition(
                    str(exc), reason="STATIC_AGENT", metadata={"name": exc.name}
                ) from exc
        if not deleted:
            raise _not_found(name)


async def check_static_agents(agents: Sequence[StaticAgent], guard: EndpointGuard) -> None:
    """Check the endpoints of static agents with the outbound guard.

    Raises:
        ConfigError: an endpoint is refused (the message names ``PODIUM_AGENTS``, the
            agent and the reason). A name that does not resolve is only logged.
    """
    for index, agent in enumerate(agents, start=1):
        try:
            if is_card_url(agent.endpoint):
                await guard.resolve_url(agent.endpoint)
            else:
                await guard.resolve(agent.endpoint)
        except EndpointRefused as exc:
            if not exc.transient:
                raise ConfigError(
                    f"PODIUM_AGENTS: entry {index} ({agent.name!r}): endpoint "
                    f"{agent.endpoint!r}: {exc}"
                ) from None
            _log.warning(
                "static agent endpoint does not resolve yet; calls will check it again",
                extra={"agent": agent.name, "error": str(exc)},
            )


async def discover_static_agents(
    agents: Sequence[StaticAgent], dispatcher: AgentDispatcher
) -> list[StaticAgent]:
    """``agents`` (from ``PODIUM_AGENTS``) with what the cards of the ``podium_v1`` ones
    that answer now give them (module doc), read through ``dispatcher``; the others as
    configured, their cards read when they serve.

    Raises:
        ConfigError: an entry contradicts its agent's card (the message names
            ``PODIUM_AGENTS``, the entry and the field).
    """

    async def one(index: int, agent: StaticAgent) -> StaticAgent:
        if agent.protocol != "podium_v1":
            return agent
        try:
            card = await dispatcher.read_card(agent.endpoint, timeout=STATIC_CARD_TIMEOUT_SECONDS)
        except (AgentCallError, EndpointRefused) as exc:
            _log.info(
                "static agent does not answer yet; its card is read when it serves",
                extra={"agent": agent.name, "error": str(exc)},
            )
            return agent
        values, problems = merge_card(
            card,
            skills=agent.skills,
            max_concurrency=agent.max_concurrency,
            default_timeout_seconds=agent.default_timeout_seconds,
        )
        if problems:
            path, description = problems[0]
            raise ConfigError(
                f"PODIUM_AGENTS: entry {index} ({agent.name!r}): {path}: {description}"
            )
        return dataclasses.replace(
            agent,
            skills=values.skills,
            max_concurrency=values.max_concurrency,
            default_timeout_seconds=values.default_timeout_seconds,
            card_read=True,
        )

    return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(agents, start=1))))


def _rate_columns(rate: agent_pb2.AgentRateLimit) -> dict[str, Any]:
    """The stored rate limit (all 0 when no count is set: no limit)."""
    if rate.requests_per_period <= 0 and rate.tokens_per_period <= 0:
        return {
            "requests_per_period": 0,
            "tokens_per_period": 0,
            "rate_period_seconds": 0.0,
            "rate_per_key": False,
        }
    return {
        "requests_per_period": rate.requests_per_period,
        "tokens_per_period": rate.tokens_per_period,
        "rate_period_seconds": rate.period_seconds,
        "rate_per_key": rate.per_key,
    }


def _not_found(name: str) -> NotFound:
    return NotFound(f"agent {name!r} not found", reason="AGENT_NOT_FOUND", metadata={"name": name})
