"""``wait_set``: a background loop's sleep, which a cancellation always ends."""

from __future__ import annotations

import asyncio

import pytest

from podium.server.waits import wait_set


async def test_it_says_whether_the_event_was_set_within_the_time() -> None:
    event = asyncio.Event()
    assert not await wait_set(event, 0.01)
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_set(event, 5)
    assert await wait_set(event, 0)  # already set: no wait
    assert await wait_set(event, None)


async def test_a_cancellation_that_arrives_as_the_event_is_set_stops_the_loop() -> None:
    """The stop of a background loop: its event set (a wake-up, a NOTIFY) and the loop
    cancelled in the same turn of the event loop. ``asyncio.wait_for`` (Python 3.11)
    returns normally there and the loop would sleep again; the cancellation must end
    it."""
    event = asyncio.Event()
    rounds = 0

    async def background_loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            event.clear()
            await wait_set(event, 30)

    task = asyncio.create_task(background_loop())
    await asyncio.sleep(0.01)  # sleeping in wait_set
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
    assert task.cancelled()
    assert rounds == 1


async def test_a_cancellation_at_the_timeout_is_not_turned_into_a_timeout() -> None:
    """Cancelled in the turn where its time runs out, the waiter is cancelled, not woken
    as if its time had merely run out."""
    event = asyncio.Event()
    task = asyncio.create_task(wait_set(event, 0.05))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
