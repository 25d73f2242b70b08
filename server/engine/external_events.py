"""SendEvent: external events for wait_for_event steps (``engine/timers.py``).

The request is checked here; the storage function keeps the event for the retention
window and delivers it to every parked step of the organization waiting for its name
and key, exactly once each and on whichever replica answers (``podium_send_event``)."""

from __future__ import annotations

import re

from google.protobuf import json_format

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.engine.errors import FieldViolation, InvalidArgument
from podium.server.engine.requests import struct_violations
from podium.server.engine.triggers import EventTriggers
from podium.server.storage.external_events import ExternalEventsRepository
from podium.server.telemetry.metrics import Metrics

__all__ = ["EVENT_NAME_PATTERN", "MAX_EVENT_KEY", "ExternalEventService"]

EVENT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
"""Event names, in SendEvent and in a wait_for_event step."""
MAX_EVENT_KEY = 512
MAX_EVENT_ID = 128
MAX_PAYLOAD_BYTES = 256 * 1024


def send_event_violations(request: pb.SendEventRequest) -> list[FieldViolation]:
    """Every problem of a SendEvent request."""
    found: list[FieldViolation] = []
    if not request.event_id:
        found.append(FieldViolation(field="event_id", description="required"))
    elif len(request.event_id) > MAX_EVENT_ID or not request.event_id.isprintable():
        found.append(
            FieldViolation(
                field="event_id", description=f"1 to {MAX_EVENT_ID} printable characters"
            )
        )
    if not EVENT_NAME_PATTERN.fullmatch(request.name):
        found.append(
            FieldViolation(
                field="name",
                description="required: 1 to 128 characters of letters, digits and _ . : / -",
            )
        )
    if len(request.key) > MAX_EVENT_KEY or "\x00" in request.key:
        found.append(
            FieldViolation(field="key", description=f"at most {MAX_EVENT_KEY} characters, no NUL")
        )
    if request.payload.ByteSize() > MAX_PAYLOAD_BYTES:
        found.append(
            FieldViolation(
                field="payload",
                description=f"{request.payload.ByteSize()} bytes; at most {MAX_PAYLOAD_BYTES}",
            )
        )
    else:
        found.extend(struct_violations(request.payload, "payload"))
    return found


class ExternalEventService:
    """The SendEvent use case."""

    def __init__(
        self,
        repository: ExternalEventsRepository,
        retention_seconds: float,
        triggers: EventTriggers | None = None,
    ) -> None:
        self._repository = repository
        self._retention = retention_seconds
        self._triggers = triggers
        self.metrics = Metrics()

    async def send(
        self, organization_id: str, request: pb.SendEventRequest
    ) -> pb.SendEventResponse:
        violations = send_event_violations(request)
        if violations:
            raise InvalidArgument(
                "invalid event: " + "; ".join(f"{v.field}: {v.description}" for v in violations),
                violations=violations,
            )
        payload = json_format.MessageToDict(request.payload)
        sent = await self._repository.send(
            organization_id, request.event_id, request.name, request.key, payload, self._retention
        )
        run_ids: list[str] = []
        if self._triggers is not None:
            run_ids = await self._triggers.fire(
                organization_id, request.event_id, request.name, request.key, payload
            )
        self.metrics.external_event(duplicate=sent.duplicate, delivered=sent.delivered_steps)
        response = pb.SendEventResponse(
            duplicate=sent.duplicate,
            delivered_steps=sent.delivered_steps,
            triggered_run_ids=run_ids,
        )
        response.expire_time.FromDatetime(sent.expires_at)
        return response
