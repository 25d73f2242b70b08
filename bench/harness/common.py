"""Constants and small helpers every benchmark uses: progress lines, gRPC channel
options, terminal event types, percentiles."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from podium.orchestration.v1 import event_pb2

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
RunEvent = event_pb2.RunEvent
TERMINAL_EVENTS = frozenset(
    {RunEvent.TYPE_RUN_COMPLETED, RunEvent.TYPE_RUN_FAILED, RunEvent.TYPE_RUN_CANCELLED}
)


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the JSON document)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0}
    return {
        "n": len(seconds),
        "p50_ms": round(1000 * percentile(seconds, 50), 2),
        "p90_ms": round(1000 * percentile(seconds, 90), 2),
        "p99_ms": round(1000 * percentile(seconds, 99), 2),
        "max_ms": round(1000 * max(seconds), 2),
        "mean_ms": round(1000 * sum(seconds) / len(seconds), 2),
    }


def event_time(event: event_pb2.RunEvent) -> float:
    return event.time.seconds + event.time.nanos * 1e-9
