"""The one place that chooses how an agent is called: by its protocol (and, for an A2A
agent registered by its card's URL, by the binding its card lists).

:class:`AgentDispatcher` holds the :class:`~podium.server.agents.client.AgentClient`
(``podium.agent.v1``) and the :class:`~podium.server.agents.a2a.A2AClient` (A2A 1.0 or
0.3 over gRPC), both on one :class:`~podium.server.agents.channels.AgentChannels` pool
(one channel per endpoint, whichever protocol calls it), and routes
:meth:`AgentDispatcher.execute` by the agent's stored protocol (``agents.protocol``:
``podium_v1`` or ``a2a``). Before each call the pool checks the endpoint with the
outbound guard (:mod:`.endpoints`) and connects to a checked address; a refused endpoint
fails the attempt with ``AGENT_ENDPOINT_REFUSED`` (not retryable), a name that does not
resolve with ``AGENT_UNAVAILABLE`` (retryable).

An agent that is not there (the call fails with ``AGENT_UNAVAILABLE`` because its
connection was refused or could not be made: the agent is down, restarting or not
deployed yet) is waited for, up to ``wait_seconds`` and within the attempt's timeout:
gRPC reconnects in the background and the call is sent again once the channel is
READY. The agent never received the refused call, so this is not a re-execution, and
an agent restart of a few seconds no longer burns a step's attempts. The wait is
reported through ``on_progress`` (``waiting for the agent ...``) so WatchRun shows why
the step is not moving. A TLS handshake failure is answered at once: waiting does not
fix a certificate.

``podium.agent.v1`` agents are also watched (:class:`~.health.AgentHealthMonitor`,
``health``). Once an agent was seen serving (an agent that never served is rather
misconfigured, e.g. TLS, and its calls fail as above), a call to it while it is known
to be NOT_SERVING waits for it first, and a call
cut midway by the agent going away (``UNAVAILABLE`` after the call started: the agent
was stopped or killed) is sent again, within the same attempt, once the agent serves
again, when a health check right after the cut fails (an agent that still answers its
health check keeps the failure). That happens once per attempt: a call cut again fails
the attempt, so a step that brings its agent down each time (a poison step) ends after
its attempts instead of waiting on the agent forever. The agent may have done part of
the cut task: it sees the same task id again, as it would see the step again on a
retry. Both waits share the bound above.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from podium.agent.v1 import agent_pb2
from podium.server.agents.a2a import A2A_NOT_SERVED, A2AClient, A2AOutcome
from podium.server.agents.a2a_http import A2ACards, CardUnavailable, is_card_url
from podium.server.agents.channels import DEFAULT_MAX_MESSAGE_BYTES, AgentChannels
from podium.server.agents.client import (
    AGENT_UNAVAILABLE,
    AgentClient,
    ArtifactCallback,
    ChunkCallback,
    ProgressCallback,
    TaskFailed,
)
from podium.server.agents.endpoints import EndpointGuard, EndpointRefused
from podium.server.agents.health import AgentHealthMonitor
from podium.server.tls import KeyPair

__all__ = ["AGENT_ENDPOINT_REFUSED", "AgentDispatcher"]

# Transport failures that say no agent is listening there (gRPC's wording, lower case);
# anything mentioning TLS is a configuration error, not an absence.
_ABSENT = ("connection refused", "connect failed", "no route to host", "network is unreachable")
_TLS = ("ssl", "tls", "handshake", "certificate", "hostname verification")

AGENT_ENDPOINT_REFUSED = "AGENT_ENDPOINT_REFUSED"
"""The outbound guard refused the agent's endpoint or an address it resolves to."""


