"""The system under test: a fresh benchmark database on a PostgreSQL server, a real
``PodiumServer`` in this process, and the machine's description."""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

if TYPE_CHECKING:
    from podium.server.app import PodiumServer
    from podium.server.config import Settings


DB_PREFIX = os.environ.get("PODIUM_BENCH_DB_PREFIX", "podium_bench_")
"""Name prefix of the benchmark databases (PODIUM_BENCH_DB_PREFIX: on a shared server,
each person's own prefix); letters, digits and underscores."""


async def create_database(admin: asyncpg.Connection[Any], server_url: str) -> tuple[str, str]:
    if not DB_PREFIX.replace("_", "").isalnum():
        raise ValueError(f"PODIUM_BENCH_DB_PREFIX must be letters, digits and _: {DB_PREFIX!r}")
    name = f"{DB_PREFIX}{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return name, urlunsplit(urlsplit(server_url)._replace(path="/" + name))


async def machine_info(admin: asyncpg.Connection[Any]) -> dict[str, Any]:
    settings = {
        r["name"]: r["setting"]
        for r in await admin.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            ["fsync", "synchronous_commit", "jit", "shared_buffers", "shared_preload_libraries"],
        )
    }
    import google.protobuf

    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "asyncpg": asyncpg.__version__,
        "event_loop": type(asyncio.get_running_loop()).__module__,
        "postgres": await admin.fetchval("SHOW server_version"),
        "postgres_settings": settings,
    }


async def drop_database(admin: asyncpg.Connection[Any], name: str) -> None:
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def podium_settings(dsn: str, agents: str, **overrides: Any) -> Settings:
    """The benchmarks' server settings: database ``dsn``, static agents ``agents``
    (``name=host:port,...``), a free port on 127.0.0.1, warnings only, no shutdown
    grace, authentication disabled; ``overrides`` are further ``Settings`` fields."""
    from podium.server.config import Settings

    values: dict[str, Any] = {
        "database_url": dsn,
        "listen_address": "127.0.0.1:0",
        "agents": agents,
        "agent_allowed_networks": "loopback",  # the benchmark agents listen on 127.0.0.1
        "log_level": "warning",
        "shutdown_grace_seconds": 0.0,
        # A database URL turns authentication on (PODIUM_AUTH=auto); the benchmarks
        # call without keys, on a server of their own on loopback.
        "auth": "disabled",
    }
    return Settings.from_env({}, **{**values, **overrides})


def podium_server(settings: Settings) -> PodiumServer:
    """A ``PodiumServer`` (not started) in this process."""
    from podium.server.app import PodiumServer

    return PodiumServer(settings)
