"""Agents repository: the agent registry (table ``agents``).

An agent is either *registered* (RegisterAgent) or *static* (declared in the server
configuration of a replica with :meth:`AgentsRepository.declare_static`, and kept while
a live replica, or a live replica of the declaring group, declares it: table
``replicas``, ``functions/90_static_agents.sql``). Configuration wins: a registered
agent never replaces a static one and cannot be used to delete one, while a static
declaration takes over a registered agent of its name.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

import asyncpg

from .database import Connection, Database
from .errors import Conflict
from .queries import QUERIES

__all__ = [
    "AgentRecord",
    "AgentSource",
    "AgentsRepository",
    "ReplicaRenewal",
    "StaticAgentConflict",
    "StaticAgentFields",
    "StaticAgentsSync",
    "static_conflict",
]

AgentSource = Literal["registered", "static"]
"""Where an entry comes from (column ``agents.source``)."""


class StaticAgentConflict(Conflict):
    """The agent is declared in the server configuration: a registered agent cannot
    replace it, and it cannot be deregistered.

    Attributes:
        name: the agent's name.
    """

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class AgentRecord:
    """One agent, as stored.

    Attributes:
        skills: skill ids, in registration order.
        max_concurrency: most tasks sent at once; 0 means unlimited.
        default_timeout_seconds: step timeout for this agent; 0 uses the server default.
        protocol: ``podium_v1`` or ``a2a``.
        source: ``registered`` (RegisterAgent) or ``static`` (server configuration).
        requests_per_period, tokens_per_period, rate_period_seconds: the rate limit
            (functions/45_rate_limits.sql); all 0 means none.
    """

    organization_id: str
    name: str
    endpoint: str
    skills: tuple[str, ...]
    max_concurrency: int
    default_timeout_seconds: float
    labels: dict[str, str]
    protocol: str
    source: AgentSource
    create_time: datetime
    update_time: datetime
    requests_per_period: int = 0
    tokens_per_period: int = 0
    rate_period_seconds: float = 0.0
    rate_per_key: bool = False
    card_read_at: datetime | None = None
    """When the agent's card was read (None: not yet, or an A2A agent)."""


@dataclass(frozen=True)
class StaticAgentsSync:
    """What :meth:`AgentsRepository.declare_static` changed.

    Attributes:
        agents: the declared agents as stored now (the newest declaration of each
            name), ordered by name.
        removed: ``(organization, name)`` of static agents deleted because no live
            replica declares them any more.
        took_over: names of registered agents replaced by a static declaration.
    """

    agents: list[AgentRecord]
    removed: list[tuple[str, str]]
    took_over: list[str]


@dataclass(frozen=True)
class ReplicaRenewal:
    """What :meth:`AgentsRepository.renew_replica` did.

    Attributes:
        renewed: False when the replica's row had lapsed (expired or pruned): it must
            declare its agents again.
        removed: ``(organization, name)`` of static agents deleted because only expired
            replicas declared them.
    """

    renewed: bool
    removed: list[tuple[str, str]]


