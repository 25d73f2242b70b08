"""The gateway forwards the caller's key: the Authorization header, or the console's
session cookie, reaches the gRPC server as ``authorization`` metadata, and a refusal
(UNAUTHENTICATED) comes back as 401 with the server's message. A key-checking proxy
(tests/integration/auth_proxy.py) stands in front of a real server for the
authentication Podium does not have yet."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from podium.server.app import PodiumServer
from podium.server.gateway.server import Gateway
from tests.integration.auth_proxy import REFUSAL, AuthProxy

KEY = "pk_test_0123456789abcdef"


@pytest.fixture
async def guarded(podium_server: PodiumServer) -> AsyncIterator[tuple[Gateway, AuthProxy]]:
    proxy = AuthProxy(podium_server.address, KEY)
    await proxy.start()
    gateway = Gateway(
        "127.0.0.1:0", proxy.address, max_body_bytes=1 << 20, max_message_bytes=4 << 20
    )
    await gateway.start()
    try:
        yield gateway, proxy
    finally:
        await gateway.stop()
        await proxy.stop()


async def test_the_authorization_header_reaches_the_server(
    guarded: tuple[Gateway, AuthProxy],
) -> None:
    gateway, proxy = guarded
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        refused = await http.post("/v1/ListRuns", json={})
        assert refused.status_code == 401
        assert refused.json() == {"code": 16, "message": REFUSAL}
        wrong = await http.post("/v1/ListRuns", json={}, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        ok = await http.post("/v1/ListRuns", json={}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json() == {}
        # The server's own errors still come through the proxy with their details.
        bad = await http.post(
            "/v1/GetRun", json={"runId": "x"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert bad.status_code == 400
        assert bad.json()["details"][1]["fieldViolations"][0]["field"] == "run_id"
        # An event stream checks the key before it starts.
        events = await http.get(f"/v1/runs/{uuid.uuid4()}/events")
        assert events.status_code == 401 and events.json()["message"] == REFUSAL
    assert proxy.calls[:3] == [
        ("ListRuns", None),
        ("ListRuns", "Bearer x"),
        ("ListRuns", f"Bearer {KEY}"),
    ]


async def test_signing_in_keeps_the_key_in_an_httponly_cookie(
    guarded: tuple[Gateway, AuthProxy],
) -> None:
    gateway, proxy = guarded
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        refused = await http.post("/console/session", json={"key": "pk_wrong_key_000000"})
        assert refused.status_code == 401 and refused.json()["message"] == REFUSAL
        assert "set-cookie" not in refused.headers and not http.cookies
        malformed = await http.post("/console/session", json={"key": "a b;c"})
        assert malformed.status_code == 400
        assert malformed.json()["details"][1]["fieldViolations"][0]["field"] == "key"

        signed_in = await http.post("/console/session", json={"key": KEY})
        assert signed_in.status_code == 204
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith(f"podium_session={KEY};")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        # The cookie now authenticates calls and event streams (EventSource sends no headers).
        ok = await http.post("/v1/ListDefinitions", json={})
        assert ok.status_code == 200
        async with http.stream("GET", "/v1/events") as stream:
            assert stream.status_code == 200
            assert await anext(stream.aiter_lines()) == "retry: 1000"
        # A header wins over the cookie.
        wrong = await http.post(
            "/v1/ListDefinitions", json={}, headers={"Authorization": "Bearer other"}
        )
        assert wrong.status_code == 401

        signed_out = await http.delete("/console/session")
        assert signed_out.status_code == 204
        assert not http.cookies
        assert (await http.post("/v1/ListDefinitions", json={})).status_code == 401
    assert ("ListDefinitions", f"Bearer {KEY}") in proxy.calls
    assert ("WatchRuns", f"Bearer {KEY}") in proxy.calls
