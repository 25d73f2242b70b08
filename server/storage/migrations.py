"""Forward-only schema migrations, then the repeatable SQL function files.

Two kinds of SQL files make the schema, applied by :func:`migrate` in this order:

1. Numbered migrations, ``migrations/NNNN_name.sql`` of the ``podium.migrations``
   package: DDL and data changes only (tables, indexes, constraints, comments, seed
   rows). Each is applied once, in numeric order, in its own transaction, and recorded
   in ``schema_migrations`` with the SHA-256 of its file. A landed migration is never
   edited: ``migrations/checksums.txt`` lists their SHA-256 and a unit test fails when a
   file no longer matches. ``0001_baseline`` holds the whole schema as of its writing.
2. Function files, ``server/storage/functions/NN_area.sql`` (:data:`FUNCTIONS_DIR`):
   the state machine's PL/pgSQL functions, each defined in exactly one file with
   ``CREATE OR REPLACE FUNCTION``, and the triggers that call them (``CREATE OR REPLACE
   TRIGGER``, next to their function). They are repeatable: a file is applied again
   whenever its SHA-256 differs from the one recorded in ``schema_functions`` (or it has
   none), and every file is applied again after a call that applied a migration (a
   migration may have dropped what a file defines, e.g. a trigger with its table). All
   the files to apply go in one transaction, in file name order (the two-digit
   prefix): functions call each other across files, so a change spread over several
   files lands at once, and servers never see half of it.

Function files come after the migrations because a trigger needs its table, and a
function whose signature changes needs a migration to drop the old one first. The
order of the files only matters for statements checked when they run (a trigger
needs its function, a ``LANGUAGE sql`` function the functions it calls); PL/pgSQL
bodies are checked when called. Consequences for authors:

- change a function: edit its body in its function file (nothing else);
- add a function: add it to the function file of its area (a new area: a new file
  whose prefix orders it after what its statements need);
- drop or rename a function, or change its arguments or result type: a new migration
  drops the old one (``DROP FUNCTION podium_x(argument types)``), and the function
  file defines the new one;
- a migration must not call a ``podium_*`` function: at that point the functions are
  those of the previous version (or none on a new database); inline the SQL instead.

Several servers may start at once: :func:`migrate` holds a session-level advisory lock
(:data:`MIGRATION_LOCK_ID`) on its own connection for the whole call, so each
migration and each function file is applied once. It refuses to run (raising
:class:`~.errors.MigrationError`) when an applied migration's file changed, when the
database has a migration this code does not know that is not an expand step (the
database is newer than the code), when a missing migration is older than an applied
one, or when the database was made by the migrations that ``0001_baseline`` replaced
(it must be recreated).

Rolling upgrades (expand/contract): a migration marked ``-- podium: expand`` in its
leading comments is one older code can run beside; the marker is recorded with it
(``schema_migrations.expand``). A database ahead of this code by expand steps only is
run on as it is: nothing is applied, and its function files (a newer release's) are
left alone. Each function file records the Podium version that applied it
(``schema_functions.podium_version``): a newer version's files are never replaced by
an older version's. The two columns are the migrator's own bookkeeping, added by it
(``upgrade_schema_bookkeeping``), not by a numbered migration.

A migration runs inside a transaction: it cannot use ``CREATE INDEX CONCURRENTLY`` or
other statements that refuse to run in one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources.abc import Traversable

from .database import DirectConnection, connect_direct
from .errors import MigrationError, translate_errors
from .queries import QUERIES

__all__ = [
    "FUNCTIONS_DIR",
    "FUNCTIONS_PACKAGE",
    "MIGRATIONS_PACKAGE",
    "MIGRATION_LOCK_ID",
    "FunctionFile",
    "Migration",
    "load_function_files",
    "load_migrations",
    "migrate",
    "pending_migrations",
]

_logger = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "podium.migrations"
"""The package whose ``*.sql`` files are the migrations."""

FUNCTIONS_PACKAGE = "podium.server.storage"
FUNCTIONS_DIR = "functions"
"""The function files are ``FUNCTIONS_DIR/NN_area.sql`` of :data:`FUNCTIONS_PACKAGE`."""

MIGRATION_LOCK_ID = 0x706F_6469_756D_0001
"""The advisory lock key of the migrator: b"podium" followed by 0x0001."""

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_FUNCTION_FILE_NAME = re.compile(r"(\d{2})_([a-z0-9_]+)\.sql")

# The migrations that 0001_baseline replaced before any release. A database that has
# them cannot be upgraded in place.
_SQUASHED = frozenset(
    {
        "0001_initial",
        "0002_engine",
        "0003_webhooks",
        "0004_failure_handling",
        "0005_cache",
        "0006_start_run",
    }
)

_RECREATE = (
    "the database was made by Podium's migrations from before 0001_baseline (it has "
    "{name}); they were replaced before any release and cannot be upgraded: recreate "
    "the database. With the embedded PostgreSQL (PODIUM_DATABASE_URL unset), stop "
    'Podium and delete its data: rm -rf "$PODIUM_DATA_DIR/pgdata" (the default data '
    "directory is the user data directory of 'podium', e.g. ~/.local/share/podium on "
    "Linux). With PODIUM_DATABASE_URL, drop that database and create it empty."
)


@dataclass(frozen=True)
class Migration:
    """One migration file.

    Attributes:
        version: the number before the first underscore (``1`` for ``0001_baseline``).
        name: the file name without ``.sql`` (``0001_baseline``).
        sql: the file's text, executed as one multi-statement script.
        checksum: SHA-256 (hex) of the file's bytes.
    """

    version: int
    name: str
    sql: str
    checksum: str
    expand: bool = False
    """Marked ``-- podium: expand`` in its leading comments: code that predates it runs
    against the database after it (rolling upgrades, module doc)."""


@dataclass(frozen=True)
class FunctionFile:
    """One function file (repeatable).

    Attributes:
        name: the file name without ``.sql`` (``30_runs``); files apply in name order.
        sql: the file's text, executed as one multi-statement script.
        checksum: SHA-256 (hex) of the file's bytes.
    """

    name: str
    sql: str
    checksum: str

    @property
    def unit(self) -> str:
        """How :func:`migrate` reports it: ``functions/30_runs``."""
        return f"{FUNCTIONS_DIR}/{self.name}"


def _sql_files(directory: Traversable) -> list[tuple[str, bytes]]:
    return sorted(
        (entry.name, entry.read_bytes())
        for entry in directory.iterdir()
        if entry.name.endswith(".sql")
    )


def load_migrations() -> list[Migration]:
    """Read every migration of :data:`MIGRATIONS_PACKAGE`, sorted by version.

    Raises:
        MigrationError: a ``.sql`` file is misnamed, or two files share a version.
    """
    migrations: dict[int, Migration] = {}
    for file_name, data in _sql_files(importlib.resources.files(MIGRATIONS_PACKAGE)):
        match = _FILE_NAME.fullmatch(file_name)
        if match is None:
            raise MigrationError(
                f"migration file {file_name!r} is not named NNNN_lowercase_name.sql"
            )
        sql = data.decode("utf-8")
        migration = Migration(
            version=int(match.group(1)),
            name=file_name.removesuffix(".sql"),
            sql=sql,
            checksum=hashlib.sha256(data).hexdigest(),
            expand=is_expand(sql),
        )
        if migration.version in migrations:
            other = migrations[migration.version].name
            raise MigrationError(
                f"migrations {other} and {migration.name} share version {migration.version}"
            )
        migrations[migration.version] = migration
    return [migrations[version] for version in sorted(migrations)]


def load_function_files() -> list[FunctionFile]:
    """Read every function file, sorted by name (the order :func:`migrate` applies them).

    Raises:
        MigrationError: a ``.sql`` file is misnamed.
    """
    directory = importlib.resources.files(FUNCTIONS_PACKAGE).joinpath(FUNCTIONS_DIR)
    files: list[FunctionFile] = []
    for file_name, data in _sql_files(directory):
        if _FUNCTION_FILE_NAME.fullmatch(file_name) is None:
            raise MigrationError(f"function file {file_name!r} is not named NN_lowercase_name.sql")
        files.append(
            FunctionFile(
                name=file_name.removesuffix(".sql"),
                sql=data.decode("utf-8"),
                checksum=hashlib.sha256(data).hexdigest(),
            )
        )
    return files


def is_expand(sql: str) -> bool:
    """Whether a migration's leading comment lines mark it ``-- podium: expand``."""
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            return False
        if stripped.removeprefix("--").strip() == "podium: expand":
            return True
    return False