class AgentDispatcher:
    """Calls agents through the client of their protocol; both use one channel pool.

    Args:
        max_message_bytes: largest message sent or received, for both protocols.
        guard: the outbound guard checking endpoints before each call (the server's
            always has one); None connects to endpoints as they are.
        wait_seconds: how long a call waits for an unreachable agent (module doc);
            0 sends it at once (it then fails fast with ``AGENT_UNAVAILABLE``).
        tls_ca: PEM CA bundle trusted for ``grpcs://`` agents (None: the system's roots).
        tls_client: the certificate presented to ``grpcs://`` agents (mTLS), if any.
        cards: the cards of A2A agents registered by URL (:mod:`.a2a_http`), closed by
            :meth:`close`; by default one with ``guard`` and ``tls_ca``.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        guard: EndpointGuard | None = None,
        wait_seconds: float = 0.0,
        tls_ca: bytes | None = None,
        tls_client: KeyPair | None = None,
        cards: A2ACards | None = None,
    ) -> None:
        self.wait_seconds = wait_seconds
        self.channels = AgentChannels(
            max_message_bytes=max_message_bytes, guard=guard, tls_ca=tls_ca, tls_client=tls_client
        )
        self.podium = AgentClient(channels=self.channels)
        self.a2a = A2AClient(
            channels=self.channels,
            cards=cards if cards is not None else A2ACards(guard, tls_ca=tls_ca),
        )
        self.health = AgentHealthMonitor(self.channels)
        """The health of ``podium.agent.v1`` endpoints (every endpoint called is watched)."""

    async def read_card(
        self,
        endpoint: str,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the gRPC deadline of the call
    ) -> agent_pb2.AgentCard:
        """The card of the ``podium.agent.v1`` agent at ``endpoint`` (``GetAgentCard``),
        through the outbound guard.

        Raises:
            EndpointRefused: the guard refused the endpoint, or its name does not resolve.
            AgentCallError: the call failed (e.g. ``AGENT_UNAVAILABLE``: nothing answers).
        """
        await self.channels.connect(endpoint)
        return await self.podium.get_card(endpoint, timeout=timeout)

    async def execute(
        self,
        endpoint: str,
        request: agent_pb2.ExecuteTaskRequest,
        *,
        protocol: str | None = "podium_v1",
        timeout: float,  # noqa: ASYNC109 - the deadline of the attempt
        metadata: Sequence[tuple[str, str]] = (),
        on_progress: ProgressCallback | None = None,
        on_output_chunk: ChunkCallback | None = None,
        on_artifact: ArtifactCallback | None = None,
        resume_task_id: str = "",
    ) -> A2AOutcome:
        """Run one step attempt on the agent at ``endpoint`` with the client of
        ``protocol`` (``a2a``, else ``podium.agent.v1``). The outcome is that of
        :meth:`AgentClient.execute`, or a
        :class:`~podium.server.agents.a2a.TaskInputRequired` from an A2A agent.
        ``resume_task_id`` (A2A only) continues that task with the request's input as
        the answer. An A2A ``endpoint`` that is a card URL is called on the interface
        its card lists (:mod:`.a2a_http`): a gRPC one as any gRPC endpoint, an HTTP one
        through :meth:`A2AClient.execute_card`."""
        if protocol == "a2a" and is_card_url(endpoint):
            started = time.monotonic()
            try:
                # A card read (first call, or an old card) counts in the attempt's time.
                async with asyncio.timeout(timeout):
                    binding = await self.a2a.cards.binding(endpoint)
                    if not binding.grpc and self.channels.guard is not None:
                        await self.channels.guard.resolve_url(binding.url)
            except EndpointRefused as exc:
                return _refused(endpoint, exc)
            except CardUnavailable as exc:
                return _card_failure(endpoint, exc)
            except TimeoutError:
                return _unreachable(endpoint, TimeoutError("its agent card was not read in time"))
            timeout = max(timeout - (time.monotonic() - started), 0.001)
            if not binding.grpc:
                return await self.a2a.execute_card(
                    endpoint,
                    binding,
                    request,
                    timeout=timeout,
                    metadata=metadata,
                    on_progress=on_progress,
                    on_output_chunk=on_output_chunk,
                    on_artifact=on_artifact,
                    resume_task_id=resume_task_id,
                )
            endpoint = binding.url
        try:
            channel = await self.channels.connect(endpoint)
        except EndpointRefused as exc:
            return _refused(endpoint, exc)
        call = functools.partial(
            self._execute,
            endpoint,
            request,
            protocol=protocol,
            metadata=metadata,
            on_progress=on_progress,
            on_output_chunk=on_output_chunk,
            on_artifact=on_artifact,
            resume_task_id=resume_task_id,
        )
        native = protocol != "a2a"
        waited_from: float | None = None  # when this attempt began to wait for the agent
        try:
            started = time.monotonic()
            known = self.health.health(endpoint)
            if native:
                self.health.watch(endpoint)
                if self.wait_seconds > 0 and known.state == "not_serving" and known.was_serving:
                    # Known to be down: wait for it before the call, not after a failure.
                    waited_from = started
                    await _notify(on_progress, endpoint, f"not serving: {known.message}")
                    await self.health.wait_serving(endpoint, min(self.wait_seconds, timeout))
            outcome = await call(timeout=max(timeout - (time.monotonic() - started), 0.001))
            if _absent(outcome) and self.channels.guard is not None:
                # Nothing listens at the address its name had: maybe the agent moved.
                self.channels.guard.forget(endpoint)
            if self.wait_seconds > 0:
                outcome = await self._wait_and_retry(
                    call,
                    channel,
                    endpoint,
                    (started, waited_from),
                    timeout,
                    on_progress,
                    outcome,
                    native and known.was_serving,
                )
            return outcome
        except EndpointRefused as exc:  # the checked channel was discarded meanwhile
            return _refused(endpoint, exc)

    async def _gone(self, outcome: A2AOutcome, endpoint: str, watched: bool) -> str | None:
        """Why ``outcome`` says the agent is not there (module doc), or None: it was
        unreachable, or (``watched``: a ``podium.agent.v1`` agent seen serving) its call
        was cut and its health check now fails."""
        if _absent(outcome):
            return "unreachable"
        if watched and _cut(outcome):
            # An agent that answers (even without a health service) keeps the failure.
            if not await self.podium.check_health(endpoint, 1.0, if_unimplemented=True):
                assert isinstance(outcome, TaskFailed)
                return f"its call was cut: {outcome.message}"
        return None

    async def _wait_and_retry(
        self,
        call: Callable[..., Awaitable[A2AOutcome]],
        channel: grpc.aio.Channel,
        endpoint: str,
        times: tuple[float, float | None],
        timeout: float,  # noqa: ASYNC109 - the deadline of the attempt
        on_progress: ProgressCallback | None,
        outcome: A2AOutcome,
        watched: bool,
    ) -> A2AOutcome:
        """While the agent is not there (:meth:`_gone`), wait for it (its health SERVING,
        or for an unreachable one its channel READY) and call again, at most
        ``wait_seconds`` from the first wait (``times``: when the attempt started, when
        it began to wait before its call or None) and within the attempt's ``timeout``;
        the last outcome."""
        started, waited_from = times
        limit: float | None = None
        cut_once = False
        while (reason := await self._gone(outcome, endpoint, watched)) is not None:
            if reason != "unreachable":
                if cut_once:
                    # Cut twice: the step itself may bring its agent down (a poison
                    # step), so the attempt fails and its retries stay bounded.
                    return outcome
                cut_once = True
            now = time.monotonic()
            if waited_from is None:
                waited_from = now
                await _notify(on_progress, endpoint, reason)
            if limit is None:
                limit = min(self.wait_seconds, timeout - (waited_from - started))
            remaining = limit - (now - waited_from)
            try:
                if remaining <= 0:
                    raise TimeoutError
                if reason == "unreachable":
                    async with asyncio.timeout(remaining):
                        await channel.channel_ready()
                elif not await self.health.wait_serving(endpoint, remaining):
                    raise TimeoutError
            except TimeoutError:
                assert isinstance(outcome, TaskFailed)
                return dataclasses.replace(
                    outcome,
                    message=f"the agent at {endpoint} was not reachable for {max(limit, 0):g} s: "
                    f"{outcome.message}",
                )
            outcome = await call(timeout=max(timeout - (time.monotonic() - started), 0.001))
        return outcome

    async def _execute(
        self,
        endpoint: str,
        request: agent_pb2.ExecuteTaskRequest,
        *,
        protocol: str | None,
        timeout: float,  # noqa: ASYNC109 - the deadline of the attempt
        metadata: Sequence[tuple[str, str]],
        on_progress: ProgressCallback | None,
        on_output_chunk: ChunkCallback | None,
        on_artifact: ArtifactCallback | None,
        resume_task_id: str,
    ) -> A2AOutcome:
        if protocol == "a2a":
            return await self.a2a.execute(
                endpoint,
                request,
                timeout=timeout,
                metadata=metadata,
                on_progress=on_progress,
                on_output_chunk=on_output_chunk,
                on_artifact=on_artifact,
                resume_task_id=resume_task_id,
            )
        return await self.podium.execute(
            endpoint,
            request,
            timeout=timeout,
            metadata=metadata,
            on_progress=on_progress,
            on_output_chunk=on_output_chunk,
            on_artifact=on_artifact,
        )

    async def close(self) -> None:
        """Stop the health watches, close both clients and every channel (idempotent)."""
        await self.health.close()
        await self.podium.close()
        await self.a2a.close()
        await self.channels.close()


def _absent(outcome: A2AOutcome) -> bool:
    """Whether ``outcome`` says no agent answered at the endpoint (module doc)."""
    if not isinstance(outcome, TaskFailed) or outcome.code != AGENT_UNAVAILABLE:
        return False
    if outcome.origin != "transport":
        return False
    message = outcome.message.lower()
    return any(m in message for m in _ABSENT) and not _tls(message)


def _tls(message: str) -> bool:
    """Whether a failure's message is about TLS (waiting for the agent does not help)."""
    lowered = message.lower()
    return any(m in lowered for m in _TLS)


