"""``podium keys``: create, list and revoke API keys, straight in the database.

Like ``hatchet-admin token create``, these commands talk to PostgreSQL
(``--database-url`` or ``PODIUM_DATABASE_URL``), not to a server: the first key of a
deployment is made this way, before anyone holds a key to call the server with. They
apply pending migrations first (as ``podium serve`` does), so a key can be made before
the first server starts. ``keys create --org ORG`` creates the organization when it
does not exist. The key is printed once; only its SHA-256 is stored.

This module imports the server package (storage and the engine's key service), as
``podium serve`` does; the rest of the client library does not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from podium.client.cli_output import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CliError, print_data

ROLES = ("admin", "operator", "viewer", "agent")


def add_keys_command(sub: Any) -> None:
    """The ``keys`` command group."""
    keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys (in the database: --database-url)",
        epilog="examples:\n"
        "  podium keys create --org acme --role admin --name ci\n"
        "  podium keys list --org acme\n"
        "  podium keys revoke 3f1c2a9b0d4e",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url", help="PostgreSQL URL of the Podium database [env PODIUM_DATABASE_URL]"
    )

    create = keys.add_parser(
        "create",
        parents=[common],
        help="make a key and print it once (only its hash is kept)",
        epilog="examples:\n  podium keys create --org acme --role admin --name ci\n"
        "  PODIUM_DATABASE_URL=postgresql://db/podium podium keys create --org a --role agent",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("--org", required=True, help="organization (created if it does not exist)")
    create.add_argument("--role", required=True, choices=ROLES, help="what the key may call")
    create.add_argument("--name", default="", help="a label shown in listings")
    listing = keys.add_parser(
        "list",
        parents=[common],
        help="list keys (never their secrets)",
        epilog="examples:\n  podium keys list\n  podium keys list --org acme -o json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--org", help="only this organization's keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = keys.add_parser(
        "revoke",
        parents=[common],
        help="revoke a key by id or prefix",
        epilog="examples:\n  podium keys revoke 3f1c2a9b0d4e",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    revoke.add_argument("key", metavar="ID", help="the key's id or prefix (from keys list)")
    for parser, action in ((create, _create), (listing, _list), (revoke, _revoke)):
        parser.set_defaults(func=_command(action))


def _row(record: Any) -> dict[str, Any]:
    return {
        "id": str(record.id),
        "prefix": record.prefix,
        "name": record.name,
        "organization": record.organization_id,
        "role": record.role,
        "created": record.created_at.isoformat(),
        "last_used": record.last_used_at.isoformat() if record.last_used_at else None,
        "revoked": record.revoked_at.isoformat() if record.revoked_at else None,
    }


async def _create(service: Any, args: argparse.Namespace) -> int:
    new = await service.create(args.org, args.role, args.name)
    print(new.key)
    print(
        f"key {new.record.prefix} ({new.record.role} of {new.record.organization_id}) created; "
        "it is shown only this once: store it now",
        file=sys.stderr,
    )
    return EXIT_OK


async def _list(service: Any, args: argparse.Namespace) -> int:
    rows = [_row(record) for record in await service.list(args.org)]
    if args.json:
        print_data(rows, "json")
        return EXIT_OK
    columns = ("prefix", "name", "organization", "role", "created", "last_used", "revoked", "id")
    print("  ".join(c.upper() for c in columns))
    for row in rows:
        print("  ".join(str(row[c] or "-") for c in columns))
    return EXIT_OK


async def _revoke(service: Any, args: argparse.Namespace) -> int:
    record = await service.revoke(args.key)
    print(f"key {record.prefix} revoked at {record.revoked_at.isoformat()}")
    return EXIT_OK


def _command(
    action: Callable[[Any, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        dsn = args.database_url or os.environ.get("PODIUM_DATABASE_URL", "")
        if not dsn:
            raise CliError(
                "podium keys needs the database: --database-url or PODIUM_DATABASE_URL",
                EXIT_USAGE,
            )
        return asyncio.run(_with_service(dsn, action, args))

    return run


async def _with_service(
    dsn: str, action: Callable[[Any, argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    # Imported here: only these commands (and podium serve) need the server package.
    from podium.server.config import redact_url
    from podium.server.engine.api_keys import ApiKeyService
    from podium.server.engine.errors import EngineError
    from podium.server.storage.api_keys import ApiKeysRepository
    from podium.server.storage.database import Database
    from podium.server.storage.errors import StorageError
    from podium.server.storage.migrations import migrate

    try:
        await migrate(dsn)
        db = await Database.connect(dsn, min_size=1, max_size=1)
    except StorageError as exc:
        raise CliError(f"cannot use the database {redact_url(dsn)}: {exc}", 3) from None
    try:
        return await action(ApiKeyService(ApiKeysRepository(db), 0.0), args)
    except EngineError as exc:
        violations = "".join(
            f"\n  {v.field}: {v.description}" for v in getattr(exc, "violations", ())
        )
        raise CliError(f"{exc}{violations}", EXIT_REFUSED) from None
    except StorageError as exc:
        raise CliError(f"database error: {exc}", 3) from None
    finally:
        await db.close()