def code_version() -> tuple[int, ...]:
    """This Podium's version as numbers (``0.1.0`` -> (0, 1, 0)); (0,) when unknown."""
    try:
        text = importlib.metadata.version("podium")
    except importlib.metadata.PackageNotFoundError:
        return (0,)
    return _version_tuple(text)


def _version_tuple(text: str | None) -> tuple[int, ...]:
    parts = []
    for part in (text or "0").split("."):
        digits = re.match(r"\d+", part)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


@dataclass(frozen=True)
class _Applied:
    version: int
    name: str
    checksum: str
    expand: bool = False


async def _applied_migrations(conn: DirectConnection) -> list[_Applied] | None:
    """The rows of schema_migrations, or None when the table does not exist yet."""
    if not await conn.fetchval(QUERIES["schema_migrations_exists"]):
        return None
    rows = await conn.fetch(QUERIES["list_applied_migrations"])
    return [_Applied(row["version"], row["name"], row["checksum"], row["expand"]) for row in rows]


async def _applied_function_files(conn: DirectConnection) -> dict[str, tuple[str, str | None]]:
    """(checksum, Podium version that applied it) by name of the function files applied
    (none before the table exists)."""
    if not await conn.fetchval(QUERIES["schema_functions_exists"]):
        return {}
    rows = await conn.fetch(QUERIES["list_applied_function_files"])
    return {row["name"]: (row["checksum"], row["podium_version"]) for row in rows}


