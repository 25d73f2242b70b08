"""Responses that stay under the gRPC message limit by construction.

The server refuses to send a message larger than ``PODIUM_MAX_MESSAGE_BYTES``; the
call would fail with RESOURCE_EXHAUSTED although nothing was wrong with it. So every
read that can grow with stored data is bounded here, before it is sent:

- a run (GetRun, ListRuns) leaves out its largest payloads (run and step inputs,
  outputs, metadata, plan) until it fits, and names them in ``omitted``
  (:func:`fit_run`);
- an event leaves out its ``data`` when it does not fit (:func:`fit_event`);
- a page stops early, with a next page token, before it would not fit
  (:func:`fitting_count`);
- GetRunPayload serves any payload in byte ranges (:func:`payload_json`).

The budget of one message is the limit minus :data:`ENVELOPE_BYTES`, room for the
response's own fields (a page token, counters) around the bounded part.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf.message import Message

from podium.orchestration.v1 import approval_pb2, event_pb2, run_pb2
from podium.server.engine.errors import ResourceExhausted

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ENVELOPE_BYTES",
    "MAX_PAYLOAD_RANGE_BYTES",
    "fit_approval",
    "fit_event",
    "fit_run",
    "fitting_count",
    "payload_json",
    "response_budget",
]

ENVELOPE_BYTES = 16 * 1024
"""Room kept for a response's fields outside its bounded part (tokens, counters, the
repeated field's tags)."""

DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024 - ENVELOPE_BYTES
"""The budget under the default ``PODIUM_MAX_MESSAGE_BYTES`` (4 MiB)."""

MAX_PAYLOAD_RANGE_BYTES = 1024 * 1024
"""The largest byte range GetRunPayload returns at once."""


def response_budget(max_message_bytes: int) -> int:
    """The bytes a bounded part of a response may take under ``max_message_bytes``."""
    return max(max_message_bytes - ENVELOPE_BYTES, max_message_bytes // 2)


def payload_json(value: Any) -> bytes:
    """The JSON GetRunPayload serves for a stored payload: compact, keys sorted, UTF-8.
    Its length is the ``size_bytes`` of an omitted payload."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _entry_bytes(size: int) -> int:
    """Bytes of one element of a repeated message field holding ``size`` bytes: the
    tag, the length varint and the element."""
    length, rest = 1, size
    while rest >= 0x80:
        rest >>= 7
        length += 1
    return 1 + length + size


def fitting_count(messages: Sequence[Message], budget: int) -> int:
    """How many leading ``messages`` fit together in a repeated field of ``budget``
    bytes; at least 1 when there is any, so a page always moves forward (a message
    that does not fit alone must have been made to fit before)."""
    total = 0
    for i, message in enumerate(messages):
        total += _entry_bytes(message.ByteSize())
        if total > budget:
            return max(i, 1)
    return len(messages)


_RUN_FIELDS = ("input", "output", "metadata", "plan")
_STEP_FIELDS = ("input", "output")


def fit_run(
    run: run_pb2.Run,
    budget: int,
    sources: Callable[[str, str], Any],
) -> None:
    """Leave out the largest payloads of ``run`` (largest first) until it takes at most
    ``budget`` bytes, each listed in ``omitted`` of the run or its step with the size
    of its JSON. ``sources(step_id, field)`` returns the stored value of a payload
    (``step_id`` "" for the run's own), from which that size is measured.

    Raises ResourceExhausted (RESPONSE_TOO_LARGE) when the run does not fit even
    without any payload (a run with so many steps that their states alone are too large).
    """
    if run.ByteSize() <= budget:
        return
    candidates: list[tuple[int, int, str]] = []  # (bytes, step index or -1, field)
    messages: list[Message] = [run, *run.steps]
    for index, fields in ((-1, _RUN_FIELDS), *((i, _STEP_FIELDS) for i in range(len(run.steps)))):
        message = messages[index + 1]
        for field in fields:
            if message.HasField(field):
                candidates.append((getattr(message, field).ByteSize(), index, field))
    candidates.sort(key=lambda c: c[0], reverse=True)
    for _, index, field in candidates:
        message = messages[index + 1]
        step_id = "" if index < 0 else run.steps[index].step_id
        message.ClearField(field)
        omitted = run.omitted if index < 0 else run.steps[index].omitted
        omitted.add(field=field, size_bytes=len(payload_json(sources(step_id, field))))
        if run.ByteSize() <= budget:
            return
    raise ResourceExhausted(
        f"run {run.id} does not fit in one response even without its payloads "
        f"({run.ByteSize()} bytes, at most {budget}); read it with RUN_VIEW_BASIC",
        reason="RESPONSE_TOO_LARGE",
        metadata={"run_id": run.id},
    )


def fit_approval(approval: approval_pb2.Approval, budget: int, subject: Any) -> None:
    """Leave out ``subject`` of ``approval`` (its stored value) when the approval takes
    more than ``budget`` bytes, and say so in ``subject_omitted``."""
    if approval.ByteSize() <= budget:
        return
    approval.ClearField("subject")
    approval.subject_omitted.field = "subject"
    approval.subject_omitted.size_bytes = len(payload_json(subject))


def fit_event(event: event_pb2.RunEvent, budget: int, data: Mapping[str, Any]) -> None:
    """Leave out ``data`` of ``event`` (``data`` is its stored value) when the event
    takes more than ``budget`` bytes, and say so in ``data_omitted``."""
    if event.ByteSize() <= budget:
        return
    event.ClearField("data")
    event.data_omitted.field = "data"
    event.data_omitted.size_bytes = len(payload_json(dict(data)))
