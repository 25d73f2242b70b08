"""Storage exceptions: the only errors that leave the storage layer.

asyncpg exceptions are translated here (see :func:`translate_errors`), so the engine and
the API never depend on the driver. Each error keeps the SQLSTATE and, for integrity
errors, the constraint name, so callers can tell which uniqueness rule was hit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

__all__ = [
    "Conflict",
    "DefinitionArchived",
    "MigrationError",
    "StorageError",
    "StorageUnavailable",
    "from_driver_error",
    "translate_errors",
]


class StorageError(Exception):
    """Base class of every storage error.

    Attributes:
        sqlstate: the PostgreSQL SQLSTATE code, when the error came from the server.
        constraint: the name of the violated constraint, for integrity errors.
    """

    def __init__(
        self, message: str, *, sqlstate: str | None = None, constraint: str | None = None
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.constraint = constraint


class StorageUnavailable(StorageError):
    """The database cannot be reached (refused, lost connection, shutting down, timeout).

    Usually transient: the caller may retry later or report UNAVAILABLE.
    """


class Conflict(StorageError):
    """The change conflicts with existing data or a concurrent transaction.

    Raised for unique and exclusion violations (``constraint`` names the rule),
    serialization failures and deadlocks.
    """


class DefinitionArchived(Conflict):
    """A new version was requested for a definition name that is archived."""


class MigrationError(StorageError):
    """The database schema cannot be brought to the version this code expects.

    Raised when an applied migration was edited (checksum mismatch), when the database
    has a migration this code does not know (it is newer than the code), when it was
    made by the migrations that ``0001_baseline`` replaced (it must be recreated), or
    when a migration or function file is misnamed.
    """


# SQLSTATE classes that mean "the server or the connection is not usable right now":
# 08 connection exception, 53 insufficient resources (too many connections, disk full),
# 57P0x operator intervention (admin shutdown, cannot connect now), 58 system error.
# Class 57 includes 57014 query_canceled (statement_timeout / lock_timeout expired).
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
# 23505 unique_violation, 23P01 exclusion_violation, 40001 serialization_failure,
# 40P01 deadlock_detected.
_CONFLICT_STATES = ("23505", "23P01", "40001", "40P01")


def from_driver_error(exc: BaseException) -> StorageError:
    """Map a driver or network exception to the matching :class:`StorageError`."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        # Also covers client-side connection errors (ConnectionDoesNotExistError,
        # ClientCannotConnectError), which asyncpg files under SQLSTATE class 08.
        sqlstate: str | None = exc.sqlstate
        constraint: str | None = getattr(exc, "constraint_name", None)
        message = str(exc) or type(exc).__name__
        if sqlstate in _CONFLICT_STATES:
            return Conflict(message, sqlstate=sqlstate, constraint=constraint)
        if sqlstate is not None and sqlstate[:2] in _UNAVAILABLE_CLASSES:
            return StorageUnavailable(message, sqlstate=sqlstate)
        return StorageError(message, sqlstate=sqlstate, constraint=constraint)
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):
        return StorageError(f"invalid database configuration: {exc}")
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "pool is closing/closed" mean the database went away
        # under us; anything else (bad argument types, misuse) is a plain error.
        if "closed" in str(exc) or "closing" in str(exc):
            return StorageUnavailable(str(exc))
        return StorageError(str(exc))
    if isinstance(exc, OSError):
        # Refused / reset connections, DNS failures and TimeoutError (connect timeout or
        # command_timeout expiring; asyncio.TimeoutError is TimeoutError, an OSError).
        return StorageUnavailable(str(exc) or type(exc).__name__)
    return StorageError(f"{type(exc).__name__}: {exc}")


_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise driver exceptions raised in the block as :class:`StorageError`.

    Works around ``await`` expressions too::

        with translate_errors():
            await conn.execute(QUERIES["..."], ...)
    """
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise from_driver_error(exc) from exc
