"""Shared fixtures: a PostgreSQL server, a migrated template database, and a fresh
database per test cloned from it (``CREATE DATABASE ... TEMPLATE``), so tests never
share state and never pay for migrations.

Set ``PODIUM_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``,
a superuser on a maintenance database) to use an existing server; otherwise an embedded
PostgreSQL is started once per session in a temporary directory.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from podium.server.storage.database import Database
from podium.server.storage.embedded import EmbeddedPostgres
from podium.server.storage.migrations import migrate

TEST_DATABASE_URL_ENV = "PODIUM_TEST_DATABASE_URL"

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


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, as a superuser."""
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    if url:
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("embedded-postgres"))
    try:
        yield server.start()
    finally:
        server.stop()


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
