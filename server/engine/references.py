"""`${...}` references in step inputs: parsing, discovery and resolution.

A string value anywhere inside a step's input may reference

- ``${run.input}`` / ``${run.input.PATH}``: the run's input, and
- ``${steps.ID.output}`` / ``${steps.ID.output.PATH}``: the output of step ``ID``, which
  must be upstream of the step (validation checks this), and
- in the input of a ``for_each`` step only, ``${item}`` / ``${item.PATH}`` (the current
  item) and ``${item_index}`` (its position, from 0), given to :func:`resolve` as
  ``item``.

``PATH`` is a sequence of ``.key`` and ``[N]`` segments, e.g.
``${steps.search.output.results[0].url}``. A key is any run of characters other than
``.``, ``[``, ``]``, ``{``, ``}``, ``$`` and whitespace; ``N`` is a non-negative integer.
Whitespace just inside the braces is ignored (``${ run.input.topic }``).

A string that is *exactly* one reference is replaced by the referenced JSON value, keeping
its type (object, array, number, boolean, null). References embedded in a longer string
are interpolated as text: strings as they are, other values as compact JSON. ``$${``
writes a literal ``${`` (so ``"$${run.input}"`` resolves to the text ``"${run.input}"``).

Locations (where a string sits inside the input) are written as field paths:
``query``, ``items[1].text``; a key that is not an identifier is quoted with backticks
(``headers.`content-type```), as in AIP-161 field paths.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

__all__ = [
    "MalformedReference",
    "MissingReferenceError",
    "PathSegment",
    "Reference",
    "ReferenceScan",
    "ReferenceSyntaxError",
    "find_references",
    "format_path",
    "join_location",
    "lookup",
    "normalize_numbers",
    "parse_path",
    "resolve",
    "scan_references",
]

PathSegment: TypeAlias = str | int
_Source: TypeAlias = Literal["run", "steps", "item", "item_index"]
"""One step of a path: an object key (``str``) or an array index (``int``)."""

_MAX_SAFE_INTEGER = 2**53
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"\.([^.\[\]{}$\s]+)|\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class Reference:
    """One well-formed ``${...}`` reference found in a value.

    Attributes:
        source: ``"run"`` for ``${run.input...}``, ``"steps"`` for ``${steps.ID.output...}``,
            ``"item"`` / ``"item_index"`` for ``${item...}`` / ``${item_index}``.
        step_id: The referenced step for ``"steps"``; ``None`` for ``"run"``.
        path: Keys and indices below ``run.input`` / ``steps.ID.output``.
        location: Field path of the string inside the walked value (``""`` at its root).
        raw: The reference as written, braces included, e.g. ``${run.input.topic}``.
    """

    source: _Source
    step_id: str | None
    path: tuple[PathSegment, ...]
    location: str
    raw: str

    @property
    def expression(self) -> str:
        """The normalized reference without braces, e.g. ``steps.a.output.items[0]``."""
        return _root_text(self.source, self.step_id) + format_path(self.path)

    def __str__(self) -> str:
        return self.expression


@dataclass(frozen=True, slots=True)
class MalformedReference:
    """A ``${...}`` that is not a valid reference.

    Attributes:
        location: Field path of the string inside the walked value.
        raw: The offending text, e.g. ``${foo.bar}``.
        message: Why it is invalid, readable by a definition author.
    """

    location: str
    raw: str
    message: str


class ReferenceScan(NamedTuple):
    """Result of :func:`scan_references`: the valid references and the malformed ones."""

    references: list[Reference]
    errors: list[MalformedReference]


class ReferenceSyntaxError(ValueError):
    """Raised when a value contains one or more malformed references."""

    def __init__(self, errors: Sequence[MalformedReference]) -> None:
        self.errors: tuple[MalformedReference, ...] = tuple(errors)
        text = "; ".join(
            f"{e.location}: {e.message}" if e.location else e.message for e in self.errors
        )
        super().__init__(text)


class MissingReferenceError(LookupError):
    """Raised by :func:`resolve` when a reference points at nothing.

    Attributes:
        reference: The reference that failed (with its location).
        location: Field path of the string holding the reference.
        reason: The failure, prefixed with the path walked so far, e.g.
            ``steps.search.output.results[3]: index 3 out of range (list has 2 items)``.
    """

    def __init__(self, reference: Reference, location: str, reason: str) -> None:
        self.reference = reference
        self.location = location
        self.reason = reason
        super().__init__(reason)

    def __str__(self) -> str:
        if self.location:
            return f"{self.reason} (referenced at {self.location})"
        return self.reason


# --------------------------------------------------------------------------- paths


def format_path(path: Sequence[PathSegment]) -> str:
    """Format path segments as they are written in a reference: ``.key`` and ``[N]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def parse_path(text: str) -> tuple[PathSegment, ...]:
    """Parse a dotted path such as ``options.lang`` or ``results[0].url``.

    A leading ``.`` is optional. The empty string is the empty path.

    Raises:
        ValueError: The text is not a valid path.
    """
    if not text:
        return ()
    if not text.startswith((".", "[")):
        text = "." + text
    segments = _parse_segments(text)
    if isinstance(segments, str):
        raise ValueError(segments)
    return segments


