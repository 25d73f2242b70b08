"""Canonical JSON and content hashes.

The canonical form of a JSON-like value is its JSON text with:

- object keys sorted by Unicode code point, at every level; keys must be strings;
- no insignificant whitespace (``,`` and ``:`` separators only);
- UTF-8 bytes, non-ASCII characters written as themselves (no ``\\uXXXX`` escapes
  beyond those JSON requires for control characters, quotes and backslashes);
- numbers: integers in decimal; a float with an integral value written as that integer
  (``1.0`` -> ``1``, ``-0.0`` -> ``0``), so a number that went through a protobuf
  ``Struct`` (always a double) hashes like the author's integer; any other float in
  Python's ``repr`` (the shortest text that round-trips, e.g. ``0.1``, ``1e-07``);
  NaN and infinities are rejected;
- ``true``, ``false``, ``null``; tuples are arrays.

Two values with the same canonical form are the same JSON value, whatever their key
order, whitespace or int/float spelling. :func:`sha256_hex` of the canonical form is
used for definition content hashes (:func:`definition_hash`) and for step-output cache
keys, so this format must not change without a migration of stored hashes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.validation import normalize_definition

__all__ = ["canonical_json", "definition_hash", "sha256_hex"]


def canonical_json(value: Any) -> bytes:
    """Return the canonical JSON encoding (UTF-8 bytes) of a JSON-like value.

    Raises:
        ValueError: A float is NaN or infinite, or a string cannot be encoded as UTF-8.
        TypeError: A value is not JSON-like (dict with ``str`` keys, list, tuple, str,
            int, float, bool, None).
    """
    text = json.dumps(
        _prepare(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return text.encode("utf-8")


def sha256_hex(value: Any) -> str:
    """Return the SHA-256 (lowercase hex) of :func:`canonical_json` of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def definition_hash(definition: definition_pb2.Definition) -> str:
    """Return the content hash of a definition.

    The hash covers the definition without its output-only fields
    (:func:`~podium.server.engine.validation.normalize_definition`), as the dict of
    ``json_format.MessageToDict(preserving_proto_field_name=True)`` (defaults omitted,
    enums by name, int64 as strings), in canonical form. It does not depend on field
    order or on the key order of input Structs. Validate first: non-finite numbers in an
    input cannot be serialized.
    """
    as_dict = json_format.MessageToDict(
        normalize_definition(definition), preserving_proto_field_name=True
    )
    return sha256_hex(as_dict)


def _prepare(value: Any) -> Any:
    """Check the value and turn integral floats into ints, rebuilding containers."""
    if isinstance(value, str) or value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"canonical JSON has no representation for {value}")
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        prepared: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"canonical JSON object keys must be strings, got {key!r}")
            prepared[key] = _prepare(item)
        return prepared
    if isinstance(value, list | tuple):
        return [_prepare(item) for item in value]
    raise TypeError(f"{type(value).__name__} is not a JSON value")