class StaticAgentFields(Protocol):
    """What :meth:`AgentsRepository.declare_static` reads from each agent
    (``podium.server.agents.static.StaticAgent`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def skills(self) -> Sequence[str]: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def default_timeout_seconds(self) -> float: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def protocol(self) -> str: ...
    @property
    def requests_per_period(self) -> int: ...
    @property
    def tokens_per_period(self) -> int: ...
    @property
    def rate_period_seconds(self) -> float: ...
    @property
    def rate_per_key(self) -> bool: ...
    @property
    def card_read(self) -> bool: ...


def _record(row: asyncpg.Record) -> AgentRecord:
    return AgentRecord(
        organization_id=row["organization_id"],
        name=row["name"],
        endpoint=row["endpoint"],
        skills=tuple(row["skills"]),
        max_concurrency=row["max_concurrency"],
        default_timeout_seconds=row["default_timeout_seconds"],
        labels=row["labels"],
        protocol=row["protocol"],
        source=row["source"],
        create_time=row["created_at"],
        update_time=row["updated_at"],
        requests_per_period=row["requests_per_period"],
        tokens_per_period=row["tokens_per_period"],
        rate_period_seconds=row["rate_period_seconds"],
        rate_per_key=row["rate_per_key"],
        card_read_at=row["card_read_at"],
    )


@dataclass(frozen=True)
class _Fields:
    name: str
    endpoint: str
    skills: Sequence[str]
    max_concurrency: int
    default_timeout_seconds: float
    labels: Mapping[str, str]
    protocol: str
    requests_per_period: int = 0
    tokens_per_period: int = 0
    rate_period_seconds: float = 0.0
    rate_per_key: bool = False
    card_read: bool = False


class AgentsRepository:
    """Register, read, list and remove agents. Errors are :mod:`.errors` exceptions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(
        self,
        organization_id: str,
        name: str,
        *,
        endpoint: str,
        skills: Sequence[str] = (),
        max_concurrency: int = 0,
        default_timeout_seconds: float = 0.0,
        labels: Mapping[str, str] | None = None,
        protocol: str = "podium_v1",
        source: AgentSource = "registered",
        requests_per_period: int = 0,
        tokens_per_period: int = 0,
        rate_period_seconds: float = 0.0,
        rate_per_key: bool = False,
        card_read: bool = False,
    ) -> AgentRecord:
        """Insert the agent, or update the one of that name (keeping its creation time
        and bumping its update time). ``card_read``: the values come from the agent's
        card (``card_read_at`` is set to now), else it is NULL.

        Raises:
            StaticAgentConflict: a registered upsert hit a static agent of that name.
            StorageError: e.g. the organization does not exist.
        """
        fields = _Fields(
            name,
            endpoint,
            skills,
            max_concurrency,
            default_timeout_seconds,
            labels or {},
            protocol,
            requests_per_period,
            tokens_per_period,
            rate_period_seconds,
            rate_per_key,
            card_read,
        )
        async with self._db.connection() as conn:
            row = await _upsert(conn, organization_id, fields, source)
        if row is None:
            raise static_conflict(name, "register")
        return _record(row)

    async def get(self, organization_id: str, name: str) -> AgentRecord | None:
        """The agent called ``name``; None when there is none."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["get_agent"], organization_id, name)
        return None if row is None else _record(row)

    async def list(
        self,
        organization_id: str,
        *,
        after_name: str | None = None,
        limit: int,
        skill: str | None = None,
    ) -> builtins.list[AgentRecord]:
        """Agents ordered by name, registered and static alike.

        Keyset paging: pass the last name of a page as ``after_name`` to get the next
        page. ``skill`` keeps the agents offering that skill.
        """
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_agents"], organization_id, after_name, skill or None, limit
            )
        return [_record(row) for row in rows]

    async def watched_endpoints(self) -> dict[str, bool]:
        """The endpoints of every ``podium_v1`` agent, of every organization, and whether
        an agent there waits for its card."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["watched_agent_endpoints"])
        return {row["endpoint"]: row["pending"] for row in rows}

    async def endpoints(
        self, organization_id: str, names: Sequence[str]
    ) -> dict[str, tuple[str, str]]:
        """(endpoint, protocol) of the named agents that exist, by name."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["agent_endpoints"], organization_id, list(names))
        return {row["name"]: (row["endpoint"], row["protocol"]) for row in rows}

    async def awaiting_card(self, endpoint: str) -> builtins.list[AgentRecord]:
        """The ``podium_v1`` agents at ``endpoint`` whose card was not read yet, of every
        organization."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["agents_awaiting_card"], endpoint)
        return [_record(row) for row in rows]

    async def set_card(
        self,
        record: AgentRecord,
        *,
        skills: Sequence[str],
        max_concurrency: int,
        default_timeout_seconds: float,
    ) -> bool:
        """Store the values a card gave ``record`` (read with :meth:`awaiting_card`);
        False when another replica did it first or the agent changed since."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                QUERIES["set_agent_card"],
                record.organization_id,
                record.name,
                record.update_time,
                list(skills),
                max_concurrency,
                float(default_timeout_seconds),
            )
        return row is not None

    async def step_rate_waits(
        self,
        organization_id: str,
        run_id: uuid.UUID,
        steps: Sequence[tuple[str, str | None, str | None]],
        concurrency_key: str | None = None,
    ) -> dict[str, tuple[str, datetime | None]]:
        """Of queued ``(step id, agent, skill)`` of run ``run_id``, those held by rate
        limits now: every agent that could run it (for a skill, every one the routing
        policies allow) is at its limit. By step id: (the agent whose window frees first,
        when)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["step_rate_waits"],
                organization_id,
                [step[0] for step in steps],
                [step[1] for step in steps],
                [step[2] for step in steps],
                concurrency_key or "",
                run_id,
            )
        return {row["step_id"]: (row["agent"], row["free_at"]) for row in rows}

    async def delete(self, organization_id: str, name: str) -> bool:
        """Delete the registered agent ``name``; False when there is none.

        Raises:
            StaticAgentConflict: ``name`` is a static agent (it is kept).
        """
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["delete_registered_agent"], organization_id, name)
        assert row is not None  # a SELECT of two scalar subqueries: always one row
        if not row["deleted"] and row["source"] == "static":
            raise static_conflict(name, "deregister")
        return bool(row["deleted"])

    async def declare_static(
        self,
        organization_id: str,
        agents: Sequence[StaticAgentFields],
        *,
        replica: str,
        group: str = "",
        lease_seconds: float,
        rejoin: bool = False,
    ) -> StaticAgentsSync:
        """Hold ``replica``'s row for ``lease_seconds`` and declare ``agents`` in the
        organization as its own, or as its ``group``'s (replacing the group's previous
        set), in one transaction (``podium_declare_static_agents``).

        Each agent row follows the newest live declaration of its name (taking over a
        registered agent of that name); static agents no live replica declares any more
        are deleted. With ``rejoin`` (the row had lapsed), a group whose declarations
        are still there keeps them. Concurrent calls (replicas starting together) are
        serialized.
        """
        specs = [_spec(agent) for agent in sorted(agents, key=lambda agent: agent.name)]
        names = [spec["name"] for spec in specs]
        async with self._db.transaction() as conn:
            changes = await conn.fetch(
                QUERIES["declare_static_agents"],
                replica,
                group,
                organization_id,
                float(lease_seconds),
                specs,
                rejoin,
            )
            rows = await conn.fetch(QUERIES["get_agents_named"], organization_id, names)
        return StaticAgentsSync(
            agents=[_record(row) for row in rows],
            removed=_removed(changes),
            took_over=[row["agent_name"] for row in changes if row["agent_change"] == "took_over"],
        )

    async def renew_replica(self, replica: str, lease_seconds: float) -> ReplicaRenewal:
        """Extend ``replica``'s row by ``lease_seconds`` while it is live, then remove the
        static agents only expired replicas declared."""
        async with self._db.transaction() as conn:
            renewed = await conn.fetchval(QUERIES["renew_replica"], replica, float(lease_seconds))
            changes = await conn.fetch(QUERIES["prune_static_agents"])
        return ReplicaRenewal(renewed=bool(renewed), removed=_removed(changes))

    async def withdraw_replica(self, replica: str) -> builtins.list[tuple[str, str]]:
        """Delete ``replica``'s row (it stops) and the static agents no live replica
        declares any more; returns those as ``(organization, name)``."""
        async with self._db.transaction() as conn:
            changes = await conn.fetch(QUERIES["withdraw_replica"], replica)
        return _removed(changes)


