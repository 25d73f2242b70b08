"""Approvals repository: human decisions steps wait on (checkpoints, failure reviews).

The transitions themselves are SQL functions (``functions/60_approvals.sql``):
deciding an approval moves its step on (queued, succeeded, skipped or failed) in the same
transaction, with its events.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .database import Database
from .queries import QUERIES

__all__ = ["ApprovalRow", "ApprovalsRepository"]


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """A stored approval (table ``human_approvals``)."""

    id: uuid.UUID
    organization_id: str
    run_id: uuid.UUID
    step_id: str
    kind: str
    state: str
    prompt: str
    subject: Any
    approvers: list[str]
    expires_at: datetime | None
    on_expiry: str | None
    on_reject: str | None
    decision: str | None
    actor: str | None
    comment: str | None
    request_id: str | None
    conversation_id: uuid.UUID | None
    created_at: datetime
    decided_at: datetime | None


def _approval(row: asyncpg.Record) -> ApprovalRow:
    values = dict(row)
    values["approvers"] = list(values["approvers"])
    return ApprovalRow(**values)


class ApprovalsRepository:
    """SQL access for ``human_approvals``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def decide(
        self,
        organization_id: str,
        approval_id: uuid.UUID,
        *,
        decision: str,
        actor: str,
        comment: str,
        request_id: str | None,
        input: Mapping[str, Any] | None,
        budget_max_tokens: int | None = None,
        budget_max_cost_usd: float | None = None,
    ) -> str:
        """Decide a pending approval; returns the status of ``podium_decide_approval``
        (``ok``, ``unchanged``, ``not_found``, ``already_<state>``, ``invalid_decision``,
        ``forbidden``, ``budget_exceeded``). ``budget_max_*``: the new limits of a
        budget approval (None keeps a limit)."""
        async with self._db.connection() as conn:
            status: str = await conn.fetchval(
                QUERIES["decide_approval"],
                organization_id,
                approval_id,
                decision,
                actor,
                comment,
                request_id,
                dict(input) if input else None,
                budget_max_tokens,
                budget_max_cost_usd,
            )
        return status

    async def run_end(
        self, run_id: uuid.UUID
    ) -> tuple[str, datetime | None, datetime | None] | None:
        """The (state, started_at, ended_at) of a run, or None."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["approval_run_end"], run_id)
        return None if row is None else (row["state"], row["started_at"], row["ended_at"])

    async def expire(self, limit: int = 100) -> int:
        """Apply the default action of up to ``limit`` expired approvals, one per
        transaction; returns how many.

        One at a time: an expiry that fails a run cancels its child runs, which are
        younger than runs later in a batch, so a multi-run transaction could lock runs
        out of the (created_at, id) order every other transaction follows. Expiries are
        rare; a round trip each costs nothing that matters.
        """
        done = 0
        async with self._db.connection() as conn:
            while done < limit:
                count: int = await conn.fetchval(QUERIES["expire_approvals"], 1)
                if not count:
                    break
                done += count
        return done

    async def get(self, organization_id: str, approval_id: uuid.UUID) -> ApprovalRow | None:
        """The approval, or None."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["get_approval"], organization_id, approval_id)
        return None if row is None else _approval(row)

    async def list(
        self,
        organization_id: str,
        *,
        states: Sequence[str],
        run_id: uuid.UUID | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[ApprovalRow]:
        """Approvals oldest first, filtered, after the keyset position ``after``."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_approvals"],
                organization_id,
                list(states),
                run_id,
                after[0] if after else None,
                after[1] if after else None,
                limit,
            )
        return [_approval(r) for r in rows]
