"""The Podium server process of the side-by-side benchmark:
``python -m bench.peers.podium_serve DSN AGENTS PORT``, started by
:class:`bench.peers.podium_system.PodiumSystem` with the interpreter of the checkout
under test (this one's, or ``--baseline``'s), from this checkout's root: ``bench`` comes
from here, ``podium`` from that interpreter's environment. So this module imports
nothing but the standard library and ``podium.server``, and passes only the settings
that checkout's ``Settings`` has (an older one lacks some).

It prints ``READY`` once serving; ``flush`` on stdin makes every pooled connection run
one query (publishing its statistics) and replies ``OK n``; EOF stops it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from bench.peers.budget import INFLIGHT, POOL_SIZE


def settings_for(dsn: str, agents: str, port: int) -> Any:
    from podium.server.config import Settings

    wanted: dict[str, Any] = {
        "database_url": dsn,
        "listen_address": f"127.0.0.1:{port}",
        "agents": agents,
        "agent_allowed_networks": "loopback",  # the no-op agent listens on loopback
        "log_level": "warning",
        "shutdown_grace_seconds": 0.0,
        "worker_slots": INFLIGHT,
        "default_max_parallel": INFLIGHT,
        "db_pool_max_size": POOL_SIZE,
        # The drivers call without keys (the check is one cached lookup per call).
        "auth": "disabled",
    }
    known = {f.name for f in dataclasses.fields(Settings)}
    return Settings.from_env({}, **{k: v for k, v in wanted.items() if k in known})


def event_loop(settings: Any) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop ``podium serve`` runs on (``PODIUM_EVENT_LOOP``, uvloop by default);
    asyncio's for a checkout without the setting."""
    try:
        from podium.server.main import loop_factory
    except ImportError:
        return None
    choice = getattr(settings, "event_loop", None)
    return None if choice is None else loop_factory(choice)


async def serve_main(settings: Any) -> None:
    from podium.server.app import PodiumServer

    server = PodiumServer(settings)
    await server.start()
    pool = server.engine.db.pool
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"flush":
            held: list[Any] = []
            try:
                with contextlib.suppress(TimeoutError):  # one held by the server for long
                    for _ in range(pool.get_size()):
                        held.append(await asyncio.wait_for(pool.acquire(), timeout=2))
                for conn in held:
                    await conn.fetchval("SELECT 1")
            finally:
                for conn in held:
                    await pool.release(conn)
            print(f"OK {len(held)}", flush=True)
    await server.stop(0)


def main() -> None:
    settings = settings_for(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    with asyncio.Runner(loop_factory=event_loop(settings)) as runner:
        runner.run(serve_main(settings))


if __name__ == "__main__":
    main()
