"""StartRun's delayed start (``start_time``): its checks and when it applies.

A delayed run is created at once in CREATED with a delayed-start row; the schedule
loop of any replica starts it when the database's clock reaches ``start_time``
(``podium_start_delayed_runs``), so the start survives restarts.
"""

from __future__ import annotations

from datetime import UTC, datetime

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.engine.errors import FieldViolation

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
    ts = request.start_time
    if not 0 <= ts.nanos < 1_000_000_000 or ts.seconds < 0:
        found.append(FieldViolation(field="start_time", description="not a valid timestamp"))
    elif ts.seconds - datetime.now(UTC).timestamp() > MAX_DELAY_SECONDS:
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
