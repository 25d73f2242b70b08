"""Usage repository: model usage per run (with child runs), per organization, and the
state of run budgets.

Usage is recorded on each attempt (``step_attempts``: tokens, cost, model, and for a
cache hit the usage it saved) by the completion that already writes the attempt row
(``functions/50_complete.sql``), and on the run row (its own usage). Totals over an
organization are sums over attempts (``usage.sql``), so they are exact across replicas
with no shared counter row for concurrent completions to contend on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from .database import Database
from .queries import QUERIES

__all__ = [
    "QuotaUsage",
    "RunBudgetRow",
    "RunUsageRow",
    "UsageRepository",
    "UsageRow",
    "UsageTotals",
]


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Tokens and cost."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class RunBudgetRow:
    """The budget a run draws on (``podium_budget_state``)."""

    budget_run_id: uuid.UUID
    max_tokens: int
    max_cost_usd: float
    on_exceed: str
    used_tokens: int
    used_cost_usd: float
    exceeded: bool
    approval_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class RunUsageRow:
    """A run's usage including its child runs, what its cache hits saved, its budget."""

    total: UsageTotals
    saved: UsageTotals
    budget: RunBudgetRow | None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of GetUsage."""

    day: str
    definition_name: str
    agent: str
    model: str
    usage: UsageTotals
    step_attempts: int
    cache_hits: int
    saved: UsageTotals


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """An organization's usage in the current UTC day and month."""

    day_tokens: int
    day_cost_usd: float
    month_tokens: int
    month_cost_usd: float


class UsageRepository:
    """SQL access for usage and budgets (``usage.sql``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def run_usage(self, organization_id: str, run_id: uuid.UUID) -> RunUsageRow:
        """The usage of ``run_id`` and its child runs, and its budget."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["run_usage"], organization_id, run_id)
        assert row is not None  # an aggregate always returns its row
        budget = None
        if row["budget_run_id"] is not None and row["max_tokens"] is not None:
            budget = RunBudgetRow(
                budget_run_id=row["budget_run_id"],
                max_tokens=row["max_tokens"],
                max_cost_usd=row["max_cost_usd"],
                on_exceed=row["on_exceed"],
                used_tokens=row["used_tokens"],
                used_cost_usd=row["used_cost_usd"],
                exceeded=row["exceeded"],
                approval_id=row["approval_id"],
            )
        return RunUsageRow(
            UsageTotals(row["input_tokens"], row["output_tokens"], row["cost_usd"]),
            UsageTotals(
                row["saved_input_tokens"], row["saved_output_tokens"], row["saved_cost_usd"]
            ),
            budget,
        )

    async def report(
        self,
        organization_id: str,
        start: datetime,
        end: datetime,
        *,
        definition_name: str,
        agent: str,
        model: str,
        group_by: frozenset[str],
        limit: int,
    ) -> list[UsageRow]:
        """Usage of the organization's agent attempts started in [start, end), filtered
        ('' = any) and grouped by ``group_by`` (day, definition, agent, model)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["usage_report"],
                organization_id,
                start,
                end,
                definition_name,
                agent,
                model,
                "day" in group_by,
                "definition" in group_by,
                "agent" in group_by,
                "model" in group_by,
                limit,
            )
        return [
            UsageRow(
                day=r["day"],
                definition_name=r["definition_name"],
                agent=r["agent"],
                model=r["model"],
                usage=UsageTotals(r["input_tokens"], r["output_tokens"], r["cost_usd"]),
                step_attempts=r["step_attempts"],
                cache_hits=r["cache_hits"],
                saved=UsageTotals(
                    r["saved_input_tokens"], r["saved_output_tokens"], r["saved_cost_usd"]
                ),
            )
            for r in rows
        ]

    async def quota_usage(self, organization_id: str) -> QuotaUsage:
        """The organization's usage in the current UTC day and month."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["quota_usage"], organization_id)
        assert row is not None
        return QuotaUsage(
            row["day_tokens"], row["day_cost_usd"], row["month_tokens"], row["month_cost_usd"]
        )
