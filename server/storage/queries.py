"""Named SQL statements, loaded once from ``queries.sql``.

Each statement in ``queries.sql`` sits under a ``-- name --`` header line; the file is
split with one regular expression and callers use ``QUERIES["name"]``. Statements take
``$1``-style parameters: SQL is never assembled from strings.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["QUERIES", "parse_queries"]

# A header is a whole line "-- name --"; the name is lowercase snake case.
_HEADER = re.compile(r"^-- ([a-z0-9_]+) --$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split the text of a queries file into ``{name: statement}``.

    Text before the first header (the file's preamble) is ignored; each statement is
    stripped of surrounding whitespace. Duplicate or empty statements are errors.
    """
    parts = _HEADER.split(text)
    # parts == [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name in queries.sql: {name!r}")
        statement = body.strip()
        if not statement:
            raise ValueError(f"empty query in queries.sql: {name!r}")
        queries[name] = statement
    return queries


def _load() -> Mapping[str, str]:
    text = (
        importlib.resources.files(__package__ or "podium.server.storage")
        .joinpath("queries.sql")
        .read_text(encoding="utf-8")
    )
    return MappingProxyType(parse_queries(text))


QUERIES: Mapping[str, str] = _load()
"""Every storage statement by name (read-only)."""