def _ahead(migrations: Sequence[Migration], applied: Sequence[_Applied]) -> list[str]:
    """The applied migrations this code does not know, when every one of them is an
    expand step (the database is ahead, and this code may run on it); raise when one
    is not."""
    known = {migration.version for migration in migrations}
    unknown = [row for row in applied if row.version not in known]
    refused = [row.name for row in unknown if not row.expand]
    if refused:
        latest = migrations[-1].name if migrations else "none"
        raise MigrationError(
            f"the database has migration {', '.join(refused)}, which this code does not "
            f"know (its latest is {latest}) and which is not an expand step older code "
            "can run beside: the database is newer than this Podium version; upgrade Podium"
        )
    return [row.name for row in unknown]


def _pending(migrations: Sequence[Migration], applied: Sequence[_Applied]) -> list[Migration]:
    """The migrations to apply, after checking the applied ones against the files
    (applied migrations this code does not know were checked by :func:`_ahead`)."""
    known = {migration.version: migration for migration in migrations}
    for row in applied:
        if row.name in _SQUASHED:
            raise MigrationError(_RECREATE.format(name=row.name))
    for row in applied:
        migration = known.get(row.version)
        if migration is None:
            continue
        if migration.checksum != row.checksum or migration.name != row.name:
            raise MigrationError(
                f"migration {migration.name} changed after it was applied (recorded as "
                f"{row.name}, checksum {row.checksum[:12]} in the database, "
                f"{migration.checksum[:12]} in the file): migrations are forward-only, "
                "add a new one instead"
            )
    applied_versions = {row.version for row in applied if row.version in known}
    pending = [m for m in migrations if m.version not in applied_versions]
    if pending and applied_versions and pending[0].version < max(applied_versions):
        raise MigrationError(
            f"migration {pending[0].name} is not applied but a later one (version "
            f"{max(applied_versions)}) is: migrations must be applied in order"
        )
    return pending


def _changed(
    files: Sequence[FunctionFile], applied: dict[str, tuple[str, str | None]], everything: bool
) -> list[FunctionFile]:
    """The function files to apply: all of them, or those whose text changed."""
    return [f for f in files if everything or applied.get(f.name, ("", None))[0] != f.checksum]


def _newer_functions(applied: dict[str, tuple[str, str | None]]) -> str | None:
    """The Podium version that applied the database's function files, when it is newer
    than this code (its files must not be replaced by older ones); else None."""
    versions = [version for _, version in applied.values() if version]
    if not versions:
        return None
    newest = max(versions, key=_version_tuple)
    return newest if _version_tuple(newest) > code_version() else None


