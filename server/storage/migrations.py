"""Forward-only schema migrations.

Migrations are the files ``migrations/NNNN_name.sql`` of the ``podium.migrations``
package. :func:`migrate` applies the missing ones in numeric order, each in its own
transaction, and records each in ``schema_migrations`` with the SHA-256 of its file.

Several servers may start at once: :func:`migrate` holds a session-level advisory lock
(:data:`MIGRATION_LOCK_ID`) on its own connection for the whole call, so each
migration is applied exactly once. It refuses to run (raising
:class:`~.errors.MigrationError`) when an applied migration's file changed, when the
database has a migration this code does not know (the database is newer than the
code), or when a missing migration is older than an applied one.

A migration runs inside a transaction: it cannot use ``CREATE INDEX CONCURRENTLY`` or
other statements that refuse to run in one.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .database import DirectConnection, connect_direct
from .errors import MigrationError, translate_errors
from .queries import QUERIES

__all__ = [
    "MIGRATIONS_PACKAGE",
    "MIGRATION_LOCK_ID",
    "Migration",
    "load_migrations",
    "migrate",
    "pending_migrations",
]

_logger = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "podium.migrations"
"""The package whose ``*.sql`` files are the migrations."""

MIGRATION_LOCK_ID = 0x706F_6469_756D_0001
"""The advisory lock key of the migrator: b"podium" followed by 0x0001."""

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    """One migration file.

    Attributes:
        version: the number before the first underscore (``1`` for ``0001_initial``).
        name: the file name without ``.sql`` (``0001_initial``).
        sql: the file's text, executed as one multi-statement script.
        checksum: SHA-256 (hex) of the file's bytes.
    """

    version: int
    name: str
    sql: str
    checksum: str


def load_migrations() -> list[Migration]:
    """Read every migration of :data:`MIGRATIONS_PACKAGE`, sorted by version.

    Raises:
        MigrationError: a ``.sql`` file is misnamed, or two files share a version.
    """
    migrations: dict[int, Migration] = {}
    for entry in importlib.resources.files(MIGRATIONS_PACKAGE).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is not named NNNN_lowercase_name.sql"
            )
        data = entry.read_bytes()
        migration = Migration(
            version=int(match.group(1)),
            name=entry.name.removesuffix(".sql"),
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
        if migration.version in migrations:
            other = migrations[migration.version].name
            raise MigrationError(
                f"migrations {other} and {migration.name} share version {migration.version}"
            )
        migrations[migration.version] = migration
    return [migrations[version] for version in sorted(migrations)]


@dataclass(frozen=True)
class _Applied:
    version: int
    name: str
    checksum: str


async def _applied_migrations(conn: DirectConnection) -> list[_Applied] | None:
    """The rows of schema_migrations, or None when the table does not exist yet."""
    if not await conn.fetchval(QUERIES["schema_migrations_exists"]):
        return None
    rows = await conn.fetch(QUERIES["list_applied_migrations"])
    return [_Applied(row["version"], row["name"], row["checksum"]) for row in rows]


def _pending(migrations: Sequence[Migration], applied: Sequence[_Applied]) -> list[Migration]:
    """The migrations to apply, after checking the applied ones against the files."""
    known = {migration.version: migration for migration in migrations}
    for row in applied:
        migration = known.get(row.version)
        if migration is None:
            latest = migrations[-1].name if migrations else "none"
            raise MigrationError(
                f"the database has migration {row.name} (version {row.version}), which "
                f"this code does not know (its latest is {latest}): the database is "
                "newer than this Podium version; upgrade Podium"
            )
        if migration.checksum != row.checksum:
            raise MigrationError(
                f"migration {migration.name} changed after it was applied (checksum "
                f"{row.checksum[:12]} in the database, {migration.checksum[:12]} in the "
                "file): migrations are forward-only, add a new one instead"
            )
    applied_versions = {row.version for row in applied}
    pending = [m for m in migrations if m.version not in applied_versions]
    if pending and applied_versions and pending[0].version < max(applied_versions):
        raise MigrationError(
            f"migration {pending[0].name} is not applied but a later one (version "
            f"{max(applied_versions)}) is: migrations must be applied in order"
        )
    return pending


async def _close(conn: DirectConnection) -> None:
    # Closing the session also releases its advisory lock.
    try:
        await conn.close(timeout=5)
    except Exception:
        conn.terminate()


async def migrate(dsn: str) -> list[str]:
    """Apply the pending migrations to the database at ``dsn``.

    Returns the names of the migrations applied by this call (empty when the schema
    was current). Safe to call from several processes at once.

    Raises:
        MigrationError: the database and the migration files disagree (see module doc).
        StorageUnavailable: the database cannot be reached.
        StorageError: a migration failed (its transaction is rolled back; migrations
            applied before it stay applied).
    """
    migrations = load_migrations()
    conn = await connect_direct(dsn)
    try:
        with translate_errors():
            if not await conn.fetchval(QUERIES["migration_try_lock"], MIGRATION_LOCK_ID):
                _logger.info("another process is migrating the database; waiting for it")
                await conn.fetchval(QUERIES["migration_lock"], MIGRATION_LOCK_ID)
            applied = await _applied_migrations(conn)
            if applied is None:
                await conn.execute(QUERIES["create_schema_migrations"])
                applied = []
            pending = _pending(migrations, applied)
            done: list[str] = []
            for migration in pending:
                started = time.monotonic()
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        QUERIES["record_migration"],
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                _logger.info(
                    "applied migration %s in %.0f ms",
                    migration.name,
                    (time.monotonic() - started) * 1000,
                )
                done.append(migration.name)
            if not done:
                _logger.debug("database schema is current")
            return done
    finally:
        await _close(conn)


async def pending_migrations(dsn: str) -> list[str]:
    """Names of the migrations :func:`migrate` would apply to the database at ``dsn``.

    Raises:
        MigrationError: the database and the migration files disagree.
        StorageUnavailable: the database cannot be reached.
    """
    migrations = load_migrations()
    conn = await connect_direct(dsn)
    try:
        with translate_errors():
            applied = await _applied_migrations(conn)
        return [m.name for m in _pending(migrations, applied or [])]
    finally:
        await _close(conn)
