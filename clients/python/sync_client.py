"""The blocking facade of :class:`~podium.client.client.PodiumClient`."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from podium.client.client import PodiumClient
from podium.client.common import DEFAULT_ADDRESS

__all__ = ["SyncPodiumClient"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


class _Blocking(Generic[P, R]):
    """A :class:`PodiumClient` coroutine method as a blocking :class:`SyncPodiumClient`
    method with the same parameters and docstring."""

    def __init__(self, method: Callable[Concatenate[PodiumClient, P], Coroutine[Any, Any, R]]):
        self._method = method
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: SyncPodiumClient, owner: type[Any]) -> Callable[P, R]: ...
    def __get__(self, obj: SyncPodiumClient | None, owner: type[Any]) -> Self | Callable[P, R]:
        if obj is None:
            return self
        method = self._method
        client = obj

        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return client._run(method(client._client, *args, **kwargs))

        return call


class _BlockingIterator(Generic[P, T]):
    """A :class:`PodiumClient` async-iterator method as a :class:`SyncPodiumClient`
    method returning a plain iterator."""

    def __init__(self, method: Callable[Concatenate[PodiumClient, P], AsyncIterator[T]]):
        self._method = method
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: SyncPodiumClient, owner: type[Any]) -> Callable[P, Iterator[T]]: ...
    def __get__(
        self, obj: SyncPodiumClient | None, owner: type[Any]
    ) -> Self | Callable[P, Iterator[T]]:
        if obj is None:
            return self
        method = self._method
        client = obj

        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
            return client._iterate(method(client._client, *args, **kwargs))

        return call


async def _next(iterator: AsyncIterator[T]) -> T:
    return await anext(iterator)


async def _close(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def _connected(client: PodiumClient) -> bool:
    return client.connected()


async def _new_client(address: str, options: dict[str, Any]) -> PodiumClient:
    return PodiumClient(address, **options)


class SyncPodiumClient:
    """Blocking facade of :class:`PodiumClient`, for scripts and REPLs: the same methods
    with the same arguments, errors and docstrings, returning results instead of
    awaitables (and plain iterators for :meth:`watch_run`, :meth:`watch_runs` and
    :meth:`iter_definitions`).

    It runs an asyncio event loop in a daemon thread of its own, so it also works when
    called from code that has a running loop. Use it as a context manager or call
    :meth:`close`.

    Args:
        address: ``HOST:PORT`` of a Podium server.
        **options: The keyword arguments of :class:`PodiumClient`.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="podium-client", daemon=True
        )
        self._thread.start()
        self._client = self._run(_new_client(address, options))
        self.address = address

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the client's thread. Idempotent."""
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def connected(self) -> bool:
        """Whether the channel is connected to the server now (READY)."""
        return self._run(_connected(self._client))

    def _run(self, coroutine: Coroutine[Any, Any, R]) -> R:
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    item = self._run(_next(iterator))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self._loop.is_closed():
                self._run(_close(iterator))

    create_definition = _Blocking(PodiumClient.create_definition)
    apply_definition = _Blocking(PodiumClient.apply_definition)
    validate_definition = _Blocking(PodiumClient.validate_definition)
    get_definition = _Blocking(PodiumClient.get_definition)
    list_definitions = _Blocking(PodiumClient.list_definitions)
    iter_definitions = _BlockingIterator(PodiumClient.iter_definitions)
    archive_definition = _Blocking(PodiumClient.archive_definition)
    start_run = _Blocking(PodiumClient.start_run)
    get_run = _Blocking(PodiumClient.get_run)
    get_run_payload = _Blocking(PodiumClient.get_run_payload)
    fill_omitted = _Blocking(PodiumClient.fill_omitted)
    list_runs = _Blocking(PodiumClient.list_runs)
    cancel_run = _Blocking(PodiumClient.cancel_run)
    continue_run = _Blocking(PodiumClient.continue_run)
    resume_run = _Blocking(PodiumClient.resume_run)
    fork_run = _Blocking(PodiumClient.fork_run)
    list_run_events = _Blocking(PodiumClient.list_run_events)
    watch_run = _BlockingIterator(PodiumClient.watch_run)
    wait_run = _Blocking(PodiumClient.wait_run)
    watch_runs = _BlockingIterator(PodiumClient.watch_runs)
    list_deliverables = _Blocking(PodiumClient.list_deliverables)
    list_webhook_deliveries = _Blocking(PodiumClient.list_webhook_deliveries)
    invalidate_cache = _Blocking(PodiumClient.invalidate_cache)
    send_event = _Blocking(PodiumClient.send_event)
    list_approvals = _Blocking(PodiumClient.list_approvals)
    get_approval = _Blocking(PodiumClient.get_approval)
    get_usage = _Blocking(PodiumClient.get_usage)
    decide_approval = _Blocking(PodiumClient.decide_approval)
    approve = _Blocking(PodiumClient.approve)
    reject = _Blocking(PodiumClient.reject)
    register_agent = _Blocking(PodiumClient.register_agent)
    list_agents = _Blocking(PodiumClient.list_agents)
    get_agent = _Blocking(PodiumClient.get_agent)
    deregister_agent = _Blocking(PodiumClient.deregister_agent)
    create_schedule = _Blocking(PodiumClient.create_schedule)
    get_schedule = _Blocking(PodiumClient.get_schedule)
    list_schedules = _Blocking(PodiumClient.list_schedules)
    pause_schedule = _Blocking(PodiumClient.pause_schedule)
    resume_schedule = _Blocking(PodiumClient.resume_schedule)
    delete_schedule = _Blocking(PodiumClient.delete_schedule)
    get_routing_policy = _Blocking(PodiumClient.get_routing_policy)
    update_routing_policy = _Blocking(PodiumClient.update_routing_policy)
