"""Storage: asyncpg repositories, migrations and the embedded PostgreSQL.

All SQL of the service lives in this package (``queries.sql``); driver exceptions are
translated into :mod:`.errors` exceptions before they leave it.
"""

from .database import Database
from .definitions import DefinitionRecord, DefinitionsRepository
from .embedded import EmbeddedPostgres
from .errors import (
    Conflict,
    DefinitionArchived,
    MigrationError,
    StorageError,
    StorageUnavailable,
)
from .migrations import load_migrations, migrate, pending_migrations

__all__ = [
    "Conflict",
    "Database",
    "DefinitionArchived",
    "DefinitionRecord",
    "DefinitionsRepository",
    "EmbeddedPostgres",
    "MigrationError",
    "StorageError",
    "StorageUnavailable",
    "load_migrations",
    "migrate",
    "pending_migrations",
]
