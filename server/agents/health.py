"""What one replica knows of its agents' availability: :class:`AgentHealthMonitor`.

The monitor watches each ``podium.agent.v1`` endpoint it is given
(:meth:`~AgentHealthMonitor.watch`, :meth:`~AgentHealthMonitor.keep`) with one long-lived
``grpc.health.v1.Health/Watch`` call (service ``""``: the whole agent) on the endpoint's
pooled channel, so an agent that goes
down, announces NOT_SERVING while it shuts down, or comes back is known at once, without
polling. The call goes through the outbound guard like every agent call
(:meth:`~podium.server.agents.channels.AgentChannels.connect`).

- Each endpoint has a :class:`Health`: ``unknown`` until the first answer, then
  ``serving`` or ``not_serving`` (the agent says so, or cannot be reached: the message
  says why) and since when.
- An agent that answers NOT_SERVING has its watch ended at once (an agent shutting
  down waits for its calls in flight, a watch included) and asked again every
  ``recheck_seconds``.
- When the watch fails (the agent is down), the next one waits for the channel to
  connect (``wait_for_ready``: gRPC's reconnect backoff of the pool, 0.5 s up to 5 s),
  so a down agent costs no polling of our own.
- An agent without a health service (``UNIMPLEMENTED``) is polled with ``GetAgentCard``
  every ``poll_seconds`` instead: it is serving when the card answers.
- :meth:`~AgentHealthMonitor.wait_serving` lets a step wait for its agent; a callback
  (``on_serving``) runs each time an endpoint becomes serving (the engine reads the
  cards of lazy registrations there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from podium.agent.v1 import agent_pb2, agent_pb2_grpc
from podium.server.agents.channels import AgentChannels
from podium.server.agents.endpoints import EndpointRefused
from podium.server.waits import wait_set

__all__ = ["Health", "HealthState", "AgentHealthMonitor"]

log = logging.getLogger("podium.agents")

HealthState = Literal["unknown", "serving", "not_serving"]
"""An agent's availability (``AgentHealth.State`` without its prefix, lower case)."""

_SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True, slots=True)
class Health:
    """One endpoint's availability as this replica sees it.

    Attributes:
        state: ``unknown``, ``serving`` or ``not_serving``.
        since: when the endpoint entered ``state``.
        message: why it is not serving; empty otherwise.
        was_serving: whether the endpoint has been serving since it is watched: an
            agent that is ``not_serving`` then is down (an outage to wait for), not
            misconfigured (e.g. a TLS endpoint called in plaintext never serves).
    """

    state: HealthState
    since: datetime
    message: str = ""
    was_serving: bool = False


