"""Waiting with a timeout without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives while the
awaited thing completes: ``task.cancel()`` on a loop sleeping in
``wait_for(event.wait(), t)`` just as the event is set makes ``wait_for`` return
normally, and the cancelled loop goes round again (a replica's ``stop()`` awaiting it
then hangs for as long as the loop sleeps, or forever). ``asyncio.timeout`` counts
cancellations and never loses one, so the server waits with it everywhere
(``wait_for`` is not used in ``server/``); :func:`wait_set` is the pattern of every
background loop: sleep until woken or until the poll interval is over.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_set"]


async def wait_set(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` have passed (None: no limit);
    whether it is set. A cancellation of the waiting task always propagates, even one
    that arrives as the event is set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
