"""Definitions as YAML or JSON files: loading, short forms, and dumping.

A definition file is YAML (JSON is YAML too) whose fields are the proto field names of
``podium.orchestration.v1.Definition``. Before the document is converted with
``json_format.ParseDict``, a pass driven by the message descriptors (not by a list of
fields) checks it and expands the short forms authors write:

- enum values may be written without their prefix and in any case:
  ``on_exceed: pause`` is ``ON_EXCEED_PAUSE``; the full name is accepted too;
- a scalar where a message is expected sets the message's first field (field number 1)
  when that field is a scalar: ``checkpoint: after`` is ``{when: WHEN_AFTER}``,
  ``orchestration: translate-flow`` is ``{name: translate-flow}``,
  ``caching: true`` is ``{enabled: true}``, ``rollback: "..."`` is ``{hint: "..."}``;
- an integer where a string is expected becomes its decimal text (``id: 1``);
- YAML dates and timestamps inside inputs become ISO 8601 strings.

Errors raise :class:`DefinitionFileError` naming the source, the YAML line when it is
known, and the field path (``steps[1].checkpoint.when``). Duplicate mapping keys are
errors (PyYAML would silently keep the last one).
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from podium.client.values import message_to_data
from podium.orchestration.v1 import definition_pb2

__all__ = [
    "DefinitionFileError",
    "definition_to_dict",
    "load_definition",
    "parse_definition",
]

_PathPart: TypeAlias = str | int
_STRUCT_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_INT_TYPES = _INT64_TYPES | {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
}
_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class DefinitionFileError(ValueError):
    """A definition file (or mapping) that cannot be turned into a ``Definition``.

    Attributes:
        source: The file path or ``"<string>"``.
        message: What is wrong.
        field: Field path of the problem (``steps[0].agent``), if known.
        line: 1-based YAML line of the problem, if known.
    """

    def __init__(
        self, source: str, message: str, *, field: str | None = None, line: int | None = None
    ) -> None:
        self.source = source
        self.message = message
        self.field = field
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        what = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {what}")


class _FieldError(Exception):
    def __init__(self, path: Sequence[_PathPart], message: str) -> None:
        super().__init__(message)
        self.path = tuple(path)
        self.message = message


def load_definition(path: str | Path) -> definition_pb2.Definition:
    """Read a YAML or JSON definition file.

    Raises:
        DefinitionFileError: The file cannot be read, is not valid YAML, or does not
            describe a definition.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DefinitionFileError(source, f"cannot read the file: {error}") from None
    return parse_definition(text, source=source)


def parse_definition(
    data: Mapping[str, Any] | str, *, source: str = "<string>"
) -> definition_pb2.Definition:
    """Parse a definition from YAML/JSON text or from an already loaded mapping.

    Args:
        data: YAML or JSON text, or a mapping such as ``json.load`` returns.
        source: Name used in error messages (the file path).

    Raises:
        DefinitionFileError: Bad YAML, a top level that is not a mapping, unknown fields,
            values of the wrong type or unknown enum values.
    """
    text = data if isinstance(data, str) else None
    if isinstance(data, str):
        try:
            document = yaml.load(data, Loader=_StrictLoader)
        except _DuplicateKeyError as error:
            raise DefinitionFileError(source, error.message, line=error.line) from None
        except yaml.YAMLError as error:
            raise DefinitionFileError(
                source, f"invalid YAML: {_yaml_problem(error)}", line=_yaml_line(error)
            ) from None
    else:
        document = data
    if not isinstance(document, Mapping):
        kind = "an empty document" if document is None else f"a {type(document).__name__}"
        raise DefinitionFileError(source, f"a definition must be a mapping, got {kind}", line=1)

    definition = definition_pb2.Definition()
    try:
        normalized = _normalize_message(document, definition_pb2.Definition.DESCRIPTOR, ())
        json_format.ParseDict(normalized, definition, ignore_unknown_fields=False)
    except _FieldError as error:
        line = _line_of(text, error.path) if text is not None else None
        raise DefinitionFileError(
            source, error.message, field=_format_path(error.path) or None, line=line
        ) from None
    except json_format.ParseError as error:
        raise DefinitionFileError(source, str(error)) from None
    return definition


def definition_to_dict(definition: definition_pb2.Definition) -> dict[str, Any]:
    """Return a definition as a plain dict for YAML/JSON output.

    Proto field names, default values omitted, enums by full name; unlike
    ``MessageToDict``, 64-bit integers are numbers and integral numbers inside inputs
    are ints (``3``, not ``3.0``). :func:`parse_definition` reads the result back.
    """
    return message_to_data(definition)