def _cut(outcome: A2AOutcome) -> bool:
    """Whether ``outcome`` is a call that ended with ``UNAVAILABLE`` midway (the agent's
    connection went away: it was stopped or killed), not a TLS failure."""
    if not isinstance(outcome, TaskFailed) or outcome.origin != "transport":
        return False
    if outcome.grpc_status != "UNAVAILABLE":
        return False
    return not _tls(outcome.message)


async def _notify(on_progress: ProgressCallback | None, endpoint: str, reason: str) -> None:
    """Report a wait for the agent as the step's progress (module doc)."""
    if on_progress is None:
        return
    notice = on_progress(
        agent_pb2.Progress(message=f"waiting for the agent at {endpoint} ({reason})", fraction=-1)
    )
    if notice is not None:
        await notice


def _card_failure(endpoint: str, exc: CardUnavailable) -> TaskFailed:
    if exc.transient:
        return _unreachable(endpoint, exc)
    return TaskFailed(
        code=A2A_NOT_SERVED,
        message=f"the A2A agent at {endpoint} cannot be called: {exc}",
        retryable=False,
        origin="protocol",
    )


def _unreachable(endpoint: str, exc: Exception) -> TaskFailed:
    """A retryable ``AGENT_UNAVAILABLE``: the agent may be reachable later."""
    return TaskFailed(
        code=AGENT_UNAVAILABLE,
        message=f"the agent at {endpoint} cannot be reached: {exc}",
        retryable=True,
        origin="transport",
    )


def _refused(endpoint: str, exc: EndpointRefused) -> TaskFailed:
    if exc.transient:
        return _unreachable(endpoint, exc)
    return TaskFailed(
        code=AGENT_ENDPOINT_REFUSED,
        message=f"Podium refuses to connect to the agent at {endpoint}: {exc}",
        retryable=False,
        origin="transport",
    )
