"""What the asyncio and blocking clients share: defaults, the retry and watch
policies, pages, and the conversions between Python values and request messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from podium.client.definitions import load_definition, parse_definition
from podium.client.values import message_to_data
from podium.orchestration.v1 import definition_pb2, event_pb2, run_pb2

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_CONSOLE_ADDRESS",
    "DEFAULT_TIMEOUT_SECONDS",
    "IDEMPOTENT_METHODS",
    "SERVICE_NAME",
    "TERMINAL_EVENT_TYPES",
    "TERMINAL_RUN_STATES",
    "DefinitionSource",
    "EventPage",
    "Page",
    "RetryPolicy",
    "WatchPolicy",
    "definition_message",
    "enum_value",
    "struct_or_none",
    "to_dict",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
"""Where ``podium serve`` listens by default."""

DEFAULT_CONSOLE_ADDRESS = "127.0.0.1:50052"
"""Where ``podium demo`` serves the web console and HTTP/JSON gateway by default."""

DEFAULT_TIMEOUT_SECONDS = 30.0
"""Deadline of each unary call unless the client or the call says otherwise."""

SERVICE_NAME = "podium.orchestration.v1.OrchestrationService"

TERMINAL_RUN_STATES = frozenset(
    {run_pb2.Run.STATE_SUCCEEDED, run_pb2.Run.STATE_FAILED, run_pb2.Run.STATE_CANCELLED}
)
"""Run states that never change (except through ResumeRun, which starts a new attempt)."""

TERMINAL_EVENT_TYPES = frozenset(
    {
        event_pb2.RunEvent.TYPE_RUN_COMPLETED,
        event_pb2.RunEvent.TYPE_RUN_FAILED,
        event_pb2.RunEvent.TYPE_RUN_CANCELLED,
    }
)
"""Event types after which WatchRun ends."""

# Safe to repeat: reads, upserts, and calls made idempotent by a request_id this client
# always sets. Not here: CreateDefinition (idempotent by content, but not with
# force_new_version, and one method config covers both), ContinueRun and ResumeRun (no
# request_id), DeregisterAgent, InvalidateCache. SendEvent is idempotent by its event_id.
IDEMPOTENT_METHODS = (
    "GetDefinition",
    "ListDefinitions",
    "ValidateDefinition",
    "ArchiveDefinition",
    "StartRun",
    "GetRun",
    "ListRuns",
    "CancelRun",
    "ForkRun",
    "WatchRun",
    "WatchRuns",
    "ListRunEvents",
    "GetRunPayload",
    "ListDeliverables",
    "ListApprovals",
    "GetApproval",
    "DecideApproval",
    "RegisterAgent",
    "ListAgents",
    "GetAgent",
    "ListWebhookDeliveries",
    "SendEvent",
    "GetSchedule",
    "ListSchedules",
    "PauseSchedule",
    "ResumeSchedule",
)

DefinitionSource = definition_pb2.Definition | Mapping[str, Any] | Path
"""A definition as a message, a mapping of its fields (YAML short forms allowed), or
the path of a YAML/JSON file."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How gRPC retries idempotent calls that fail with UNAVAILABLE (server down,
    starting, or shutting down). The whole sequence of tries stays within the call's
    deadline.

    Attributes:
        max_attempts: Tries in all, first included (gRPC caps this at 5).
        initial_backoff_seconds: Upper bound of the first random delay.
        max_backoff_seconds: Upper bound of any delay.
        backoff_multiplier: Growth of the bound after each try.
    """

    max_attempts: int = 5
    initial_backoff_seconds: float = 0.2
    max_backoff_seconds: float = 5.0
    backoff_multiplier: float = 2.0

    def service_config(self) -> dict[str, Any]:
        """The gRPC service config (JSON form) applying this policy to the idempotent
        methods of OrchestrationService."""
        return {
            "methodConfig": [
                {
                    "name": [
                        {"service": SERVICE_NAME, "method": method} for method in IDEMPOTENT_METHODS
                    ],
                    "retryPolicy": {
                        "maxAttempts": self.max_attempts,
                        "initialBackoff": f"{self.initial_backoff_seconds}s",
                        "maxBackoff": f"{self.max_backoff_seconds}s",
                        "backoffMultiplier": self.backoff_multiplier,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }


@dataclass(frozen=True, slots=True)
class WatchPolicy:
    """How :meth:`PodiumClient.watch_run` reconnects a lost stream.

    Attributes:
        initial_backoff_seconds: Upper bound of the first random delay before a reconnect.
        max_backoff_seconds: Upper bound of any delay.
        give_up_after_seconds: Raise :class:`~podium.client.errors.UnavailableError`
            when no stream could be re-established for this long (``None``: never).
    """

    initial_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 2.0
    give_up_after_seconds: float | None = 300.0


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list call.

    Attributes:
        items: The resources of this page.
        next_page_token: Pass as ``page_token`` for the next page; empty on the last.
    """

    items: list[T] = field(default_factory=list)
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class EventPage(Page[event_pb2.RunEvent]):
    """One page of a run's event log (:meth:`PodiumClient.list_run_events`): a
    :class:`Page` whose token is the sequence to read after.

    Attributes:
        next_after_sequence: Pass as ``after_sequence`` (or ``next_page_token`` as
            ``page_token``) for the next page; 0 when the log was read to its end.
    """

    next_after_sequence: int = 0


def to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, e.g. ``Run.output`` (its plain fields) or a whole
    ``Run``: the shape of the CLI's ``-o json`` (:func:`podium.client.values.message_to_data`:
    proto field names, enums by name, 64-bit integers as numbers, and integral numbers
    within 2**53 as ``int`` although a ``Struct`` stores them as doubles)."""
    return message_to_data(message)


def definition_message(source: DefinitionSource) -> definition_pb2.Definition:
    """The Definition message of ``source`` (a message is returned as it is)."""
    if isinstance(source, definition_pb2.Definition):
        return source
    if isinstance(source, Path):
        return load_definition(source)
    return parse_definition(source)


def struct_or_none(data: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    """``data`` as a Struct, or None (the field stays unset)."""
    if data is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(dict(data))
    return struct


def enum_value(wrapper: Any, prefix: str, value: int | str) -> Any:
    """An enum value from itself or its name, with or without the prefix, any case."""
    if isinstance(value, int):
        return value
    name = value.upper()
    if not name.startswith(prefix):
        name = prefix + name
    try:
        return wrapper.Value(name)
    except ValueError:
        names = ", ".join(n.removeprefix(prefix).lower() for n in wrapper.keys()[1:])
        raise ValueError(f"unknown value {value!r} (one of: {names})") from None
