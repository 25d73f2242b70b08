"""WatchRun clients in a child process (``python -m bench.harness.watchers``), so their
CPU and memory are not the server's: N streams over a few channels, each checking that
it received sequences 1..N exactly once and ended after the terminal event."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc
import psutil

from bench.harness.agent import REPOSITORY_ROOT
from bench.harness.common import CHANNEL_OPTIONS, TERMINAL_EVENTS, latency_summary
from bench.harness.cpu import cpu_seconds, rss_mb
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

CLIENT_TIMEOUT_SECONDS = 600.0


async def client_main() -> None:
    """Child process: open the streams described by one JSON line on stdin, print
    ``{"ready": ...}`` once every stream received its first message, then one
    ``{"result": ...}`` line when every stream ended.

    Config: ``address``, ``channels``, ``streams`` (a list of run ids, one stream each),
    ``read_delay`` (seconds to sleep after each message, for slow consumers).
    """
    config = json.loads(sys.stdin.readline())
    channels = [
        grpc.aio.insecure_channel(config["address"], options=CHANNEL_OPTIONS)
        for _ in range(config["channels"])
    ]
    stubs: list[pb_grpc.OrchestrationServiceAsyncStub] = [
        pb_grpc.OrchestrationServiceStub(c) for c in channels
    ]
    delay: float = config.get("read_delay", 0.0)
    streams: list[str] = config["streams"]
    first = asyncio.Event()
    waiting_first = len(streams)
    ready_at: float | None = None
    lags: list[float] = []
    anomalies: list[str] = []
    counts: list[int] = []
    ends: list[float] = []
    me = psutil.Process()

    async def one(index: int, run_id: str) -> None:
        nonlocal waiting_first, ready_at
        stub = stubs[index % len(stubs)]
        call = stub.WatchRun(pb.WatchRunRequest(run_id=run_id))
        expected = 1
        got_first = False
        terminal = False
        async for response in call:
            now = time.time()
            event = response.event
            if event.sequence != expected:
                anomalies.append(f"{run_id}: got {event.sequence}, expected {expected}")
            expected = event.sequence + 1
            if ready_at is not None and event.time.seconds:
                event_time = event.time.seconds + event.time.nanos * 1e-9
                if event_time >= ready_at:
                    lags.append(now - event_time)
            terminal = event.type in TERMINAL_EVENTS
            if not got_first:
                got_first = True
                waiting_first -= 1
                if waiting_first == 0:
                    first.set()
            if delay:
                await asyncio.sleep(delay)
        if not terminal:
            anomalies.append(f"{run_id}: ended without a terminal event")
        counts.append(expected - 1)
        ends.append(time.time())

    started = time.time()
    cpu0 = cpu_seconds(me)
    tasks = [asyncio.create_task(one(i, r)) for i, r in enumerate(streams)]
    waiter = asyncio.create_task(first.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if first.is_set():
        ready_at = time.time()
        print(json.dumps({"ready": round(ready_at - started, 3)}), flush=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    finished = time.time()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    for channel in channels:
        await channel.close(None)
    total = sum(counts)
    result = {
        "streams": len(streams),
        "streams_ok": len(counts),
        "errors": errors[:5],
        "error_count": len(errors),
        "anomalies": anomalies[:5],
        "anomaly_count": len(anomalies),
        "events_received": total,
        "first_event_all_streams_s": round((ready_at or finished) - started, 3),
        "wall_s": round(finished - started, 3),
        "last_stream_end_after_ready_s": round(max(ends) - (ready_at or started), 3)
        if ends
        else None,
        "lag_s": latency_summary(lags),
        "client_cpu_s": round(cpu_seconds(me) - cpu0, 3),
        "client_rss_mb": rss_mb(me),
    }
    print(json.dumps({"result": result}), flush=True)


class ClientProcess:
    """The watchers, in a child process (``--client``)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.ps = psutil.Process(process.pid)

    @classmethod
    async def start(
        cls, address: str, streams: list[str], *, channels: int, read_delay: float = 0.0
    ) -> ClientProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.harness.watchers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,
            cwd=REPOSITORY_ROOT,
        )
        assert process.stdin is not None
        config = {
            "address": address,
            "channels": channels,
            "streams": streams,
            "read_delay": read_delay,
        }
        process.stdin.write(json.dumps(config).encode() + b"\n")
        await process.stdin.drain()
        return cls(process)

    async def line(self) -> dict[str, Any]:
        """The next JSON line the child prints."""
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), CLIENT_TIMEOUT_SECONDS)
        if not raw:
            raise RuntimeError("the client process exited early")
        message: dict[str, Any] = json.loads(raw)
        return message

    async def wait(self) -> None:
        await asyncio.wait_for(self.process.wait(), 60)


if __name__ == "__main__":
    asyncio.run(client_main())
