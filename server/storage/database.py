"""The connection pool: one :class:`Database` per process, shared by every repository."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .errors import StorageError, StorageUnavailable, from_driver_error, translate_errors
from .queries import QUERIES

__all__ = [
    "Connection",
    "Database",
    "DirectConnection",
    "JsonText",
    "connect_direct",
    "json_dumps",
]

_logger = logging.getLogger(__name__)

# Strings: asyncpg's classes are generic only in its type stubs.
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
"""A pooled connection, as handed out by :meth:`Database.connection` / ``transaction``."""
DirectConnection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
"""A connection outside the pool, as returned by :func:`connect_direct`."""

# asyncpg's default: the prepared statements kept per connection.
_STATEMENT_CACHE_SIZE = 100
# How long close() waits for borrowed connections to come back before terminating them.
_CLOSE_TIMEOUT_SECONDS = 10.0


class JsonText(str):
    """JSON text already encoded by :func:`json_dumps`, which passes it on as is: a
    json/jsonb parameter the caller encoded once for many statements (StartRun's run
    templates, ``engine/plan.py``)."""

    __slots__ = ()


_COMPACT = json.JSONEncoder(separators=(",", ":"))
# json.dumps with any argument builds a new JSONEncoder on every call.


def json_dumps(value: Any) -> str:
    """Encode a value as compact JSON, as stored in json/jsonb columns (a
    :class:`JsonText` is JSON already)."""
    if type(value) is JsonText:
        return value
    return _COMPACT.encode(value)


async def _init_connection(conn: DirectConnection) -> None:
    """Per-connection setup: json and jsonb columns exchange Python dicts and lists."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            schema="pg_catalog",
            encoder=json_dumps,
            decoder=json.loads,
            format="text",
        )


async def _keep_session(conn: DirectConnection) -> None:
    """Pool release hook that sends nothing.

    asyncpg's default runs ``RESET ALL; UNLISTEN *; CLOSE ALL; advisory unlock all`` on
    every release: a round trip per borrowed connection (15% of the engine's socket
    sends in the benchmark). Pooled connections never carry session state here:
    advisory locks are transaction-scoped, LISTEN and the migrator's session lock use
    connections of their own (``connect_direct``), and nobody SETs session variables.
    A connection released inside a failed transaction is still terminated by asyncpg.
    """


def _connect_error(exc: Exception) -> StorageError:
    """Map a failure to open a connection to a storage error."""
    if isinstance(exc, (asyncpg.PostgresError, OSError)):
        # Any server refusal while connecting means the database is not usable here:
        # 28xxx bad credentials, 3D000 unknown database, 53300 too many connections, ...
        return StorageUnavailable(
            f"cannot connect to the database: {exc}",
            sqlstate=getattr(exc, "sqlstate", None),
        )
    if isinstance(exc, (asyncpg.InterfaceError, ValueError)):
        return StorageError(f"invalid database URL: {exc}")
    return from_driver_error(exc)


async def connect_direct(dsn: str, *, command_timeout: float | None = None) -> DirectConnection:
    """Open one connection outside any pool (migrations, LISTEN), with JSON codecs.

    The caller closes it. Raises like :meth:`Database.connect`.
    """
    try:
        conn: DirectConnection = await asyncpg.connect(dsn, command_timeout=command_timeout)
    except Exception as exc:
        raise _connect_error(exc) from exc
    try:
        with translate_errors():
            await _init_connection(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


class Database:
    """An asyncpg connection pool with JSON codecs and storage error mapping.

    Create with :meth:`connect`; close with :meth:`close`. Repositories borrow
    connections with :meth:`connection` or :meth:`transaction`, which translate driver
    errors into :mod:`.errors` exceptions, or use :attr:`pool` directly and wrap calls
    in :func:`.errors.translate_errors`.
    """

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool
        self._closed = False

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 30,
        prepared_statements: bool = True,
    ) -> Database:
        """Open a pool to ``dsn`` (a ``postgresql://`` URL).

        ``prepared_statements=False`` keeps no named prepared statements on the server
        (asyncpg's statement cache off: each query is parsed in an unnamed statement),
        which a transaction pooler needs: the next transaction may run on another
        server connection, where a named statement does not exist.

        Raises:
            StorageUnavailable: the server cannot be reached or refuses the connection
                (down, unknown database, bad credentials, too many connections).
            StorageError: the URL is malformed.
        """
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                init=_init_connection,
                reset=_keep_session,
                statement_cache_size=_STATEMENT_CACHE_SIZE if prepared_statements else 0,
            )
        except Exception as exc:
            raise _connect_error(exc) from exc
        _logger.debug("database pool open (min_size=%d, max_size=%d)", min_size, max_size)
        return cls(pool)

    @property
    def pool(self) -> asyncpg.Pool[asyncpg.Record]:
        """The underlying asyncpg pool (wrap its calls in ``translate_errors()``)."""
        return self._pool

    async def ping(self) -> None:
        """Run a trivial query; raise :class:`StorageUnavailable` if it fails."""
        try:
            async with self._pool.acquire() as conn:
                await conn.fetchval(QUERIES["ping"])
        except Exception as exc:
            error = from_driver_error(exc)
            if isinstance(error, StorageUnavailable):
                raise error from exc
            raise StorageUnavailable(f"database ping failed: {error}") from exc

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """Borrow a connection (autocommit); driver errors become storage errors."""
        with translate_errors():
            async with self._pool.acquire() as conn:
                yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """Borrow a connection inside a transaction, committed when the block exits
        normally and rolled back on an exception; driver errors become storage errors."""
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn

    async def close(self) -> None:
        """Close the pool, waiting briefly for borrowed connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_SECONDS):
                await self._pool.close()
        except TimeoutError:
            _logger.warning(
                "database pool did not close within %.0fs; terminating connections",
                _CLOSE_TIMEOUT_SECONDS,
            )
            self._pool.terminate()
