"""StartRun's delayed start (``start_time``): its checks and when it applies.

A delayed run is created at once in CREATED with a delayed-start row; the schedule
loop of any replica starts it when the database's clock reaches ``start_time``
(``podium_start_delayed_runs``), so the start survives restarts.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.engine.errors import FieldViolation
from podium.server.engine.requests import timestamp_value

__all__ = ["delayed_start", "start_time_violations"]

# Timestamps beyond this are refused (a typo, not a plan): about 10 years.
MAX_DELAY_SECONDS = 10 * 366 * 86400


def start_time_violations(request: pb.StartRunRequest) -> list[FieldViolation]:
    """``start_time`` without ``start``, or out of range, as field violations."""
    if not request.HasField("start_time"):
        return []
    found = []
    if not request.start:
        found.append(
            FieldViolation(
                field="start_time",
                description="a delayed start needs `start` true (start=false creates the run "
                "without starting it)",
            )
        )
    start_at = timestamp_value(request, "start_time", found, after_epoch=True)
    if start_at is not None and start_at.timestamp() - time.time() > MAX_DELAY_SECONDS:
        found.append(
            FieldViolation(field="start_time", description="at most 10 years in the future")
        )
    return found


def delayed_start(request: pb.StartRunRequest) -> datetime | None:
    """When a validated request's run starts, None to start (or not) at once: a
    ``start_time`` in the past starts at once."""
    if not request.HasField("start_time") or not request.start:
        return None
    start_at = request.start_time.ToDatetime(tzinfo=UTC)
    if start_at <= datetime.now(UTC):
        return None
    return start_at
