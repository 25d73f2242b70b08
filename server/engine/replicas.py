"""This replica's presence: its row in ``replicas`` and the static agents it declares.

A replica declares its ``PODIUM_AGENTS`` at start (as its own, or as its agent group's,
``PODIUM_AGENT_GROUP``), renews its row every third of ``PODIUM_LEASE_SECONDS`` and
withdraws at a clean stop. A static agent stays while a live replica (or a live replica
of the declaring group) declares it: a replica that stops, or dies and lets its row
expire, takes with it only the agents no other live replica declares. The rules are in
``storage/functions/90_static_agents.sql``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from podium.server.agents.static import StaticAgent
from podium.server.storage.agents import AgentRecord, AgentsRepository
from podium.server.storage.errors import StorageError

__all__ = ["ReplicaPresence"]

log = logging.getLogger("podium.replicas")


class ReplicaPresence:
    """Declare, renew and withdraw one replica and its static agents."""

    def __init__(
        self,
        repository: AgentsRepository,
        replica_id: str,
        *,
        organization_id: str,
        group: str,
        agents: Sequence[StaticAgent],
        lease_seconds: float,
    ) -> None:
        self.replica_id = replica_id
        self._repository = repository
        self._organization_id = organization_id
        self._group = group
        self._agents = list(agents)
        self._lease_seconds = lease_seconds
        self._task: asyncio.Task[None] | None = None
        self._joined = False

    async def join(self, *, rejoin: bool = False) -> list[AgentRecord]:
        """Hold this replica's row and declare its static agents; returns them as
        stored (the newest declaration of each name)."""
        sync = await self._repository.declare_static(
            self._organization_id,
            self._agents,
            replica=self.replica_id,
            group=self._group,
            lease_seconds=self._lease_seconds,
            rejoin=rejoin,
        )
        self._joined = True
        for name in sync.took_over:
            log.warning(
                "static agent replaces a registered agent of the same name",
                extra={"agent": name, "organization_id": self._organization_id},
            )
        _log_removed(sync.removed)
        return sync.agents

    def start(self) -> None:
        """Start renewing the row (after :meth:`join`)."""
        self._task = asyncio.create_task(self._renew_loop(), name="podium-replica")

    async def leave(self) -> None:
        """Stop renewing and withdraw: the static agents only this replica (or its group,
        when it was the group's last live replica) declared are deleted. A database
        error is logged: the row then expires after the lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self._joined:
            return
        self._joined = False
        try:
            _log_removed(await self._repository.withdraw_replica(self.replica_id))
        except StorageError as exc:
            log.warning("cannot withdraw this replica; its row expires instead: %s", exc)

    async def _renew_loop(self) -> None:
        interval = max(0.1, self._lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                renewal = await self._repository.renew_replica(self.replica_id, self._lease_seconds)
                _log_removed(renewal.removed)
                if not renewal.renewed:
                    # Stalled past its lease (its agents may have been pruned): declare again.
                    log.warning("this replica's row had lapsed; declaring its agents again")
                    await self.join(rejoin=True)
            except StorageError as exc:
                log.warning("replica renewal failed: %s", exc)


def _log_removed(removed: Sequence[tuple[str, str]]) -> None:
    if removed:
        log.info(
            "static agents no running replica declares were deleted",
            extra={"agents": [f"{organization}/{name}" for organization, name in removed]},
        )
