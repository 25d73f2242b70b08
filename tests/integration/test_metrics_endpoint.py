"""The /metrics endpoint (MetricsServer) on 127.0.0.1, through raw HTTP requests."""

from __future__ import annotations

import asyncio

from podium.server.telemetry.exposition import MetricsServer
from podium.server.telemetry.metrics import Metrics


async def _request(address: str, head: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return answer


async def test_metrics_endpoint_answers_get_metrics_only() -> None:
    metrics = Metrics()
    metrics.cache_hit()
    server = MetricsServer(metrics.registry, "127.0.0.1:0")
    await server.start()
    try:
        ok = await _request(server.address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"text/plain; version=0.0.4" in ok
        assert b"orchestration_cache_hits_total 1.0" in ok
        head = await _request(server.address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        missing = await _request(server.address, b"GET / HTTP/1.1\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404")
        post = await _request(server.address, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405")
        huge = await _request(server.address, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000)
        assert huge.startswith(b"HTTP/1.1 431")
    finally:
        await server.stop()