# --------------------------------------------------------------------------- YAML


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            # Scalar keys only, merge keys (`<<: *anchor`) excepted: keys a merge brings
            # in may legitimately be overridden.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            line = int(key_node.start_mark.line) + 1
            if key in seen:
                raise _DuplicateKeyError(
                    f"duplicate key '{key_node.value}' (first on line {seen[key]})", line
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        parts = [error.context, error.problem]
        return ", ".join(p for p in parts if p) or str(error)
    return str(error)


def _yaml_line(error: yaml.YAMLError) -> int | None:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        if mark is not None:
            return int(mark.line) + 1
    return None


def _line_of(text: str, path: Sequence[_PathPart]) -> int | None:
    """1-based line of the node at ``path`` in the YAML text (deepest node found)."""
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    line = int(node.start_mark.line) + 1
    for part in path:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    child = value_node
                    line = int(key_node.start_mark.line) + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part < len(node.value):
                child = node.value[part]
                line = int(child.start_mark.line) + 1
        if child is None:
            break
        node = child
    return line


# --------------------------------------------------------------------------- normalizing


def _format_path(path: Sequence[_PathPart]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _IDENTIFIER.fullmatch(part) else "`" + part.replace("`", "``") + "`"
            text = f"{text}.{name}" if text else name
    return text


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _normalize_message(
    value: Any, descriptor: Descriptor, path: tuple[_PathPart, ...]
) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _FieldError(
            path, f"expected a mapping for {descriptor.name}, got {_type_name(value)}"
        )
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _FieldError(path, f"field names must be strings, got {key!r} (quote it in YAML)")
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is None:
            names = [f.name for f in descriptor.fields]
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(names)}"
            raise _FieldError((*path, key), f"unknown field '{key}' in {descriptor.name} ({hint})")
        if item is None:
            continue  # `key:` with no value: leave the field unset
        result[field.name] = _normalize_field(item, field, (*path, key))
    return result


def _message_type(field: FieldDescriptor) -> Descriptor:
    message = field.message_type
    assert message is not None, field.full_name
    return message


def _enum_type(field: FieldDescriptor) -> EnumDescriptor:
    enum = field.enum_type
    assert enum is not None, field.full_name
    return enum


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and bool(message.GetOptions().map_entry)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _normalize_field(value: Any, field: FieldDescriptor, path: tuple[_PathPart, ...]) -> Any:
    if _is_map(field):
        if not isinstance(value, Mapping):
            raise _FieldError(path, f"expected a mapping, got {_type_name(value)}")
        value_field = _message_type(field).fields_by_name["value"]
        result: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise _FieldError(path, f"keys must be strings, got {key!r} (quote it in YAML)")
            result[str(key)] = _normalize_single(item, value_field, (*path, str(key)))
        return result
    if _is_repeated(field):
        if not isinstance(value, list):
            raise _FieldError(path, f"expected a list, got {_type_name(value)}")
        return [_normalize_single(item, field, (*path, i)) for i, item in enumerate(value)]
    return _normalize_single(value, field, path)


def _normalize_single(value: Any, field: FieldDescriptor, path: tuple[_PathPart, ...]) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message = _message_type(field)
        if message.full_name in _STRUCT_TYPES:
            if message.full_name == "google.protobuf.Struct" and not isinstance(value, Mapping):
                raise _FieldError(path, f"expected a mapping, got {_type_name(value)}")
            if message.full_name == "google.protobuf.ListValue" and not isinstance(value, list):
                raise _FieldError(path, f"expected a list, got {_type_name(value)}")
            return _normalize_json(value, path)
        if message.full_name.startswith("google.protobuf."):
            if isinstance(value, dt.datetime | dt.date):
                return _iso(value)
            return value
        if not isinstance(value, Mapping):
            shorthand = _shorthand_field(message)
            if shorthand is None or isinstance(value, list):
                raise _FieldError(
                    path, f"expected a mapping for {message.name}, got {_type_name(value)}"
                )
            return {shorthand.name: _normalize_single(value, shorthand, path)}
        return _normalize_message(value, message, path)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _normalize_enum(value, _enum_type(field), path)
    if field.type == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise _FieldError(path, f"expected a string, got {_type_name(value)}")
    if field.type == FieldDescriptor.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise _FieldError(path, f"expected true or false, got {_type_name(value)}")
    if field.type in _INT_TYPES:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _parses(int, value):
            return value
        raise _FieldError(path, f"expected an integer, got {_type_name(value)} ({value!r})")
    if field.type in _FLOAT_TYPES:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _parses(float, value):
            return value  # "1e3" (YAML 1.1 reads it as a string), "NaN", "Infinity"
        raise _FieldError(path, f"expected a number, got {_type_name(value)} ({value!r})")
    return value


def _parses(kind: type[int] | type[float], text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _shorthand_field(message: Descriptor) -> FieldDescriptor | None:
    """The field a scalar stands for where ``message`` is expected: field number 1,
    when it is a singular scalar or enum."""
    field = message.fields_by_number.get(1)
    if field is None or _is_repeated(field) or field.type == FieldDescriptor.TYPE_MESSAGE:
        return None
    return field


def _enum_prefix(enum: EnumDescriptor) -> str:
    zero = enum.values_by_number.get(0)
    if zero is not None and zero.name.endswith("_UNSPECIFIED"):
        return zero.name[: -len("UNSPECIFIED")]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _normalize_enum(value: Any, enum: EnumDescriptor, path: tuple[_PathPart, ...]) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    prefix = _enum_prefix(enum)
    if isinstance(value, str):
        name = value.strip().upper().replace("-", "_")
        if name in enum.values_by_name:
            return name
        if prefix + name in enum.values_by_name:
            return prefix + name
    allowed = [
        v.name[len(prefix) :].lower() if v.name.startswith(prefix) else v.name
        for v in enum.values
        if v.number != 0
    ]
    raise _FieldError(path, f"unknown value {value!r}; expected one of: {', '.join(allowed)}")


def _iso(value: dt.date | dt.datetime) -> str:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None).isoformat() + "Z"
    return value.isoformat()


def _normalize_json(value: Any, path: tuple[_PathPart, ...]) -> Any:
    """Make a YAML value JSON-compatible for a Struct/Value/ListValue field."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise _FieldError(path, f"numbers must be finite, got {value}")
        return value
    if isinstance(value, dt.datetime | dt.date):
        return _iso(value)
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, bool) or key is None or not isinstance(key, str | int | float):
                raise _FieldError(path, f"keys must be strings, got {key!r} (quote it in YAML)")
            result[str(key)] = _normalize_json(item, (*path, str(key)))
        return result
    if isinstance(value, list):
        return [_normalize_json(item, (*path, i)) for i, item in enumerate(value)]
    raise _FieldError(path, f"{_type_name(value)} is not a JSON value")
