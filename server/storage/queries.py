"""Named SQL statements, loaded once from the ``*.sql`` files of this package.

``queries.sql`` holds the general statements, ``runs.sql``, ``agents.sql`` ... one file
per table group; the SQL functions (``functions/*.sql``) are not query files: the
migrator applies them (:mod:`.migrations`). Each statement
sits under a ``-- name --`` header line; files are split with one regular expression
and callers use ``QUERIES["name"]`` (names are unique across files). Statements take
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
            raise ValueError(f"duplicate query name: {name!r}")
        statement = body.strip()
        if not statement:
            raise ValueError(f"empty query: {name!r}")
        queries[name] = statement
    return queries


def _load() -> Mapping[str, str]:
    package = importlib.resources.files(__package__ or "podium.server.storage")
    queries: dict[str, str] = {}
    for entry in sorted(package.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, statement in parse_queries(entry.read_text(encoding="utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice ({entry.name})")
            queries[name] = statement
    return MappingProxyType(queries)


QUERIES: Mapping[str, str] = _load()
"""Every storage statement by name (read-only)."""
