"""Translate storage exceptions into engine errors at the engine boundary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from podium.server.engine.errors import AlreadyExists, FailedPrecondition, Unavailable
from podium.server.storage import errors as storage


@asynccontextmanager
async def storage_errors() -> AsyncIterator[None]:
    """Re-raise storage failures as the engine errors the API knows how to report."""
    try:
        yield
    except storage.DefinitionArchived as exc:
        raise FailedPrecondition(str(exc), reason="DEFINITION_ARCHIVED") from exc
    except storage.Conflict as exc:
        raise AlreadyExists(str(exc), reason="CONFLICT") from exc
    except storage.StorageUnavailable as exc:
        raise Unavailable(
            "the database is unavailable; retry later", reason="DATABASE_UNAVAILABLE"
        ) from exc
