"""Shared fixtures: a PostgreSQL server, a migrated template database, and a fresh
database per test cloned from it (``CREATE DATABASE ... TEMPLATE``), so tests never
share state and never pay for migrations.

Set ``PODIUM_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``,
a superuser on a maintenance database) to use an existing server; otherwise an embedded
PostgreSQL is started once per session in a temporary directory.

Under pytest-xdist each worker is a session of its own: it migrates its own template
database (unique name) and, without ``PODIUM_TEST_DATABASE_URL``, starts its own embedded
PostgreSQL, so workers share nothing but the server of ``PODIUM_TEST_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import linecache
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from podium.server.storage.database import Database
from podium.server.storage.embedded import EmbeddedPostgres
from podium.server.storage.migrations import migrate

TEST_DATABASE_URL_ENV = "PODIUM_TEST_DATABASE_URL"
_TESTS_DIR = str(Path(__file__).parent)

CreateDatabase = Callable[..., Awaitable[str]]


def database_dsn(server_url: str, database: str) -> str:
    """``server_url`` with its database (the URL path) replaced by ``database``."""
    return urlunsplit(urlsplit(server_url)._replace(path="/" + database))


def quote_identifier(name: str) -> str:
    """Quote a database name for DDL.

    Identifiers cannot be bound as ``$1`` parameters, so the test harness is the one
    place that puts names into SQL text: they are built from a fixed prefix and uuid
    hex only, checked here, then quoted.
    """
    if not re.fullmatch(r"[a-z0-9_]{1,63}", name):
        raise ValueError(f"unexpected database name: {name!r}")
    return f'"{name}"'


def unique_database_name(prefix: str) -> str:
    """``<prefix>_<8 hex digits>``: unique across tests and concurrent sessions."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _event_loop_of(tb: TracebackType | None) -> asyncio.AbstractEventLoop | None:
    """The event loop whose frame a traceback passes through (``run_until_complete``)."""
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, asyncio.AbstractEventLoop):
            return candidate
        tb = tb.tb_next
    return None


def _await_chain(task: asyncio.Task[object]) -> list[str]:
    """A task's stack down its ``await`` chain (``Task.print_stack`` shows only the
    outermost coroutine), one "file, line, function / source" entry per frame."""
    lines: list[str] = []
    awaited: object = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        # f_lineno is None while a frame runs no line (e.g. between instructions of a
        # generator's setup): the entry then goes without its source.
        lineno = frame.f_lineno
        lines.append(f'  File "{code.co_filename}", line {lineno or "?"}, in {code.co_name}')
        if lineno is not None:
            lines.append(f"    {linecache.getline(code.co_filename, lineno).strip()}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a pytest-timeout timeout in an async test, add every pending asyncio task's
    stack to the report: the traceback itself only shows the event loop's select()."""
    report = yield
    excinfo = call.excinfo
    if excinfo is None or not excinfo.errisinstance(pytest.fail.Exception):
        return report
    if "from pytest-timeout" not in str(excinfo.value):
        return report
    loop = _event_loop_of(excinfo.tb)
    if loop is not None:
        chains = [[f"{task.get_name()}:", *_await_chain(task)] for task in asyncio.all_tasks(loop)]
        # The test's own tasks first: a long dump is cut in the middle by some readers,
        # and the await the test hangs on is the line that matters.
        chains.sort(key=lambda chain: not any(_TESTS_DIR in line for line in chain))
        lines = [line for chain in chains for line in chain]
        report.sections.append(("asyncio tasks at the timeout", "\n".join(lines)))
    return report


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A new directory for an embedded PostgreSQL's data, outside pytest's temporary
    root: pytest makes ``/tmp/pytest-of-<user>`` private (0700) whenever a pytest
    process starts, which would lock the server's own system user out of a data
    directory below it (the library opens the path up only when it starts)."""
    path = Path(tempfile.mkdtemp(prefix="podium-test-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, as a superuser."""
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    if url:
        yield url
        return
    path = Path(tempfile.mkdtemp(prefix="podium-test-pg-"))  # see embedded_data_dir
    server = EmbeddedPostgres(path)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def pg_admin(pg_server_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """One connection to the maintenance database, for CREATE/DROP DATABASE."""
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(pg_server_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _create_database(
    admin: asyncpg.Connection[asyncpg.Record], name: str, template: str | None = None
) -> None:
    if template is None:
        # template0: a pristine database, whatever was added to template1.
        await admin.execute(f"CREATE DATABASE {quote_identifier(name)} TEMPLATE template0")
    else:
        await admin.execute(
            f"CREATE DATABASE {quote_identifier(name)} TEMPLATE {quote_identifier(template)}"
        )


async def _drop_database(admin: asyncpg.Connection[asyncpg.Record], name: str) -> None:
    await admin.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")


@pytest.fixture(scope="session")
async def template_database(
    pg_server_url: str, pg_admin: asyncpg.Connection[asyncpg.Record]
) -> AsyncIterator[str]:
    """Name of a database migrated once per session, cloned by ``database_url``."""
    name = unique_database_name("podium_tmpl")
    await _create_database(pg_admin, name)
    try:
        await migrate(database_dsn(pg_server_url, name))
        yield name
    finally:
        await _drop_database(pg_admin, name)


@pytest.fixture
async def create_database(
    pg_server_url: str, pg_admin: asyncpg.Connection[asyncpg.Record]
) -> AsyncIterator[CreateDatabase]:
    """Factory: ``await create_database(template=None)`` makes a new database (empty
    when ``template`` is None) and returns its URL; all are dropped after the test."""
    created: list[str] = []

    async def create(template: str | None = None) -> str:
        name = unique_database_name("podium_t")
        await _create_database(pg_admin, name, template)
        created.append(name)
        return database_dsn(pg_server_url, name)

    try:
        yield create
    finally:
        for name in created:
            await _drop_database(pg_admin, name)


@pytest.fixture
async def database_url(create_database: CreateDatabase, template_database: str) -> str:
    """URL of a fresh, fully migrated database for this test only."""
    return await create_database(template_database)


@pytest.fixture
async def empty_database_url(create_database: CreateDatabase) -> str:
    """URL of a fresh database with no schema at all (for migration tests)."""
    return await create_database()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A :class:`Database` pool on this test's fresh database."""
    database = await Database.connect(database_url, max_size=10)
    try:
        yield database
    finally:
        await database.close()
