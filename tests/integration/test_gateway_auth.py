"""The gateway forwards the caller's key: the Authorization header, or the console's
session cookie, reaches the gRPC server as ``authorization`` metadata, where the
server's API-key check applies, and a refusal (UNAUTHENTICATED) comes back as 401 with
the server's message."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from podium.server.app import PodiumServer
from podium.server.gateway.server import Gateway
from tests.integration.conftest import StartServer

MISSING = (
    "this call needs an API key: send the metadata 'authorization: Bearer <key>' "
    "(podium keys create makes one; clients take --api-key or PODIUM_API_KEY)"
)
MALFORMED = "the API key is malformed (expected pdm_<prefix>_<secret>)"
UNKNOWN = "the API key is not valid"
WRONG_KEY = "pdm_000000000000_" + "A" * 43


@pytest.fixture
async def guarded(start_server: StartServer) -> AsyncIterator[tuple[Gateway, str]]:
    """A server requiring API keys, with its console and gateway, and a viewer's key."""
    server: PodiumServer = await start_server(auth="required", console_address="127.0.0.1:0")
    assert server.gateway is not None
    key = (await server.engine.api_keys.create("default", "viewer", "console")).key
    yield server.gateway, key


async def test_the_authorization_header_reaches_the_server(
    guarded: tuple[Gateway, str],
) -> None:
    gateway, key = guarded
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        refused = await http.post("/v1/ListRuns", json={})
        assert refused.status_code == 401
        assert refused.json()["code"] == 16 and refused.json()["message"] == MISSING
        wrong = await http.post("/v1/ListRuns", json={}, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401 and wrong.json()["message"] == MALFORMED
        ok = await http.post("/v1/ListRuns", json={}, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and ok.json() == {}
        # The server's own errors come through with their details.
        bad = await http.post(
            "/v1/GetRun", json={"runId": "x"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert bad.status_code == 400
        assert bad.json()["details"][1]["fieldViolations"][0]["field"] == "run_id"
        # An event stream checks the key before it starts.
        events = await http.get(f"/v1/runs/{uuid.uuid4()}/events")
        assert events.status_code == 401 and events.json()["message"] == MISSING
        # A viewer's key is a viewer's key through the gateway too.
        denied = await http.post(
            "/v1/StartRun",
            json={"plan": {"steps": [{"id": "a", "agent": "echo"}]}},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert denied.status_code == 403


async def test_signing_in_keeps_the_key_in_an_httponly_cookie(
    guarded: tuple[Gateway, str],
) -> None:
    gateway, key = guarded
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        refused = await http.post("/console/session", json={"key": WRONG_KEY})
        assert refused.status_code == 401 and refused.json()["message"] == UNKNOWN
        assert "set-cookie" not in refused.headers and not http.cookies
        malformed = await http.post("/console/session", json={"key": "a b;c"})
        assert malformed.status_code == 400
        assert malformed.json()["details"][1]["fieldViolations"][0]["field"] == "key"

        signed_in = await http.post("/console/session", json={"key": key})
        assert signed_in.status_code == 204
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith(f"podium_session={key};")
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
