"""The per-organization StartRun rate limit (``PODIUM_START_RUN_RATE``): at most N
StartRun calls per organization in each fixed window, counted in the database so the
limit holds across replicas. A call past it is RESOURCE_EXHAUSTED (reason
``START_RATE_LIMITED``) with ``google.rpc.QuotaFailure`` and ``google.rpc.RetryInfo``
saying when the window ends; refused calls count too, so a client hammering the limit
does not get in earlier than one that waits."""

from __future__ import annotations

from google.rpc.error_details_pb2 import QuotaFailure

from podium.server.engine.errors import ResourceExhausted
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.start_rate import StartRateRepository

__all__ = ["StartRateLimiter"]


class StartRateLimiter:
    """``limit`` StartRun calls per organization per ``window_seconds``."""

    def __init__(self, repository: StartRateRepository, limit: int, window_seconds: float) -> None:
        self._repository = repository
        self.limit = limit
        self.window_seconds = window_seconds

    async def check(self, organization_id: str) -> None:
        """Count this call; raise ResourceExhausted past the limit."""
        async with storage_errors():
            started, retry_after = await self._repository.take(organization_id, self.window_seconds)
        if started <= self.limit:
            return
        description = (
            f"at most {self.limit} StartRun calls per {self.window_seconds:g} s "
            f"(PODIUM_START_RUN_RATE); the window ends in {retry_after:.1f} s"
        )
        raise ResourceExhausted(
            f"organization {organization_id} starts runs too fast: {description}",
            reason="START_RATE_LIMITED",
            metadata={"organization_id": organization_id},
            quota_violations=[
                QuotaFailure.Violation(
                    subject=f"organization:{organization_id}", description=description
                )
            ],
            retry_after_seconds=retry_after,
        )