def _spec(agent: StaticAgentFields) -> dict[str, object]:
    """A declaration's ``spec`` (what ``podium_sync_static_agent`` reads)."""
    return {
        "name": agent.name,
        "endpoint": agent.endpoint,
        "skills": list(agent.skills),
        "max_concurrency": agent.max_concurrency,
        "default_timeout_seconds": float(agent.default_timeout_seconds),
        "labels": dict(agent.labels),
        "protocol": agent.protocol,
        "requests_per_period": agent.requests_per_period,
        "tokens_per_period": agent.tokens_per_period,
        "rate_period_seconds": float(agent.rate_period_seconds),
        "rate_per_key": agent.rate_per_key,
        "card_read": agent.card_read,
    }


def _removed(changes: Sequence[asyncpg.Record]) -> builtins.list[tuple[str, str]]:
    return [
        (row["agent_organization"], row["agent_name"])
        for row in changes
        if row["agent_change"] == "removed"
    ]


async def _upsert(
    conn: Connection,
    organization_id: str,
    fields: _Fields,
    source: AgentSource,
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        QUERIES["upsert_agent"],
        organization_id,
        fields.name,
        fields.endpoint,
        list(fields.skills),
        fields.max_concurrency,
        float(fields.default_timeout_seconds),
        dict(fields.labels),
        fields.protocol,
        source,
        fields.requests_per_period,
        fields.tokens_per_period,
        float(fields.rate_period_seconds),
        fields.rate_per_key,
        datetime.now(UTC) if fields.card_read else None,
    )


def static_conflict(name: str, action: Literal["register", "deregister"]) -> StaticAgentConflict:
    """The conflict of registering or deregistering the static agent ``name``."""
    if action == "register":
        message = (
            f"agent {name!r} is declared in the server configuration (PODIUM_AGENTS); "
            "a registered agent cannot replace it: choose another name"
        )
    else:
        message = (
            f"agent {name!r} is declared in the server configuration (PODIUM_AGENTS) and "
            "cannot be deregistered: remove it from the configuration instead"
        )
    return StaticAgentConflict(message, name=name)
