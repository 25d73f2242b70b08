"""Protobuf values as plain Python data: the integer rule and the one JSON shape.

The integer rule: JSON data travels as ``google.protobuf.Struct``, which stores every
number as a double, so ``{"x": 1}`` arrives as ``1.0``. Everywhere the Python SDK hands
out plain data (an agent's :attr:`~podium.client.task.Task.input`,
:func:`~podium.client.common.to_dict`, the CLI's output), a number with an integral
value whose magnitude is at most 2**53 (the range a double holds exactly) is an
``int``; any other number stays a ``float`` (``1.5``, ``1e300``). 64-bit integer fields
(``sequence``, token counts) are ``int`` too, not the strings of the proto3 JSON
mapping.

The one shape (:func:`message_to_data`) of a message as JSON data: proto field names
(``run_id``), enums by their full names (``"STATE_SUCCEEDED"``), 64-bit integers as
numbers, numbers inside Structs and double fields by the integer rule, timestamps as
RFC 3339 strings, durations as ``"1.5s"``, bytes as base64, fields at their default
value omitted.

This module depends on protobuf only, so the agent SDK can use it without the client.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = [
    "MAX_SAFE_INTEGER",
    "message_to_data",
    "plain",
    "plain_number",
    "struct_to_dict",
    "value_to_python",
]

MAX_SAFE_INTEGER = 2**53
"""Integral numbers up to this magnitude are given as ``int``."""

_STRUCT_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def plain_number(number: float) -> int | float:
    """``number`` as an ``int`` when it is integral and within 2**53, else unchanged."""
    if math.isfinite(number) and number.is_integer() and abs(number) <= MAX_SAFE_INTEGER:
        return int(number)
    return number


def plain(value: Any) -> Any:
    """JSON data (dicts, lists, scalars) with every float following the integer rule;
    containers are rebuilt, other values returned as they are."""
    if isinstance(value, float):
        return plain_number(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def value_to_python(value: struct_pb2.Value) -> Any:
    """A ``google.protobuf.Value`` as plain Python, numbers by the integer rule."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return plain_number(value.number_value)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_python(item) for item in value.list_value.values]
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as a plain dict, numbers by the integer rule."""
    return {key: value_to_python(item) for key, item in struct.fields.items()}


def message_to_data(message: Message) -> dict[str, Any]:
    """``message`` in the one JSON shape (see the module docstring): a dict ready for
    ``json.dumps`` or ``yaml.safe_dump``. A ``Struct`` gives its plain fields."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    result = _restore(data, message.DESCRIPTOR)  # type: ignore[arg-type]
    assert isinstance(result, dict)
    return result


def _restore(value: Any, descriptor: Descriptor | None) -> Any:
    """Undo MessageToDict's JSON-isms: int64 as strings, Struct numbers as floats."""
    assert descriptor is not None
    if descriptor.full_name in _STRUCT_TYPES:
        return plain(value)
    if not isinstance(value, dict):
        return value  # a well-known type with a JSON form of its own (Timestamp...)
    result: dict[str, Any] = {}
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            result[key] = item
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[key] = {k: _restore_field(v, value_field) for k, v in item.items()}
        elif field.is_repeated:
            result[key] = [_restore_field(v, field) for v in item]
        else:
            result[key] = _restore_field(item, field)
    return result


def _restore_field(value: Any, field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _restore(value, field.message_type)
    if field.type in _INT64_TYPES and isinstance(value, str):
        return int(value)
    if field.type in _FLOAT_TYPES and isinstance(value, float):
        return plain_number(value)  # e.g. interval_seconds: 3600, as an author wrote it
    return value
