"""Routing policies repository (table ``routing_policies``): one row per organization
that set its policy (``engine/policies.py`` says what the lists mean)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .database import Database
from .queries import QUERIES

__all__ = ["PolicyRecord", "PolicyRepository"]


@dataclass(frozen=True)
class PolicyRecord:
    """An organization's routing policy as stored; ``revision`` 0 means never set."""

    allowed_agents: tuple[str, ...] = ()
    denied_agents: tuple[str, ...] = ()
    allowed_skills: tuple[str, ...] = ()
    denied_skills: tuple[str, ...] = ()
    approval_agents: tuple[str, ...] = ()
    revision: int = 0
    updated_at: datetime | None = None


def _record(row: asyncpg.Record) -> PolicyRecord:
    return PolicyRecord(
        allowed_agents=tuple(row["allowed_agents"]),
        denied_agents=tuple(row["denied_agents"]),
        allowed_skills=tuple(row["allowed_skills"]),
        denied_skills=tuple(row["denied_skills"]),
        approval_agents=tuple(row["approval_agents"]),
        revision=int(row["revision"]),
        updated_at=row["updated_at"],
    )


class PolicyRepository:
    """Reads and replaces routing policies."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, organization_id: str) -> PolicyRecord:
        """The organization's policy; an empty one (revision 0) when never set."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["get_routing_policy"], organization_id)
        return PolicyRecord() if row is None else _record(row)

    async def put(
        self, organization_id: str, lists: dict[str, Sequence[str] | None]
    ) -> PolicyRecord:
        """Replace the lists given (a None or missing list is kept); returns the policy."""
        names = ("allowed_agents", "denied_agents", "allowed_skills", "denied_skills")
        args = [lists.get(name) for name in (*names, "approval_agents")]
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                QUERIES["put_routing_policy"],
                organization_id,
                *[None if a is None else list(a) for a in args],
            )
        assert row is not None
        return _record(row)
