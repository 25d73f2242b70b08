"""Definitions repository: immutable, versioned orchestration definitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .database import Database
from .errors import DefinitionArchived
from .queries import QUERIES

__all__ = ["DefinitionHead", "DefinitionRecord", "DefinitionsRepository"]


@dataclass(frozen=True)
class DefinitionRecord:
    """One version of a named definition, as stored.

    Attributes:
        spec: the definition document (steps, execution, error handling) as JSON data.
        content_hash: a hash of the canonical spec, computed by the caller.
        archived: archiving marks every version of the name.
        create_time: when this version was created.
    """

    organization_id: str
    name: str
    version: int
    description: str
    spec: dict[str, Any]
    content_hash: str
    archived: bool
    create_time: datetime


@dataclass(frozen=True)
class DefinitionHead:
    """The latest version of a name without its spec: its number, content hash and the
    name's archived flag (archiving marks every version, and an archived name gets no
    new version, so the flag is every version's)."""

    version: int
    content_hash: str
    archived: bool


def _record(row: asyncpg.Record) -> DefinitionRecord:
    return DefinitionRecord(
        organization_id=row["organization_id"],
        name=row["name"],
        version=row["version"],
        description=row["description"],
        spec=row["spec"],
        content_hash=row["content_hash"],
        archived=row["archived"],
        create_time=row["created_at"],
    )


class DefinitionsRepository:
    """Create, read, list and archive definitions (table ``orchestration_definitions``).

    Versions of a name count 1, 2, ...; concurrent creates of one name are serialized
    by a transaction-scoped advisory lock on (organization, name), so each gets its own
    version. Errors are :mod:`.errors` exceptions.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        organization_id: str,
        name: str,
        *,
        description: str,
        spec: dict[str, Any],
        content_hash: str,
    ) -> DefinitionRecord:
        """Store ``spec`` as the next version of ``name`` (1 for a new name).

        Raises:
            DefinitionArchived: the name is archived.
            StorageError: e.g. the organization does not exist.
        """
        record, _ = await self._create(
            organization_id, name, description, spec, content_hash, reuse=False
        )
        return record

    async def create_or_reuse(
        self,
        organization_id: str,
        name: str,
        *,
        description: str,
        spec: dict[str, Any],
        content_hash: str,
    ) -> tuple[DefinitionRecord, bool]:
        """Like :meth:`create`, but when the latest version of ``name`` is not archived
        and has ``content_hash``, return it instead of storing a new one. Returns the
        record and whether it was created.

        Raises:
            DefinitionArchived: the name is archived.
            StorageError: e.g. the organization does not exist.
        """
        return await self._create(
            organization_id, name, description, spec, content_hash, reuse=True
        )

    async def _create(
        self,
        organization_id: str,
        name: str,
        description: str,
        spec: dict[str, Any],
        content_hash: str,
        *,
        reuse: bool,
    ) -> tuple[DefinitionRecord, bool]:
        async with self._db.transaction() as conn:
            await conn.execute(QUERIES["lock_definition_name"], organization_id, name)
            if reuse:
                head = await conn.fetchrow(QUERIES["latest_definition_head"], organization_id, name)
                if (
                    head is not None
                    and not head["archived"]
                    and head["content_hash"] == content_hash
                ):
                    latest = await conn.fetchrow(
                        QUERIES["get_definition_version"], organization_id, name, head["version"]
                    )
                    assert latest is not None  # versions are never deleted
                    return _record(latest), False
            row = await conn.fetchrow(
                QUERIES["create_definition"],
                organization_id,
                name,
                description,
                spec,
                content_hash,
            )
        if row is None:
            raise DefinitionArchived(f"definition {name!r} is archived")
        return _record(row), True

    async def get(
        self, organization_id: str, name: str, version: int | None = None
    ) -> DefinitionRecord | None:
        """One version of ``name`` (the latest when ``version`` is None), archived or
        not; None when it does not exist."""
        async with self._db.connection() as conn:
            if version is None:
                row = await conn.fetchrow(QUERIES["get_latest_definition"], organization_id, name)
            else:
                row = await conn.fetchrow(
                    QUERIES["get_definition_version"], organization_id, name, version
                )
        return None if row is None else _record(row)

    async def head(self, organization_id: str, name: str) -> DefinitionHead | None:
        """The latest version of ``name`` without its spec; None when the name does not
        exist."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["latest_definition_head"], organization_id, name)
        if row is None:
            return None
        return DefinitionHead(row["version"], row["content_hash"], row["archived"])

    async def list_latest(
        self,
        organization_id: str,
        *,
        after_name: str | None,
        limit: int,
        name_prefix: str | None,
        include_archived: bool,
    ) -> list[DefinitionRecord]:
        """The latest version of each name, ordered by name.

        Keyset paging: pass the last name of a page as ``after_name`` to get the next
        page. ``name_prefix`` is matched literally (``_`` and ``%`` are not wildcards).
        """
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                QUERIES["list_latest_definitions"],
                organization_id,
                after_name,
                name_prefix or None,
                include_archived,
                limit,
            )
        return [_record(row) for row in rows]

    async def archive(self, organization_id: str, name: str) -> DefinitionRecord | None:
        """Archive every version of ``name`` and return the latest (now archived);
        None when the name does not exist. Archiving twice is harmless."""
        async with self._db.transaction() as conn:
            await conn.execute(QUERIES["lock_definition_name"], organization_id, name)
            row = await conn.fetchrow(QUERIES["archive_definition"], organization_id, name)
        return None if row is None else _record(row)
