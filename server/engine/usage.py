"""Usage accounting and quotas: GetUsage, the usage and budget of a run (GetRun), and
the organization quotas StartRun checks.

Usage lives on the step attempts (``storage/usage.py``); budgets are enforced in SQL
(``storage/functions/65_budgets.sql``): here they are only shown. Quotas are settings
(``PODIUM_QUOTA_DAILY_TOKENS``, ...) applying to every organization: when an
organization's usage of the current UTC day or month has reached one, StartRun is
refused with RESOURCE_EXHAUSTED and a ``google.rpc.QuotaFailure``. Runs already running
are not stopped by a quota (their own budgets bound them).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from google.rpc.error_details_pb2 import QuotaFailure

from podium.orchestration.v1 import definition_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.config import Settings
from podium.server.engine.errors import FieldViolation, InvalidArgument, ResourceExhausted
from podium.server.engine.requests import timestamp_value
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.usage import UsageRepository, UsageTotals

__all__ = ["MAX_USAGE_ROWS", "UsageService"]

MAX_USAGE_ROWS = 10_000
"""Rows GetUsage returns at most."""
_MAX_RANGE = timedelta(days=366)
_DEFAULT_RANGE = timedelta(days=30)
_DIMENSIONS = {
    pb.GetUsageRequest.DIMENSION_DAY: "day",
    pb.GetUsageRequest.DIMENSION_DEFINITION: "definition",
    pb.GetUsageRequest.DIMENSION_AGENT: "agent",
    pb.GetUsageRequest.DIMENSION_MODEL: "model",
}
_ON_EXCEED = {
    "pause": definition_pb2.BudgetPolicy.ON_EXCEED_PAUSE,
    "fail": definition_pb2.BudgetPolicy.ON_EXCEED_FAIL,
}
_MAX_FILTER = 256


def _totals(source: UsageTotals, target: run_pb2.RunUsage) -> None:
    target.input_tokens = source.input_tokens
    target.output_tokens = source.output_tokens
    target.cost_usd = source.cost_usd


class UsageService:
    """GetUsage, run usage for GetRun, and quota checks for StartRun."""

    def __init__(self, repository: UsageRepository, settings: Settings) -> None:
        self._repository = repository
        self._settings = settings

    async def fill_run(self, organization_id: str, run: run_pb2.Run) -> None:
        """Set ``total_usage``, ``saved_usage`` and ``budget`` of a run read by GetRun."""
        async with storage_errors():
            found = await self._repository.run_usage(organization_id, uuid.UUID(run.id))
        _totals(found.total, run.total_usage)
        _totals(found.saved, run.saved_usage)
        budget = found.budget
        if budget is not None:
            run.budget.budget_run_id = str(budget.budget_run_id)
            run.budget.max_tokens = budget.max_tokens
            run.budget.max_cost_usd = budget.max_cost_usd
            run.budget.on_exceed = _ON_EXCEED.get(
                budget.on_exceed, definition_pb2.BudgetPolicy.ON_EXCEED_UNSPECIFIED
            )
            run.budget.used_tokens = budget.used_tokens
            run.budget.used_cost_usd = budget.used_cost_usd
            run.budget.exceeded = budget.exceeded
            if budget.approval_id is not None:
                run.budget.approval_id = str(budget.approval_id)

    async def get_usage(
        self, organization_id: str, request: pb.GetUsageRequest
    ) -> pb.GetUsageResponse:
        """The organization's usage, filtered and grouped (see GetUsageRequest)."""
        violations: list[FieldViolation] = []
        end = timestamp_value(request, "end_time", violations)
        start = timestamp_value(request, "start_time", violations)
        end = end or datetime.now(UTC)
        start = start or end - _DEFAULT_RANGE
        if not violations and start >= end:
            violations.append(
                FieldViolation(field="start_time", description="must be before end_time")
            )
        elif not violations and end - start > _MAX_RANGE:
            violations.append(
                FieldViolation(field="start_time", description="the range is at most 366 days")
            )
        for name in ("definition_name", "agent", "model"):
            if len(getattr(request, name)) > _MAX_FILTER:
                violations.append(
                    FieldViolation(field=name, description=f"at most {_MAX_FILTER} characters")
                )
        group_by: set[str] = set()
        for i, dimension in enumerate(request.group_by):
            dimension_name = _DIMENSIONS.get(dimension)
            if dimension_name is None or dimension_name in group_by:
                violations.append(
                    FieldViolation(
                        field=f"group_by[{i}]",
                        description="unknown dimension"
                        if dimension_name is None
                        else f"{dimension_name} is given twice",
                    )
                )
            else:
                group_by.add(dimension_name)
        if violations:
            raise InvalidArgument("GetUsage request is invalid", violations=violations)
        async with storage_errors():
            rows = await self._repository.report(
                organization_id,
                start,
                end,
                definition_name=request.definition_name,
                agent=request.agent,
                model=request.model,
                group_by=frozenset(group_by),
                limit=MAX_USAGE_ROWS,
            )
        out = pb.GetUsageResponse()
        for row in rows:
            item = out.rows.add(
                day=row.day,
                definition_name=row.definition_name,
                agent=row.agent,
                model=row.model,
                step_attempts=row.step_attempts,
                cache_hits=row.cache_hits,
            )
            _totals(row.usage, item.usage)
            _totals(row.saved, item.saved)
        return out

    async def check_quota(self, organization_id: str) -> None:
        """Refuse a new run (RESOURCE_EXHAUSTED + QuotaFailure) when the organization's
        usage of the current UTC day or month has reached a quota. No query without
        quotas."""
        s = self._settings
        limits = (
            ("daily tokens", "PODIUM_QUOTA_DAILY_TOKENS", s.quota_daily_tokens),
            ("monthly tokens", "PODIUM_QUOTA_MONTHLY_TOKENS", s.quota_monthly_tokens),
            ("daily cost (USD)", "PODIUM_QUOTA_DAILY_COST_USD", s.quota_daily_cost_usd),
            ("monthly cost (USD)", "PODIUM_QUOTA_MONTHLY_COST_USD", s.quota_monthly_cost_usd),
        )
        if not any(limit for _, _, limit in limits):
            return
        async with storage_errors():
            used = await self._repository.quota_usage(organization_id)
        values = (used.day_tokens, used.month_tokens, used.day_cost_usd, used.month_cost_usd)
        reached = [
            QuotaFailure.Violation(
                subject=f"organization:{organization_id}",
                description=f"{what} quota {setting}={limit:g} reached (used {value:g})",
            )
            for (what, setting, limit), value in zip(limits, values, strict=True)
            if limit and value >= limit
        ]
        if reached:
            raise ResourceExhausted(
                f"organization {organization_id} reached its usage quota: "
                + "; ".join(v.description for v in reached),
                reason="QUOTA_EXCEEDED",
                metadata={"organization_id": organization_id},
                quota_violations=reached,
            )
