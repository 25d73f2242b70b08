"""A per-connection limit on open watch streams (WatchRun, WatchRuns, and A2A's
SendStreamingMessage and SubscribeToTask).

HTTP/2 multiplexes every stream of a client over one connection, and one replica
serves each stream with a task and a watcher. Past a limit, a new stream is refused at
once with RESOURCE_EXHAUSTED (reason ``TOO_MANY_STREAMS``) instead of being queued
inside gRPC, where a backlog of streams the server has not picked up yet is cancelled
without a word. The connection is the peer address gRPC reports (address and port of
the client's socket); ``PODIUM_MAX_STREAMS_PER_CONNECTION`` sets the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from podium.server.engine.errors import ResourceExhausted

__all__ = ["StreamLimiter"]


class StreamLimiter:
    """Counts the open watch streams of each connection."""

    def __init__(self, per_connection: int) -> None:
        self.per_connection = per_connection
        self._open: dict[str, int] = {}

    def open_streams(self, peer: str) -> int:
        """Streams ``peer`` holds open now."""
        return self._open.get(peer, 0)

    @contextmanager
    def hold(self, peer: str) -> Iterator[None]:
        """Count one stream of ``peer`` while the block runs; raises ResourceExhausted
        when ``peer`` already holds the limit."""
        count = self._open.get(peer, 0)
        if count >= self.per_connection:
            raise ResourceExhausted(
                f"this connection already has {count} open watch streams, the most "
                "allowed (PODIUM_MAX_STREAMS_PER_CONNECTION); close one or open "
                "another connection",
                reason="TOO_MANY_STREAMS",
                metadata={"limit": str(self.per_connection)},
            )
        self._open[peer] = count + 1
        try:
            yield
        finally:
            left = self._open[peer] - 1
            if left:
                self._open[peer] = left
            else:
                del self._open[peer]
