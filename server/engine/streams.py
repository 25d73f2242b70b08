"""Buffers of what running attempts stream (progress, output chunks), written in batches.

A chatty agent costs at most one small transaction per attempt per interval
(``stream_flush_seconds``): progress messages are coalesced (the latest wins) and chunks
concatenated (up to MAX_CHUNK_CHARS_PER_FLUSH characters per interval; the excess is
counted in ``dropped_chars``, not stored). Progress is best effort: a failed write is
logged, never retried.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from podium.agent.v1 import agent_pb2
from podium.server.storage.errors import StorageError
from podium.server.storage.runs import RunsRepository

log = logging.getLogger("podium.scheduler")

__all__ = ["MAX_CHUNK_CHARS_PER_FLUSH", "StepKey", "StreamBuffers"]

StepKey = tuple[uuid.UUID, str, int]
"""(run id, step id, attempt)."""

MAX_CHUNK_CHARS_PER_FLUSH = 64 * 1024


class _Stream:
    """What one attempt streamed since the last flush: the latest progress (older ones
    are superseded) and the output chunks, concatenated up to a bound."""

    __slots__ = ("progress", "chunks", "chars", "dropped")

    def __init__(self) -> None:
        self.progress: tuple[str, float] | None = None
        self.chunks: list[str] = []
        self.chars = 0
        self.dropped = 0

    def events(self) -> tuple[list[str], list[dict[str, Any]]]:
        types: list[str] = []
        payloads: list[dict[str, Any]] = []
        if self.chunks or self.dropped:
            payload: dict[str, Any] = {"text": "".join(self.chunks)}
            if self.dropped:
                payload["dropped_chars"] = self.dropped
            types.append("step.output_chunk")
            payloads.append(payload)
        if self.progress is not None:
            types.append("step.progress")
            payloads.append({"message": self.progress[0], "fraction": self.progress[1]})
        return types, payloads


class StreamBuffers:
    """The stream buffers of one replica's attempts, keyed by (run, step, attempt).

    ``lock`` serializes flushes: the completer holds it while it flushes the attempts
    of a batch and commits their outcomes, so a periodic flush in flight cannot land
    after a completion (it would be fenced, and its events lost)."""

    def __init__(self, repository: RunsRepository, flush_seconds: float) -> None:
        self._repository = repository
        self._flush_seconds = flush_seconds
        self._streams: dict[StepKey, _Stream] = {}
        self._wake = asyncio.Event()
        self.lock = asyncio.Lock()

    def _stream(self, key: StepKey) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
            self._wake.set()
        return stream

    def callbacks(
        self, key: StepKey
    ) -> tuple[Callable[[agent_pb2.Progress], None], Callable[[agent_pb2.OutputChunk], None]]:
        """The ``on_progress`` and ``on_output_chunk`` callbacks of attempt ``key``."""

        def on_progress(progress: agent_pb2.Progress) -> None:
            self._stream(key).progress = (progress.message, progress.fraction)

        def on_chunk(chunk: agent_pb2.OutputChunk) -> None:
            stream = self._stream(key)
            room = MAX_CHUNK_CHARS_PER_FLUSH - stream.chars
            text = chunk.text
            if len(text) > room:
                stream.dropped += len(text) - max(room, 0)
                text = text[: max(room, 0)]
            if text:
                stream.chunks.append(text)
                stream.chars += len(text)

        return on_progress, on_chunk

    async def run(self) -> None:
        """Write the buffered events every ``flush_seconds`` while there are any."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._flush_seconds)
            self._wake.clear()
            async with self.lock:
                await self.flush(None)

    async def flush(self, keys: set[StepKey] | None) -> None:
        """Write the buffered stream events (of ``keys``, or all); hold :attr:`lock`."""
        if not self._streams:
            return
        chosen = list(self._streams) if keys is None else [k for k in keys if k in self._streams]
        batches = []
        for key in chosen:
            types, payloads = self._streams.pop(key).events()
            if types:
                batches.append((key[0], key[1], key[2], types, payloads))
        if not batches:
            return
        try:
            await self._repository.append_step_events(batches)
        except StorageError as exc:
            # Progress is best effort: the outcome of the step is what must not be lost.
            log.warning("could not record %d streamed progress events: %s", len(batches), exc)
