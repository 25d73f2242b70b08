"""Create or drop a throwaway database for the Node tests (run with the repo's .venv).

    python database.py create SERVER_URL    -> prints the URL of a new empty database
    python database.py drop DATABASE_URL    -> drops it (closing its connections)

SERVER_URL is a superuser URL such as PODIUM_TEST_DATABASE_URL
(postgresql://postgres@127.0.0.1:5432/postgres). Podium migrates the new database
itself when it starts. Names are ``podium_node_`` + 8 hex digits, checked before use
since identifiers cannot be bound as parameters.
"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_NAME = re.compile(r"podium_node_[0-9a-f]{8}")


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


async def _create(server_url: str) -> str:
    name = f"podium_node_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    return _with_database(server_url, name)


async def _drop(database_url: str) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    if not _NAME.fullmatch(name):
        raise SystemExit(f"refusing to drop {name!r}: not a database of the Node tests")
    conn = await asyncpg.connect(_with_database(database_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("create", "drop"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "create":
        print(asyncio.run(_create(sys.argv[2])))
    else:
        asyncio.run(_drop(sys.argv[2]))


if __name__ == "__main__":
    main()
