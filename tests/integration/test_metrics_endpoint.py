"""The /metrics endpoint (MetricsServer) on 127.0.0.1, through raw HTTP requests."""

from __future__ import annotations

import asyncio

import pytest

from podium.server.config import ConfigError, SecretValue, Settings
from podium.server.telemetry.exposition import MetricsServer
from podium.server.telemetry.metrics import Metrics
from tests.integration.conftest import StartServer


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


async def test_metrics_endpoint_can_require_a_token() -> None:
    token = "s3cr3t-token-0123456789"
    server = MetricsServer(Metrics().registry, "127.0.0.1:0", token=token)
    await server.start()
    try:
        for auth in (b"", b"Authorization: Bearer wrong\r\n", b"Authorization: Basic x\r\n"):
            refused = await _request(server.address, b"GET /metrics HTTP/1.1\r\n" + auth + b"\r\n")
            assert refused.startswith(b"HTTP/1.1 401"), refused
            assert b"WWW-Authenticate: Bearer" in refused and token.encode() not in refused
        ok = await _request(
            server.address,
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n",
        )
        assert ok.startswith(b"HTTP/1.1 200 OK")
    finally:
        await server.stop()


def test_the_metrics_token_is_a_secret_setting() -> None:
    settings = Settings.from_env({"PODIUM_METRICS_TOKEN": "s3cr3t-token-0123456789"})
    assert settings.metrics_token is not None
    assert settings.metrics_token.value == "s3cr3t-token-0123456789"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.describe())
    with pytest.raises(ConfigError, match="PODIUM_METRICS_TOKEN") as short:
        Settings.from_env({"PODIUM_METRICS_TOKEN": "short"})
    assert "short" not in str(short.value).replace("PODIUM", "")


async def test_the_server_serves_metrics_with_its_token(start_server: StartServer) -> None:
    token = "server-token-0123456789"
    server = await start_server(metrics_address="127.0.0.1:0", metrics_token=SecretValue(token))
    assert server.metrics_server is not None
    address = server.metrics_server.address
    assert (await _request(address, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 401")
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n"
    ok = await _request(address, b"GET /metrics HTTP/1.1\r\n" + auth + b"\r\n")
    assert ok.startswith(b"HTTP/1.1 200") and b"grpc_server_handled_total" in ok
