"""Checks shared by the request handlers (runs, approvals, webhooks, watch): request
Structs JSON can hold, idempotency keys, run ids."""

from __future__ import annotations

import math
import uuid

from google.protobuf import struct_pb2

from podium.server.engine.errors import FieldViolation, InvalidArgument

__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_REQUEST_ID_LENGTH",
    "json_violations",
    "parse_run_id",
    "request_id_violations",
    "struct_violations",
]

MAX_INPUT_BYTES = 1024 * 1024
MAX_REQUEST_ID_LENGTH = 128


def json_violations(struct: struct_pb2.Struct, field: str, limit: int = 20) -> list[FieldViolation]:
    """Values JSON (and so Postgres jsonb) cannot hold: NaN, infinities, NUL characters."""
    found: list[FieldViolation] = []

    def walk(value: struct_pb2.Value, path: str) -> None:
        if len(found) >= limit:
            return
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            found.append(
                FieldViolation(
                    field=path, description="numbers must be finite (no NaN or infinity)"
                )
            )
        elif kind == "string_value" and "\x00" in value.string_value:
            found.append(
                FieldViolation(field=path, description="strings must not contain NUL characters")
            )
        elif kind == "struct_value":
            fields(value.struct_value, path)
        elif kind == "list_value":
            for i, item in enumerate(value.list_value.values):
                walk(item, f"{path}[{i}]")

    def fields(node: struct_pb2.Struct, path: str) -> None:
        for key, item in node.fields.items():
            if "\x00" in key:
                found.append(
                    FieldViolation(field=path, description="keys must not contain NUL characters")
                )
                continue
            walk(item, f"{path}.{key}")

    fields(struct, field)
    return found


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
            f"{field} must be a run id (a UUID), got {run_id!r}",
            violations=[FieldViolation(field=field, description="must be a UUID")],
        ) from None
