"""Checks shared by the request handlers (runs, approvals, webhooks, watch): the text of
every string field of a request, request Structs JSON can hold, idempotency keys, run ids,
timestamps.

:func:`request_violations` walks any request message (every RPC's request goes through
it before its handler runs): each string, repeated string, map key and value, nested
message and Struct. A string must hold no NUL character (PostgreSQL text and jsonb cannot
store U+0000) and be at most :func:`max_length` characters; tighter rules of a field
(names, labels, ids) are checked by its handler afterwards."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import cast

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from podium.server.engine.errors import FieldViolation, InvalidArgument
from podium.server.engine.references import join_location

__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_STRING_LENGTH",
    "MAX_TEXT_LENGTH",
    "check_request",
    "json_violations",
    "max_length",
    "parse_run_id",
    "request_id_violations",
    "request_violations",
    "shown",
    "struct_violations",
    "text_problem",
    "timestamp_value",
]

MAX_INPUT_BYTES = 1024 * 1024
MAX_REQUEST_ID_LENGTH = 128

MAX_STRING_LENGTH = 1024
"""Longest string field of a request (ids, names, tokens, filters, actors...) unless
:data:`MAX_TEXT_LENGTH` or a tighter rule of the field applies, in characters."""

MAX_TEXT_LENGTH = 10_000
"""Longest free-text field of a request (``description``, ``hint``, ``prompt``,
``comment``, ``reason``), in characters."""

MAX_URL_LENGTH = 2048
"""Longest URL field of a request (``webhook_url``), in characters."""

_LONGER_FIELDS = {
    "description": MAX_TEXT_LENGTH,
    "hint": MAX_TEXT_LENGTH,
    "prompt": MAX_TEXT_LENGTH,
    "comment": MAX_TEXT_LENGTH,
    "reason": MAX_TEXT_LENGTH,
    "webhook_url": MAX_URL_LENGTH,
}

_MAX_REQUEST_VIOLATIONS = 100
_SHOWN = 200


def shown(value: str, limit: int = _SHOWN) -> str:
    """``value`` for an error message: at most ``limit`` characters (an ellipsis marks a
    cut), control characters escaped, so a caller's value never floods an error."""
    cut = value[:limit]
    if any(ch < " " or ch == "\x7f" for ch in cut):
        cut = cut.encode("unicode_escape").decode("ascii")[:limit]
    return cut + "…" if len(value) > limit else cut


def max_length(field_name: str) -> int:
    """The most characters the request string field called ``field_name`` may hold."""
    return _LONGER_FIELDS.get(field_name, MAX_STRING_LENGTH)


def text_problem(value: str, maximum: int) -> tuple[str, str] | None:
    """What is wrong with the text of a string field, as ``(description, reason)``: a NUL
    character, or more than ``maximum`` characters; None when it is acceptable. The one
    rule of request strings and of a definition's texts."""
    if "\x00" in value:
        return "must not contain NUL characters (U+0000)", "NUL_CHARACTER"
    if len(value) > maximum:
        return f"at most {maximum} characters (got {len(value)})", "TOO_LONG"
    return None


def _key_path(path: str, key: str) -> str:
    # The key goes back to the caller in the field path: control characters escaped,
    # long keys cut.
    return join_location(path, shown(key, 64))


def request_violations(
    message: Message, prefix: str = "", limit: int = _MAX_REQUEST_VIOLATIONS
) -> list[FieldViolation]:
    """Every string of ``message`` (recursively: nested messages, repeated fields, map
    keys and values, Structs) that breaks :func:`text_problem` for its field's
    :func:`max_length`, one violation naming the field per problem (at most ``limit``)."""
    walk = _RequestWalk(limit)
    walk.message(message, prefix)
    return walk.found[:limit]


