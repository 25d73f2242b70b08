"""The A2A adapter: runs a step attempt on an A2A agent (A2A gRPC binding, 1.0 or 0.3).

:class:`A2AClient` has the call shape of :meth:`AgentClient.execute
<podium.server.agents.client.AgentClient.execute>`: the same request, deadline, metadata
and callbacks, and the same :class:`TaskSucceeded` / :class:`TaskFailed` outcomes, plus
:class:`TaskInputRequired` when the A2A task stops in ``TASK_STATE_INPUT_REQUIRED``.

The mapping between ``podium.agent.v1`` and ``lf.a2a.v1.A2AService`` (messages,
progress, chunks, output, failures, cancellation, questions), the re-subscription after
a cut stream and the version detection are described in docs/ARCHITECTURE.md, section
"A2A agents". Details kept here: a continuation (``resume_task_id``) also sets the
message's ``task_id``; a 1.0 server that publishes no extended card still answers
``GetExtendedAgentCard`` with an A2A error, which is enough to detect it; a card of
another version (e.g. 2.0) fails with ``A2A_VERSION_UNSUPPORTED``.

The adapter is split by responsibility: this module (the client: channels, protocol
version, the entry point), :mod:`.a2a_attempt` (the calls of one attempt: stream,
re-subscription, ``GetTask`` fallback, cancellation), :mod:`.a2a_events` (events to
progress, chunks, artifacts and the outcome) and :mod:`.a2a_v03` (0.3 behind the 1.0
calls). Channels come from the :class:`~podium.server.agents.channels.AgentChannels`
pool, shared with :class:`AgentClient` when the dispatcher passes one; the stubs and the
detected version are kept here per endpoint, rebuilt when the pool's channel is replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import grpc
from a2a.compat.v0_3 import a2a_v0_3_pb2, a2a_v0_3_pb2_grpc
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, VERSION_HEADER

from podium.agent.v1 import agent_pb2
from podium.server.agents.a2a_attempt import AttemptCalls, has_a2a_error, send_request
from podium.server.agents.a2a_events import (
    A2A_AUTH_REQUIRED,
    A2A_TASK_FAILED,
    A2A_TASK_REJECTED,
    INPUT_REQUIRED,
    A2AOutcome,
    AttemptState,
    TaskInputRequired,
    output_from_artifacts,
)
from podium.server.agents.a2a_http import A2ACards, Binding, HttpApi
from podium.server.agents.a2a_v03 import V03Api, is_legacy_version
from podium.server.agents.channels import DEFAULT_MAX_MESSAGE_BYTES, AgentChannels, PooledClient
from podium.server.agents.client import (
    ArtifactCallback,
    ChunkCallback,
    ProgressCallback,
    TaskFailed,
    transport_failure,
)

__all__ = [
    "A2A_AUTH_REQUIRED",
    "A2A_NOT_SERVED",
    "A2A_TASK_FAILED",
    "A2A_TASK_REJECTED",
    "A2A_VERSION_UNSUPPORTED",
    "INPUT_REQUIRED",
    "A2AClient",
    "A2AOutcome",
    "TaskInputRequired",
    "output_from_artifacts",
]

A2A_VERSION_UNSUPPORTED = "A2A_VERSION_UNSUPPORTED"
"""The endpoint speaks an A2A version the adapter does not (neither 1.x nor 0.3; not
retryable)."""
A2A_NOT_SERVED = "A2A_NOT_SERVED"
"""The endpoint serves no A2A service (neither ``lf.a2a.v1`` nor ``a2a.v1``)."""

_CARD_TIMEOUT_SECONDS = 5.0
_CANCEL_TIMEOUT_SECONDS = 5.0


class _Endpoint:
    """The stubs of one endpoint's channel and its detected protocol version.

    ``a2a`` and ``legacy`` are the raw 1.0 and 0.3 stubs (version detection); ``api`` is
    what attempts call once the version is known: the 1.0 stub, or a :class:`V03Api`
    (the same calls and 1.0 types, made on the 0.3 service).
    """

    __slots__ = ("a2a", "api", "channel", "legacy", "version")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.a2a = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        self.legacy = a2a_v0_3_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        self.api: Any = self.a2a
        self.version: str | None = None

    def use(self, version: str) -> str:
        """Record the detected ``version`` and pick the stub attempts call."""
        self.version = version
        self.api = V03Api(self.channel) if is_legacy_version(version) else self.a2a
        return version


class A2AClient(PooledClient[_Endpoint]):
    """Calls A2A agents (1.0 or 0.3) over the A2A gRPC binding, one reused channel per
    endpoint.

    Args:
        channels: the channel pool to use (shared with the ``podium.agent.v1`` client
            by :class:`~podium.server.agents.dispatch.AgentDispatcher`); by default the
            client opens its own, and :meth:`close` closes it.
        max_message_bytes: largest message sent or received (own pool only).
        options: extra channel arguments (own pool only).
        cancel_timeout_seconds: how long a ``CancelTask`` sent on cancellation may take.
        cards: the cards of agents registered by URL and their HTTP clients (closed
            by :meth:`close`); by default the client makes its own, without a guard.
    """

    def __init__(
        self,
        *,
        channels: AgentChannels | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
        cancel_timeout_seconds: float = _CANCEL_TIMEOUT_SECONDS,
        cards: A2ACards | None = None,
    ) -> None:
        super().__init__(channels, _Endpoint, max_message_bytes=max_message_bytes, options=options)
        self._cancel_timeout = cancel_timeout_seconds
        self.cards = cards if cards is not None else A2ACards()

    # -- version

    async def protocol_version(
        self, endpoint: str, *, card_timeout: float = _CARD_TIMEOUT_SECONDS
    ) -> str:
        """The A2A protocol version the agent at ``endpoint`` speaks (cached per channel).

        ``1.0`` when ``lf.a2a.v1.A2AService`` answers ``GetExtendedAgentCard`` (with a
        card, or with an A2A error such as "extended card not configured": the service
        exists); otherwise the ``protocol_version`` of the ``a2a.v1.A2AService`` card
        (``0.3``; also when that service exists but gives no card). "" (not cached)
        when neither service exists. The version also picks the stub attempts call.

        Raises:
            grpc.aio.AioRpcError: the agent could not be asked (e.g. UNAVAILABLE).
        """
        entry = self._endpoint(endpoint)
        if entry.version is not None:
            return entry.version
        metadata = ((VERSION_HEADER.lower(), PROTOCOL_VERSION_1_0),)
        try:
            card = await entry.a2a.GetExtendedAgentCard(
                a2a_pb2.GetExtendedAgentCardRequest(), timeout=card_timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNIMPLEMENTED or has_a2a_error(exc):
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                return entry.use(PROTOCOL_VERSION_1_0)
        else:
            # The lf.a2a.v1 service answered: a 0.3 interface the card may also list
            # (served as a2a.v1 for older clients) is not the one to use.
            versions = [
                interface.protocol_version
                for interface in cast(a2a_pb2.AgentCard, card).supported_interfaces
                if interface.protocol_binding.upper() == "GRPC"
                and interface.protocol_version
                and not is_legacy_version(interface.protocol_version)
            ]
            return entry.use(versions[0] if versions else PROTOCOL_VERSION_1_0)
        try:
            legacy = await entry.legacy.GetAgentCard(
                a2a_v0_3_pb2.GetAgentCardRequest(), timeout=card_timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                # No card to give, or no such service: a GetTask of no task tells.
                try:
                    await entry.legacy.GetTask(
                        a2a_v0_3_pb2.GetTaskRequest(name="tasks/-"), timeout=card_timeout
                    )
                except grpc.aio.AioRpcError as probe:
                    if probe.code() is grpc.StatusCode.UNIMPLEMENTED:
                        # Not cached: the endpoint may yet become an A2A agent.
                        return ""
            return entry.use(PROTOCOL_VERSION_0_3)
        return entry.use(
            cast(a2a_v0_3_pb2.AgentCard, legacy).protocol_version or PROTOCOL_VERSION_0_3
        )

    async def _versioned_api(
        self,
        endpoint: str,
        timeout: float,  # noqa: ASYNC109 - bounds the card calls
    ) -> tuple[Any, bool] | TaskFailed:
        """The calls to make to the agent at ``endpoint`` (the ``lf.a2a.v1`` stub or a
        :class:`V03Api`) and whether it speaks 0.3; or the failure of an agent that
        cannot be asked or speaks no A2A version the adapter knows."""
        try:
            version = await self.protocol_version(
                endpoint, card_timeout=min(timeout, _CARD_TIMEOUT_SECONDS)
            )
        except grpc.aio.AioRpcError as exc:
            return transport_failure(exc, [])
        legacy = is_legacy_version(version)
        if version and not version.startswith("1.") and not legacy:
            return TaskFailed(
                code=A2A_VERSION_UNSUPPORTED,
                message=(
                    f"the A2A agent at {endpoint} speaks A2A {version}; Podium supports "
                    "A2A 1.0 (lf.a2a.v1.A2AService) and 0.3 (a2a.v1.A2AService)"
                ),
                retryable=False,
                origin="protocol",
            )
        if not version:
            return TaskFailed(
                code=A2A_NOT_SERVED,
                message=f"{endpoint} serves no A2A service (lf.a2a.v1 or a2a.v1)",
                retryable=False,
                origin="protocol",
            )
        return self._endpoint(endpoint).api, legacy

    # -- calls

    async def execute(
        self,
        endpoint: str,
        request: agent_pb2.ExecuteTaskRequest,
        *,
        timeout: float,  # noqa: ASYNC109 - the deadline of the whole attempt
        metadata: Sequence[tuple[str, str]] = (),
        on_progress: ProgressCallback | None = None,
        on_output_chunk: ChunkCallback | None = None,
        on_artifact: ArtifactCallback | None = None,
        resume_task_id: str = "",
    ) -> A2AOutcome:
        """Run one step attempt on the A2A agent at ``endpoint`` (see the module
        docstring for the mapping) and return its outcome.

        Args:
            timeout: seconds for the whole attempt, re-subscriptions included.
            metadata: call metadata, e.g. ``traceparent``.
            resume_task_id: the A2A task to continue (after :class:`TaskInputRequired`):
                the message then carries that ``task_id``, and the input is the reply.

        Raises:
            asyncio.CancelledError: the awaiting task was cancelled; the stream is
                cancelled and ``CancelTask`` sent to the agent.
            Exception: whatever a callback raised (the task is then cancelled too).
        """
        deadline = asyncio.get_running_loop().time() + timeout
        found = await self._versioned_api(endpoint, timeout)
        if isinstance(found, TaskFailed):
            return found
        api, legacy = found
        return await self._attempt(
            api,
            legacy,
            endpoint,
            request,
            deadline=deadline,
            metadata=metadata,
            state=AttemptState(on_progress, on_output_chunk, on_artifact),
            resume_task_id=resume_task_id,
        )

    async def execute_card(
        self,
        url: str,
        binding: Binding,
        request: agent_pb2.ExecuteTaskRequest,
        *,
        timeout: float,  # noqa: ASYNC109 - the deadline of the whole attempt
        metadata: Sequence[tuple[str, str]] = (),
        on_progress: ProgressCallback | None = None,
        on_output_chunk: ChunkCallback | None = None,
        on_artifact: ArtifactCallback | None = None,
        resume_task_id: str = "",
    ) -> A2AOutcome:
        """:meth:`execute` on the HTTP interface (``JSONRPC`` or ``HTTP+JSON``)
        ``binding`` chosen from the card of the agent registered as ``url``
        (:meth:`A2ACards.binding <podium.server.agents.a2a_http.A2ACards.binding>`):
        the same attempt loop, through a2a-sdk's client (:class:`HttpApi`)."""
        deadline = asyncio.get_running_loop().time() + timeout
        api = HttpApi(self.cards.client(url))
        try:
            return await self._attempt(
                api,
                binding.legacy,
                binding.url,
                request,
                deadline=deadline,
                metadata=metadata,
                state=AttemptState(on_progress, on_output_chunk, on_artifact),
                resume_task_id=resume_task_id,
            )
        finally:
            await asyncio.shield(api.close())

    async def _attempt(
        self,
        api: Any,
        legacy: bool,
        endpoint: str,
        request: agent_pb2.ExecuteTaskRequest,
        *,
        deadline: float,
        metadata: Sequence[tuple[str, str]],
        state: AttemptState,
        resume_task_id: str,
    ) -> A2AOutcome:
        """One attempt's calls on ``api`` (a gRPC stub, a :class:`V03Api` or an
        :class:`HttpApi`): the same loop on every binding and version."""
        header = PROTOCOL_VERSION_0_3 if legacy else PROTOCOL_VERSION_1_0
        state.context_id = request.conversation_id
        state.task_id = resume_task_id
        attempt = AttemptCalls(
            api,
            legacy=legacy,
            state=state,
            deadline=deadline,
            metadata=((VERSION_HEADER.lower(), header), *metadata),
            cancel_timeout=self._cancel_timeout,
            endpoint=endpoint,
        )
        return await attempt.run(send_request(request, resume_task_id))

    async def close(self) -> None:
        """Close the channels (own pool only) and the card clients."""
        await super().close()
        await self.cards.close()