async def _apply_migrations(conn: DirectConnection, pending: Sequence[Migration]) -> None:
    for migration in pending:
        started = time.monotonic()
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                QUERIES["record_migration"],
                migration.version,
                migration.name,
                migration.checksum,
                migration.expand,
            )
        _logger.info(
            "applied migration %s in %.0f ms",
            migration.name,
            (time.monotonic() - started) * 1000,
        )


async def _apply_function_files(
    conn: DirectConnection, files: Sequence[FunctionFile], stale: Sequence[str]
) -> None:
    """Apply ``files`` and forget the records of removed files, in one transaction."""
    started = time.monotonic()
    version = ".".join(str(part) for part in code_version())
    async with conn.transaction():
        for function_file in files:
            await conn.execute(function_file.sql)
            await conn.execute(
                QUERIES["record_function_file"],
                function_file.name,
                function_file.checksum,
                version,
            )
        if stale:
            await conn.execute(QUERIES["forget_function_files"], list(stale))
    _logger.info(
        "applied function files %s in %.0f ms",
        ", ".join(f.name for f in files) or "(none)",
        (time.monotonic() - started) * 1000,
    )


async def _close(conn: DirectConnection) -> None:
    # Closing the session also releases its advisory lock.
    try:
        await conn.close(timeout=5)
    except Exception:
        conn.terminate()


async def migrate(dsn: str) -> list[str]:
    """Apply the pending migrations, then the changed function files, to ``dsn``.

    Returns what this call applied: migration names (``0001_baseline``) then function
    files (``functions/30_runs``); empty when the schema was current. Safe to call from
    several processes at once.

    Raises:
        MigrationError: the database and the migration files disagree (see module doc).
        StorageUnavailable: the database cannot be reached.
        StorageError: a migration or a function file failed (its transaction is rolled
            back; migrations applied before it stay applied).
    """
    migrations = load_migrations()
    function_files = load_function_files()
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
            if not await conn.fetchval(QUERIES["schema_functions_exists"]):
                await conn.execute(QUERIES["create_schema_functions"])
            await conn.execute(QUERIES["upgrade_schema_bookkeeping"])
            ahead = _ahead(migrations, applied)
            pending = _pending(migrations, applied)
            await _apply_migrations(conn, pending)
            applied_files = await _applied_function_files(conn)
            newer = _newer_functions(applied_files)
            if ahead or newer:
                # A newer Podium migrated this database (rolling upgrade): run on its
                # schema and leave its function files alone.
                _logger.warning(
                    "the database schema is ahead of this Podium version (%s); running "
                    "on it without changing its functions",
                    ", ".join(ahead) if ahead else f"function files of Podium {newer}",
                )
                changed: list[FunctionFile] = []
                stale: list[str] = []
            else:
                changed = _changed(function_files, applied_files, everything=bool(pending))
                names = {f.name for f in function_files}
                stale = sorted(name for name in applied_files if name not in names)
            if changed or stale:
                await _apply_function_files(conn, changed, stale)
            done = [m.name for m in pending] + [f.unit for f in changed]
            if not done:
                _logger.debug("database schema is current")
            return done
    finally:
        await _close(conn)


async def pending_migrations(dsn: str) -> list[str]:
    """What :func:`migrate` would apply to the database at ``dsn``, named as it reports.

    Raises:
        MigrationError: the database and the migration files disagree.
        StorageUnavailable: the database cannot be reached.
    """
    migrations = load_migrations()
    function_files = load_function_files()
    conn = await connect_direct(dsn)
    try:
        with translate_errors():
            applied = await _applied_migrations(conn)
            applied_files = await _applied_function_files(conn)
        ahead = _ahead(migrations, applied or [])
        pending = _pending(migrations, applied or [])
        if ahead or _newer_functions(applied_files):
            changed: list[FunctionFile] = []
        else:
            changed = _changed(function_files, applied_files, everything=bool(pending))
        return [m.name for m in pending] + [f.unit for f in changed]
    finally:
        await _close(conn)