class _RequestWalk:
    """One walk of :func:`request_violations`: the violations found so far. Methods, not
    nested functions: a recursive closure is a reference cycle, which only the cyclic
    garbage collector frees, and every request is walked."""

    __slots__ = ("found", "limit")

    def __init__(self, limit: int) -> None:
        self.found: list[FieldViolation] = []
        self.limit = limit

    def text(self, path: str, name: str, value: str) -> None:
        problem = text_problem(value, max_length(name))
        if problem is not None and len(self.found) < self.limit:
            self.found.append(FieldViolation(field=path, description=problem[0], reason=problem[1]))

    def message(self, node: Message, path: str) -> None:
        found = self.found
        if isinstance(node, struct_pb2.Struct):
            # Numbers are the handlers' business (a definition reports them its own way).
            found.extend(json_violations(node, path, self.limit - len(found), numbers=False))
            return
        for field, value in node.ListFields():
            if len(found) >= self.limit:
                return
            here = f"{path}.{field.name}" if path else field.name
            if field.type == FieldDescriptor.TYPE_STRING:
                if field.is_repeated:
                    for index, item in enumerate(value):
                        self.text(f"{here}[{index}]", field.name, item)
                else:
                    self.text(here, field.name, value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                entry = field.message_type
                if entry is not None and entry.GetOptions().map_entry:
                    self.map_entries(field, value, here)
                elif field.is_repeated:
                    for index, item in enumerate(value):
                        self.message(item, f"{here}[{index}]")
                else:
                    self.message(value, here)

    def map_entries(self, field: FieldDescriptor, entries: object, path: str) -> None:
        assert field.message_type is not None
        value_field = field.message_type.fields_by_name["value"]
        for key, item in entries.items():  # type: ignore[attr-defined]
            key_text = str(key)
            problem = text_problem(key_text, MAX_STRING_LENGTH)
            entry_path = _key_path(path, key_text)
            if problem is not None and len(self.found) < self.limit:
                self.found.append(
                    FieldViolation(field=path, description=f"key: {problem[0]}", reason=problem[1])
                )
                continue
            if value_field.type == FieldDescriptor.TYPE_STRING:
                self.text(entry_path, field.name, item)
            elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
                self.message(item, entry_path)


def check_request(message: Message) -> None:
    """Raise InvalidArgument (reason ``INVALID_TEXT``) naming every string field of the
    request that :func:`request_violations` refuses."""
    violations = request_violations(message)
    if violations:
        first = violations[0]
        raise InvalidArgument(
            f"{len(violations)} field(s) of the request hold text the server cannot accept; "
            f"first: {first.field}: {first.description}",
            reason="INVALID_TEXT",
            violations=violations,
        )


def json_violations(
    struct: struct_pb2.Struct, field: str, limit: int = 20, *, numbers: bool = True
) -> list[FieldViolation]:
    """Values JSON (and so Postgres jsonb) cannot hold: NUL characters and (unless not
    ``numbers``) NaN and infinities."""
    walk = _JsonWalk(limit, numbers)
    walk.fields(struct, field)
    return walk.found


class _JsonWalk:
    """One walk of :func:`json_violations` (methods for the reason :class:`_RequestWalk`
    gives)."""

    __slots__ = ("found", "limit", "numbers")

    def __init__(self, limit: int, numbers: bool) -> None:
        self.found: list[FieldViolation] = []
        self.limit = limit
        self.numbers = numbers

    def value(self, value: struct_pb2.Value, path: str) -> None:
        if len(self.found) >= self.limit:
            return
        kind = value.WhichOneof("kind")
        if kind == "number_value" and self.numbers and not math.isfinite(value.number_value):
            self.found.append(
                FieldViolation(
                    field=path, description="numbers must be finite (no NaN or infinity)"
                )
            )
        elif kind == "string_value" and "\x00" in value.string_value:
            self.found.append(
                FieldViolation(field=path, description="strings must not contain NUL characters")
            )
        elif kind == "struct_value":
            self.fields(value.struct_value, path)
        elif kind == "list_value":
            for i, item in enumerate(value.list_value.values):
                self.value(item, f"{path}[{i}]")

    def fields(self, node: struct_pb2.Struct, path: str) -> None:
        for key, item in node.fields.items():
            if len(self.found) >= self.limit:
                return
            if "\x00" in key:
                self.found.append(
                    FieldViolation(field=path, description="keys must not contain NUL characters")
                )
                continue
            self.value(item, f"{path}.{shown(key, 64)}")


def struct_violations(struct: struct_pb2.Struct, field: str) -> list[FieldViolation]:
    """The problems of a request Struct (run input, metadata, an approval's input): larger
    than MAX_INPUT_BYTES serialized, else any value JSON cannot hold."""
    size = struct.ByteSize()
    if size > MAX_INPUT_BYTES:
        return [FieldViolation(field=field, description=f"{size} bytes; at most {MAX_INPUT_BYTES}")]
    return json_violations(struct, field)


def request_id_violations(request_id: str) -> list[FieldViolation]:
    """An idempotency key longer than MAX_REQUEST_ID_LENGTH, as a field violation."""
    if len(request_id) <= MAX_REQUEST_ID_LENGTH:
        return []
    return [
        FieldViolation(
            field="request_id", description=f"at most {MAX_REQUEST_ID_LENGTH} characters"
        )
    ]


def parse_run_id(run_id: str, field: str = "run_id") -> uuid.UUID:
    """``run_id`` as a UUID, or InvalidArgument naming ``field``."""
    try:
        return uuid.UUID(run_id)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a run id (a UUID), got {shown(run_id)!r}",
            violations=[FieldViolation(field=field, description="must be a UUID")],
        ) from None


def timestamp_value(
    message: Message,
    field: str,
    violations: list[FieldViolation],
    *,
    after_epoch: bool = False,
) -> datetime | None:
    """The ``google.protobuf.Timestamp`` field ``field`` of ``message`` as an aware UTC
    datetime; None when it is unset, or invalid (then a violation ``not a valid
    timestamp`` on ``field`` is appended): nanos outside 0..999,999,999, seconds outside
    the years 1..9999, or before 1970 with ``after_epoch``."""
    if not message.HasField(field):
        return None
    timestamp = getattr(message, field)
    if not (after_epoch and timestamp.seconds < 0):
        try:
            return cast(datetime, timestamp.ToDatetime(tzinfo=UTC))
        except (ValueError, OverflowError, OSError):
            pass
    violations.append(FieldViolation(field=field, description="not a valid timestamp"))
    return None
