"""The one place that chooses how an agent is called: by its protocol.

:class:`AgentDispatcher` holds the :class:`~podium.server.agents.client.AgentClient`
(``podium.agent.v1``) and the :class:`~podium.server.agents.a2a.A2AClient` (A2A 1.0 or
0.3 over gRPC), both on one :class:`~podium.server.agents.channels.AgentChannels` pool
(one channel per endpoint, whichever protocol calls it), and routes
:meth:`AgentDispatcher.execute` by the agent's stored protocol (``agents.protocol``:
``podium_v1`` or ``a2a``). Before each call the pool checks the endpoint with the
outbound guard (:mod:`.endpoints`) and connects to a checked address; a refused endpoint
fails the attempt with ``AGENT_ENDPOINT_REFUSED`` (not retryable), a name that does not
resolve with ``AGENT_UNAVAILABLE`` (retryable).
"""

from __future__ import annotations

from collections.abc import Sequence

from podium.agent.v1 import agent_pb2
from podium.server.agents.a2a import A2AClient, A2AOutcome
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
from podium.server.tls import KeyPair

__all__ = ["AGENT_ENDPOINT_REFUSED", "AgentDispatcher"]

AGENT_ENDPOINT_REFUSED = "AGENT_ENDPOINT_REFUSED"
"""The outbound guard refused the agent's endpoint or an address it resolves to."""


class AgentDispatcher:
    """Calls agents through the client of their protocol; both use one channel pool.

    Args:
        max_message_bytes: largest message sent or received, for both protocols.
        guard: the outbound guard checking endpoints before each call (the server's
            always has one); None connects to endpoints as they are.
        tls_ca: PEM CA bundle trusted for ``grpcs://`` agents (None: the system's roots).
        tls_client: the certificate presented to ``grpcs://`` agents (mTLS), if any.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        guard: EndpointGuard | None = None,
        tls_ca: bytes | None = None,
        tls_client: KeyPair | None = None,
    ) -> None:
        self.channels = AgentChannels(
            max_message_bytes=max_message_bytes, guard=guard, tls_ca=tls_ca, tls_client=tls_client
        )
        self.podium = AgentClient(channels=self.channels)
        self.a2a = A2AClient(channels=self.channels)

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
        the answer."""
        try:
            await self.channels.connect(endpoint)
        except EndpointRefused as exc:
            return _refused(endpoint, exc)
        try:
            return await self._execute(
                endpoint,
                request,
                protocol=protocol,
                timeout=timeout,
                metadata=metadata,
                on_progress=on_progress,
                on_output_chunk=on_output_chunk,
                on_artifact=on_artifact,
                resume_task_id=resume_task_id,
            )
        except EndpointRefused as exc:  # the checked channel was discarded meanwhile
            return _refused(endpoint, exc)

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
        """Close both clients and every channel (idempotent)."""
        await self.podium.close()
        await self.a2a.close()
        await self.channels.close()


def _refused(endpoint: str, exc: EndpointRefused) -> TaskFailed:
    if exc.transient:
        return TaskFailed(
            code=AGENT_UNAVAILABLE,
            message=f"the agent at {endpoint} cannot be reached: {exc}",
            retryable=True,
            origin="transport",
        )
    return TaskFailed(
        code=AGENT_ENDPOINT_REFUSED,
        message=f"Podium refuses to connect to the agent at {endpoint}: {exc}",
        retryable=False,
        origin="transport",
    )
