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
resolve yet is only logged: calls check it again; a static agent's card is read by its
first call).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Sequence
from typing import Any

from podium.orchestration.v1 import agent_pb2
from podium.server.agents.a2a_http import A2ACards, CardUnavailable, is_card_url
from podium.server.agents.endpoints import EndpointGuard, EndpointRefused
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
from podium.server.storage.agents import AgentRecord, AgentsRepository, StaticAgentConflict

__all__ = ["AgentService", "agent_to_violations", "check_static_agents", "record_to_agent"]

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


def record_to_agent(record: AgentRecord) -> Agent:
    """The proto of a stored agent, output-only fields set (``active_tasks`` stays 0)."""
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
    ) -> None:
        self._repository = repository
        self._guard = guard if guard is not None else EndpointGuard()
        self._cards = cards if cards is not None else A2ACards(self._guard)

    @property
    def repository(self) -> AgentsRepository:
        """The registry's repository (the scheduler reads agents through it)."""
        return self._repository

    async def register(self, organization_id: str, agent: Agent) -> Agent:
        """Validate and store ``agent`` (insert, or update the registered agent of its
        name); output-only fields of the input are ignored.

        Raises:
            InvalidArgument: one violation per problem (reason ``INVALID_AGENT``).
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
                    protocol=_PROTOCOL_FROM_PB[agent.protocol],
                    source="registered",
                    **_rate_columns(agent.rate_limit),
                )
            except StaticAgentConflict as exc:
                raise AlreadyExists(
                    str(exc), reason="STATIC_AGENT", metadata={"name": exc.name}
                ) from exc
        return record_to_agent(record)

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

    async def get(self, organization_id: str, name: str) -> Agent:
        """The agent called ``name``.

        Raises:
            NotFound: there is none (reason ``AGENT_NOT_FOUND``).
        """
        record = await self.get_record(organization_id, name)
        if record is None:
            raise _not_found(name)
        return record_to_agent(record)

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
            [record_to_agent(record) for record in records],
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
