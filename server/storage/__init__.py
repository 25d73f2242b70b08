"""Storage: asyncpg repositories, migrations and the embedded PostgreSQL.

The service's SQL outside the numbered migrations (top-level ``migrations/``) lives in
this package: named statements in ``*.sql`` (``queries.sql`` for the general ones, one
file per table group besides, loaded by :mod:`.queries`) and the SQL functions of the
state machine in ``functions/NN_area.sql`` (applied by :mod:`.migrations`). Driver
exceptions are translated into :mod:`.errors` exceptions before they leave it.
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
