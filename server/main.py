"""``podium serve``: run one replica until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from podium.client.agent import event_loop_factory
from podium.server.app import PodiumServer, StartupError
from podium.server.config import ConfigError, Settings
from podium.server.storage.errors import StorageError
from podium.server.telemetry.logging import configure_logging

log = logging.getLogger("podium.server")


async def _serve(settings: Settings) -> None:
    server = PodiumServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        start = asyncio.create_task(server.start())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if start in done:
            start.result()
            await stopped
        else:
            start.cancel()
            try:
                await start
            except asyncio.CancelledError:
                pass
    finally:
        await server.stop()


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``PODIUM_EVENT_LOOP`` names, for ``asyncio.Runner``: uvloop's when
    it is installed (every platform but Windows), else asyncio's (None); the agent SDK's
    choice (``podium.client.agent``), made by the setting."""
    return event_loop_factory(uvloop=event_loop == "uvloop")


def serve(settings: Settings) -> int:
    """Run the server in the foreground; returns the process exit code."""
    configure_logging(settings.log_level, settings.log_format)
    log.info("starting Podium", extra={"settings": settings.describe()})
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(_serve(settings))
    except (StartupError, StorageError, ConfigError) as exc:
        log.error("cannot start: %s", exc)
        print(f"podium: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