class _Watch:
    """The watch of one endpoint: its task, its current health and its waiters."""

    __slots__ = ("changed", "health", "task")

    def __init__(self) -> None:
        self.health = Health("unknown", datetime.now(UTC))
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class AgentHealthMonitor:
    """Watches the health of agent endpoints (module doc); one per replica.

    Args:
        channels: the agents' channel pool (shared with the agent clients).
        on_serving: awaited with an endpoint each time it becomes serving; its
            exceptions are logged.
        poll_seconds: interval of the ``GetAgentCard`` poll of agents without a health
            service.
        retry_seconds: pause before watching again after the watch could not start for
            another reason than an unreachable agent (e.g. a refused endpoint).
        recheck_seconds: pause before watching again an agent that answered NOT_SERVING
            (its watch is ended at once: an agent shutting down waits for the calls in
            flight, and a watch never ends by itself).
    """

    def __init__(
        self,
        channels: AgentChannels,
        *,
        on_serving: Callable[[str], Awaitable[None]] | None = None,
        poll_seconds: float = 5.0,
        retry_seconds: float = 5.0,
        recheck_seconds: float = 1.0,
    ) -> None:
        self._channels = channels
        self.on_serving = on_serving
        self._poll = poll_seconds
        self._retry = retry_seconds
        self._recheck = recheck_seconds
        self._watches: dict[str, _Watch] = {}
        self._closed = False

    # -- what callers read

    def health(self, endpoint: str) -> Health:
        """The health of ``endpoint``; ``unknown`` (since now) when it is not watched."""
        watch = self._watches.get(endpoint)
        return watch.health if watch is not None else Health("unknown", datetime.now(UTC))

    @property
    def not_serving(self) -> set[str]:
        """The watched endpoints that are not serving now."""
        return {e for e, w in self._watches.items() if w.health.state == "not_serving"}

    @property
    def watched(self) -> list[str]:
        """The endpoints being watched."""
        return list(self._watches)

    async def wait_serving(self, endpoint: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until ``endpoint`` is serving, at most ``timeout`` seconds (it is watched
        from now on if it was not); whether it is."""
        watch = self._watch(endpoint)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while watch.health.state != "serving":
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            watch.changed.clear()
            await wait_set(watch.changed, remaining)
        return True

    # -- what is watched

    def watch(self, endpoint: str) -> None:
        """Watch ``endpoint`` (nothing when it already is)."""
        self._watch(endpoint)

    def keep(self, endpoints: Iterable[str]) -> None:
        """Watch exactly ``endpoints``: start the missing watches, stop the others."""
        wanted = set(endpoints)
        for endpoint in list(self._watches):
            if endpoint not in wanted:
                self._stop(endpoint)
        for endpoint in wanted:
            self._watch(endpoint)

    async def close(self) -> None:
        """Stop every watch (idempotent); nothing is watched afterwards."""
        self._closed = True
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        self._watches.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _watch(self, endpoint: str) -> _Watch:
        watch = self._watches.get(endpoint)
        if watch is None:
            watch = _Watch()
            self._watches[endpoint] = watch
            if not self._closed:
                watch.task = asyncio.create_task(
                    self._run(endpoint, watch), name=f"podium-agent-health:{endpoint}"
                )
        return watch

    def _stop(self, endpoint: str) -> None:
        watch = self._watches.pop(endpoint, None)
        if watch is not None and watch.task is not None:
            watch.task.cancel()

    # -- the watch itself

    async def _set(self, endpoint: str, watch: _Watch, state: HealthState, message: str) -> None:
        if watch.health.state == state and watch.health.message == message:
            return
        became_serving = state == "serving" and watch.health.state != "serving"
        was_serving = watch.health.was_serving or state == "serving"
        watch.health = Health(state, datetime.now(UTC), message, was_serving)
        watch.changed.set()
        log.info(
            "agent health changed",
            extra={"endpoint": endpoint, "state": state, "reason": message},
        )
        if became_serving and self.on_serving is not None:
            try:
                await self.on_serving(endpoint)
            except Exception:
                log.exception("reacting to an agent that became serving failed")

    async def _run(self, endpoint: str, watch: _Watch) -> None:
        wait_for_ready = False
        while not self._closed:
            try:
                channel = await self._channels.connect(endpoint)
            except EndpointRefused as exc:
                await self._set(endpoint, watch, "not_serving", f"refused: {exc}")
                await asyncio.sleep(self._retry)
                continue
            except RuntimeError:
                return  # the pool is closed: the replica is stopping
            try:
                call = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=""), wait_for_ready=wait_for_ready
                )
                async for response in call:
                    wait_for_ready = False
                    if response.status == _SERVING:
                        await self._set(endpoint, watch, "serving", "")
                        continue
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                    await self._set(endpoint, watch, "not_serving", f"the agent says {status}")
                    # An agent shutting down waits for its calls in flight, this one
                    # included: end it, and ask again after a pause.
                    call.cancel()
                    break
                await asyncio.sleep(self._recheck)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    await self._poll_card(endpoint, watch, channel)
                    continue
                detail = (exc.details() or exc.code().name).lower()
                await self._set(endpoint, watch, "not_serving", f"unreachable: {detail}")
                # Next, wait for the channel to connect again (gRPC's reconnect backoff);
                # a stopping agent may still hold the connection and refuse calls on it,
                # hence a short pause first.
                pause = 0.25 if exc.code() is grpc.StatusCode.UNAVAILABLE else self._recheck
                await asyncio.sleep(pause)
                wait_for_ready = True

    async def _poll_card(self, endpoint: str, watch: _Watch, channel: grpc.aio.Channel) -> None:
        """Without a health service: poll ``GetAgentCard`` until the channel changes."""
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        while not self._closed:
            try:
                await stub.GetAgentCard(agent_pb2.GetAgentCardRequest(), timeout=self._poll)
                await self._set(endpoint, watch, "serving", "")
            except grpc.aio.AioRpcError as exc:
                detail = (exc.details() or exc.code().name).lower()
                await self._set(endpoint, watch, "not_serving", f"unreachable: {detail}")
            await asyncio.sleep(self._poll)
            with contextlib.suppress(EndpointRefused, RuntimeError):
                if await self._channels.connect(endpoint) is not channel:
                    return
