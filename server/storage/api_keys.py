"""API keys repository (table ``api_keys``): only hashes of keys are stored; and the
step credentials of step attempts (``step_attempts.credential_hash``), hashes too.

A key is made and hashed by the engine (:mod:`podium.server.engine.api_keys`); this
module stores the hash, the public prefix, the organization and the role, and finds a
key by its hash. Creating a key for an organization that does not exist creates it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

import asyncpg

from .database import Database
from .queries import QUERIES

__all__ = ["ROLES", "ApiKeyRecord", "ApiKeysRepository", "Role", "StepAttemptRef"]

Role = Literal["admin", "operator", "viewer", "agent"]
"""What a key may call (column ``api_keys.role``; the permission table is in
``server/api/auth.py``)."""

ROLES: tuple[Role, ...] = ("admin", "operator", "viewer", "agent")


@dataclass(frozen=True)
class ApiKeyRecord:
    """One API key, as stored (never the key itself)."""

    id: uuid.UUID
    organization_id: str
    name: str
    prefix: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class StepAttemptRef:
    """The step attempt a step credential belongs to."""

    organization_id: str
    run_id: uuid.UUID
    step_id: str
    attempt: int


def _record(row: asyncpg.Record) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row["id"],
        organization_id=row["organization_id"],
        name=row["name"],
        prefix=row["key_prefix"],
        role=cast(Role, row["role"]),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class ApiKeysRepository:
    """Stores and finds API keys by hash."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, organization_id: str, name: str, prefix: str, key_hash: str, role: Role
    ) -> ApiKeyRecord:
        """Store a key (its hash), creating its organization when it does not exist."""
        async with self._db.transaction() as conn:
            await conn.execute(QUERIES["ensure_organization"], organization_id)
            row = await conn.fetchrow(
                QUERIES["insert_api_key"], organization_id, name, prefix, key_hash, role
            )
        assert row is not None
        return _record(row)

    async def find(self, key_hash: str) -> ApiKeyRecord | None:
        """The key whose hash is ``key_hash`` (revoked ones too), None when unknown."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["find_api_key"], key_hash)
        return None if row is None else _record(row)

    async def list(self, organization_id: str | None, limit: int) -> list[ApiKeyRecord]:
        """Keys of ``organization_id`` (every organization's when None), oldest first."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(QUERIES["list_api_keys"], organization_id, limit)
        return [_record(row) for row in rows]

    async def revoke(self, key: str) -> ApiKeyRecord | None:
        """Revoke the key whose id or prefix is ``key``; None when there is none."""
        try:
            key_id: uuid.UUID | None = uuid.UUID(key)
        except ValueError:
            key_id = None
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["revoke_api_key"], key_id, key)
        return None if row is None else _record(row)

    async def touch(self, key_id: uuid.UUID, at: datetime) -> None:
        """Set the key's ``last_used_at`` to ``at`` (callers throttle this)."""
        async with self._db.connection() as conn:
            await conn.execute(QUERIES["touch_api_key"], key_id, at)

    async def find_step_credential(self, credential_hash: str) -> StepAttemptRef | None:
        """The running step attempt whose credential hash is ``credential_hash``."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(QUERIES["find_step_credential"], credential_hash)
        if row is None:
            return None
        return StepAttemptRef(
            row["organization_id"], row["run_id"], row["step_id"], int(row["attempt"])
        )