def join_location(prefix: str, key: PathSegment) -> str:
    """Append a key or index to a field path, quoting keys that are not identifiers."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    part = key if _IDENTIFIER.fullmatch(key) else "`" + key.replace("`", "``") + "`"
    return f"{prefix}.{part}" if prefix else part


def _parse_segments(text: str) -> tuple[PathSegment, ...] | str:
    """Parse ``.a[0].b``-style text; return the segments or an error message."""
    segments: list[PathSegment] = []
    pos = 0
    while pos < len(text):
        match = _SEGMENT.match(text, pos)
        if match is None:
            return f"invalid path syntax at '{text[pos:]}'"
        key, index = match.groups()
        segments.append(key if key is not None else int(index))
        pos = match.end()
    return tuple(segments)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class _ParsedReference:
    source: _Source
    step_id: str | None
    path: tuple[PathSegment, ...]
    raw: str


@dataclass(frozen=True, slots=True)
class _ParseError:
    raw: str
    message: str


_Part: TypeAlias = str | _ParsedReference | _ParseError


def _root_text(source: str, step_id: str | None) -> str:
    if source in ("item", "item_index"):
        return source
    return "run.input" if source == "run" else f"steps.{step_id}.output"


_USAGE = "use ${run.input.PATH} or ${steps.STEP_ID.output.PATH}"


def _parse_expression(raw: str) -> _ParsedReference | _ParseError:
    body = raw[2:-1].strip()
    if not body:
        return _ParseError(raw, f"empty reference {raw}: {_USAGE}")
    segments = _parse_segments("." + body)
    if isinstance(segments, str):
        return _ParseError(raw, f"invalid reference {raw}: {segments}")
    root = segments[0]
    if root == "run":
        if len(segments) < 2 or segments[1] != "input":
            return _ParseError(raw, f"invalid reference {raw}: expected ${{run.input...}}")
        return _ParsedReference("run", None, segments[2:], raw)
    if root == "steps":
        if len(segments) < 2 or not isinstance(segments[1], str):
            return _ParseError(raw, f"invalid reference {raw}: missing step id, {_USAGE}")
        step_id = segments[1]
        if len(segments) < 3 or segments[2] != "output":
            return _ParseError(
                raw, f"invalid reference {raw}: expected ${{steps.{step_id}.output...}}"
            )
        return _ParsedReference("steps", step_id, segments[3:], raw)
    if root == "item":
        return _ParsedReference("item", None, segments[1:], raw)
    if root == "item_index":
        if len(segments) > 1:
            return _ParseError(raw, f"invalid reference {raw}: ${{item_index}} has no path")
        return _ParsedReference("item_index", None, (), raw)
    return _ParseError(raw, f"invalid reference {raw}: unknown root '{root}', {_USAGE}")


_CACHED_TEMPLATE_LENGTH = 1024  # long texts (documents) are parsed without caching


def _parse_template(text: str) -> tuple[_Part, ...]:
    """Split a string into literal text and references.

    Short templates are cached: every run of a definition resolves the same ones.
    """
    if len(text) <= _CACHED_TEMPLATE_LENGTH:
        return _parse_template_cached(text)
    return _split_template(text)


@functools.lru_cache(maxsize=4096)
def _parse_template_cached(text: str) -> tuple[_Part, ...]:
    return _split_template(text)


def _split_template(text: str) -> tuple[_Part, ...]:
    parts: list[_Part] = []
    literal: list[str] = []
    pos = 0
    while True:
        dollar = text.find("$", pos)
        if dollar < 0:
            literal.append(text[pos:])
            break
        if text.startswith("$${", dollar):
            literal.append(text[pos:dollar] + "${")
            pos = dollar + 3
            continue
        if not text.startswith("${", dollar):
            literal.append(text[pos : dollar + 1])
            pos = dollar + 1
            continue
        literal.append(text[pos:dollar])
        if any(literal):
            parts.append("".join(literal))
        literal = []
        end = text.find("}", dollar + 2)
        if end < 0:
            raw = text[dollar:]
            parts.append(_ParseError(raw, f"unterminated reference {raw} (write $${{ for ${{)"))
            pos = len(text)
            continue
        parts.append(_parse_expression(text[dollar : end + 1]))
        pos = end + 1
    tail = "".join(literal)
    if tail:
        parts.append(tail)
    return tuple(parts)


# --------------------------------------------------------------------------- discovery


def scan_references(value: Any, *, location: str = "") -> ReferenceScan:
    """Walk a JSON-like value and collect every reference and every malformed one.

    Args:
        value: Dicts, lists and scalars (a step input as produced by ``MessageToDict``).
        location: Field path of ``value`` itself; locations found below extend it.

    Returns:
        The well-formed references and the malformed ones, in document order.
    """
    scan = ReferenceScan([], [])
    _scan(value, location, scan)
    return scan


def _scan(value: Any, location: str, scan: ReferenceScan) -> None:
    if isinstance(value, str):
        if "$" not in value:
            return
        for part in _parse_template(value):
            if isinstance(part, _ParsedReference):
                scan.references.append(
                    Reference(part.source, part.step_id, part.path, location, part.raw)
                )
            elif isinstance(part, _ParseError):
                scan.errors.append(MalformedReference(location, part.raw, part.message))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _scan(item, join_location(location, str(key)), scan)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _scan(item, join_location(location, index), scan)


def find_references(value: Any, *, location: str = "") -> list[Reference]:
    """Return every reference inside a JSON-like value, in document order.

    Raises:
        ReferenceSyntaxError: Some ``${...}`` is malformed; ``errors`` lists each one
            (use :func:`scan_references` to get both lists without raising).
    """
    scan = scan_references(value, location=location)
    if scan.errors:
        raise ReferenceSyntaxError(scan.errors)
    return scan.references


# --------------------------------------------------------------------------- resolution


class _PathError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _walk(value: Any, path: Sequence[PathSegment], root: str) -> Any:
    """Follow ``path`` from ``value``; raise ``_PathError`` naming the failing prefix."""
    walked = root
    current = value
    for segment in path:
        here = walked + format_path((segment,))
        if isinstance(current, Mapping):
            if isinstance(segment, int):
                raise _PathError(f"{here}: cannot index an object with [{segment}]")
            if segment not in current:
                keys = sorted(str(k) for k in current)
                hint = ""
                if keys and len(keys) <= 10:
                    hint = f" (keys: {', '.join(keys)})"
                elif not keys:
                    hint = " (the object is empty)"
                raise _PathError(f"{here}: key '{segment}' not found{hint}")
            current = current[segment]
        elif isinstance(current, list | tuple):
            if isinstance(segment, str):
                if not segment.isdigit():
                    raise _PathError(f"{here}: cannot read key '{segment}' of an array")
                segment = int(segment)
            if segment >= len(current):
                raise _PathError(
                    f"{here}: index {segment} out of range (list has {len(current)} items)"
                )
            current = current[segment]
        else:
            what = f"index [{segment}]" if isinstance(segment, int) else f"key '{segment}'"
            raise _PathError(f"{here}: cannot read {what} of {_json_type(current)} value")
        walked = here
    return current


def lookup(value: Any, path: Sequence[PathSegment], *, root: str = "") -> Any:
    """Return the value at ``path`` inside ``value``.

    Digit keys also index arrays (``items.0`` is ``items[0]``).

    Raises:
        LookupError: The path does not exist; the message names the failing prefix
            (written after ``root``) and why.
    """
    try:
        return _walk(value, path, root)
    except _PathError as error:
        raise LookupError(error.reason) from None


def resolve(
    value: Any,
    *,
    run_input: Any,
    step_outputs: Mapping[str, Any],
    item: tuple[Any, int] | None = None,
) -> Any:
    """Return ``value`` with every reference replaced.

    Containers are rebuilt (the input is not modified), but referenced values are
    inserted as they are, not copied: treat the result as read-only.

    Args:
        value: A JSON-like value (a step's input).
        run_input: The run's input, the root of ``${run.input...}``.
        step_outputs: Output of each finished step by id. A step present with ``None``
            (a skipped step) resolves to null whatever the path.
        item: The item and its index, for ``${item...}`` and ``${item_index}`` (in a
            ``for_each`` step's input); None: those references are missing.

    Raises:
        MissingReferenceError: A referenced path or step output does not exist.
        ReferenceSyntaxError: A malformed reference (validation rejects these first).
    """
    return _resolve(value, "", run_input, step_outputs, item)


_Item: TypeAlias = tuple[Any, int] | None


def _resolve(
    value: Any, location: str, run_input: Any, outputs: Mapping[str, Any], item: _Item = None
) -> Any:
    if isinstance(value, str):
        if "$" not in value:
            return value
        return _resolve_string(value, location, run_input, outputs, item)
    if isinstance(value, Mapping):
        return {
            key: _resolve(child, join_location(location, str(key)), run_input, outputs, item)
            for key, child in value.items()
        }
    if isinstance(value, list | tuple):
        return [
            _resolve(child, join_location(location, index), run_input, outputs, item)
            for index, child in enumerate(value)
        ]
    return value


def _resolve_string(
    text: str, location: str, run_input: Any, outputs: Mapping[str, Any], item: _Item
) -> Any:
    parts = _parse_template(text)
    if len(parts) == 1 and isinstance(parts[0], _ParsedReference):
        return _lookup_reference(parts[0], location, run_input, outputs, item)
    pieces: list[str] = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
        elif isinstance(part, _ParseError):
            raise ReferenceSyntaxError([MalformedReference(location, part.raw, part.message)])
        else:
            found = _lookup_reference(part, location, run_input, outputs, item)
            pieces.append(found if isinstance(found, str) else _compact_json(found))
    return "".join(pieces)


def _lookup_reference(
    ref: _ParsedReference, location: str, run_input: Any, outputs: Mapping[str, Any], item: _Item
) -> Any:
    root_text = _root_text(ref.source, ref.step_id)
    try:
        if ref.source == "run":
            return _walk(run_input, ref.path, root_text)
        if ref.source in ("item", "item_index"):
            if item is None:
                raise _PathError(f"{root_text}: only defined in the input of a for_each step")
            if ref.source == "item_index":
                return item[1]
            return _walk(item[0], ref.path, root_text)
        assert ref.step_id is not None
        if ref.step_id not in outputs:
            raise _PathError(
                f"{root_text}: step '{ref.step_id}' has no output "
                "(it is not upstream or has not finished)"
            )
        output = outputs[ref.step_id]
        if output is None:  # skipped step: dependents see null
            return None
        return _walk(output, ref.path, root_text)
    except _PathError as error:
        reference = Reference(ref.source, ref.step_id, ref.path, location, ref.raw)
        raise MissingReferenceError(reference, location, error.reason) from None


def _compact_json(value: Any) -> str:
    return json.dumps(
        normalize_numbers(value), separators=(",", ":"), ensure_ascii=False, default=str
    )


# --------------------------------------------------------------------------- numbers


def normalize_numbers(value: Any) -> Any:
    """Return ``value`` with integral floats (``3.0``) turned back into ints (``3``).

    ``google.protobuf.Struct`` stores every number as a double, so ``MessageToDict`` yields
    ``3.0`` for an author's ``3``. Only floats within +-2**53 (exactly representable
    integers) are converted; NaN, infinities and fractions are left as they are.
    Containers are rebuilt (dicts and lists; tuples become lists).
    """
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) <= _MAX_SAFE_INTEGER:
            return int(value)
        return value
    if isinstance(value, Mapping):
        return {key: normalize_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [normalize_numbers(item) for item in value]
    return value
