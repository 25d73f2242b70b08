"""The one place that chooses how an agent is called: by its protocol.

:class:`AgentDispatcher` holds the :class:`~podium.server.agents.client.AgentClient`
(``podium.agent.v1``) and the :class:`~podium.server.agents.a2a.A2AClient` (A2A 1.0 or
0.3 over gRPC), both on one :class:`~podium.server.agents.channels.AgentChannels` pool
(one channel per endpoint, whichever protocol calls it), and routes
:meth:`AgentDispatcher.execute` by the agent's stored protocol (``agents.protocol``:
``podium_v1`` or ``a2a``).
"""

from __future__ import annotations

from collections.abc import Sequence

from podium.agent.v1 import agent_pb2
from podium.server.agents.a2a import A2AClient, A2AOutcome
from podium.server.agents.channels import DEFAULT_MAX_MESSAGE_BYTES, AgentChannels
from podium.server.agents.client import (
    AgentClient,
    ArtifactCallback,
    ChunkCallback,
    ProgressCallback,
)

__all__ = ["AgentDispatcher"]


class AgentDispatcher:
    """Calls agents through the client of their protocol; both use one channel pool.

    Args:
        max_message_bytes: largest message sent or received, for both protocols.
    """

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.channels = AgentChannels(max_message_bytes=max_message_bytes)
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
