"""Event triggers: SendEvent starts a run of each definition subscribed to the event.

A definition's ``triggers`` (``EventTrigger``: an event name, optionally a key, a
payload to contain and a CEL ``filter`` over the event) are read from its latest
unarchived version when an event arrives. Each matching definition gets one run with the
event as input, started through the ordinary StartRun use case with a request id derived
from the event id and the definition name, so a resend of the event (or a retry after a
crash between storing the event and starting the runs) starts nothing new and returns
the same runs."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from google.protobuf import struct_pb2

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import run_pb2
from podium.server.engine.conditions import ConditionEvaluationError, evaluate_event_filter
from podium.server.engine.errors import EngineError
from podium.server.storage.external_events import ExternalEventsRepository

__all__ = ["EventTriggers", "contains", "trigger_request_id"]

log = logging.getLogger("podium.triggers")

StartRun = Callable[[str, pb.StartRunRequest], Awaitable[tuple[run_pb2.Run, bool]]]


def contains(value: Any, pattern: Any) -> bool:
    """Whether ``value`` contains ``pattern`` as PostgreSQL's jsonb ``@>`` says: objects
    key by key (recursively), lists element-wise (each pattern element contained in some
    element), scalars equal (numbers by value)."""
    if isinstance(pattern, Mapping):
        return isinstance(value, Mapping) and all(
            key in value and contains(value[key], item) for key, item in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(
            any(contains(candidate, item) for candidate in value) for item in pattern
        )
    if isinstance(pattern, bool) or isinstance(value, bool):
        return value is pattern
    return bool(value == pattern)


def trigger_request_id(event_id: str, definition_name: str) -> str:
    """The StartRun idempotency key of the run an event starts for a definition."""
    text = f"{len(event_id)}:{event_id}{definition_name}"  # length-prefixed: unambiguous
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"podium-event:{digest[:48]}"


def _matches(trigger: Mapping[str, Any], event_id: str, name: str, key: str, payload: Any) -> bool:
    if trigger.get("event_name") != name:
        return False
    if trigger.get("key") and trigger["key"] != key:
        return False
    match = trigger.get("payload_match")
    if match and not contains(payload, match):
        return False
    source = trigger.get("filter")
    if not source:
        return True
    event = {"id": event_id, "name": name, "key": key, "payload": payload}
    try:
        return evaluate_event_filter(source, event)
    except ConditionEvaluationError as exc:
        log.warning("event trigger filter failed", extra={"event_id": event_id, "error": str(exc)})
        return False


class EventTriggers:
    """Starts the runs of the definitions an event triggers."""

    def __init__(self, repository: ExternalEventsRepository, start_run: StartRun) -> None:
        self._repository = repository
        self._start_run = start_run

    async def fire(
        self, organization_id: str, event_id: str, name: str, key: str, payload: dict[str, Any]
    ) -> list[str]:
        """Start (or find, for a resent event) the run of each matching definition;
        returns their ids. A definition whose run cannot start (e.g. it was archived
        meanwhile) is logged and skipped."""
        run_ids: list[str] = []
        for definition in await self._repository.trigger_definitions(organization_id, name):
            if not any(_matches(t, event_id, name, key, payload) for t in definition.triggers):
                continue
            run_input = struct_pb2.Struct()
            run_input.update({"event_id": event_id, "name": name, "key": key, "payload": payload})
            metadata = struct_pb2.Struct()
            metadata.update({"trigger": {"event_id": event_id, "event_name": name}})
            request = pb.StartRunRequest(
                input=run_input,
                metadata=metadata,
                request_id=trigger_request_id(event_id, definition.name),
                start=True,
            )
            request.definition.name = definition.name
            request.definition.version = definition.version
            try:
                run, _ = await self._start_run(organization_id, request)
            except EngineError as exc:
                log.warning(
                    "event trigger did not start a run",
                    extra={"definition": definition.name, "event_id": event_id, "error": str(exc)},
                )
                continue
            run_ids.append(run.id)
        return run_ids
