"""The timeout report's task stacks (tests/conftest.py ``_await_chain``): a frame without
a line number must not abort the report (an xdist worker would die with it)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from tests.conftest import _await_chain


def test_a_frame_without_a_line_number_is_listed_without_its_source() -> None:
    code = test_a_frame_without_a_line_number_is_listed_without_its_source.__code__
    inner = SimpleNamespace(cr_frame=SimpleNamespace(f_code=code, f_lineno=None), cr_await=None)
    outer = SimpleNamespace(
        cr_frame=SimpleNamespace(f_code=code, f_lineno=code.co_firstlineno + 1), cr_await=inner
    )
    task = SimpleNamespace(get_coro=lambda: outer)
    lines = _await_chain(cast(Any, task))
    assert lines == [
        f'  File "{code.co_filename}", line {code.co_firstlineno + 1}, in {code.co_name}',
        "    code = test_a_frame_without_a_line_number_is_listed_without_its_source.__code__",
        f'  File "{code.co_filename}", line ?, in {code.co_name}',
    ]


async def _sleeper(event: asyncio.Event) -> None:
    await event.wait()


async def test_a_pending_task_shows_its_await_chain() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_sleeper(event))
    await asyncio.sleep(0)
    try:
        lines = _await_chain(task)
        assert "in _sleeper" in lines[0] and lines[1] == "    await event.wait()"
        assert any("in wait" in line for line in lines[2:])
    finally:
        event.set()
        await task
