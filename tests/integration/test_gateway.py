"""The HTTP/JSON gateway (PODIUM_CONSOLE_ADDRESS) against a real server, over httpx."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.server.app import PodiumServer, StartupError
from podium.server.config import Settings
from scripts.dev_certs import issue, make_ca, write
from tests.integration.conftest import StartServer, static_agents

ECHO_DEFINITION = {
    "definition": {
        "name": "gw-echo",
        "steps": [
            {"id": "first", "agent": "echo", "input": {"q": "${run.input.q}"}},
            {"id": "second", "agent": "echo", "dependsOn": ["first"]},
        ],
    }
}


@pytest.fixture
async def gateway(start_server: StartServer, example_agents: ExampleAgents) -> PodiumServer:
    return await start_server(
        console_address="127.0.0.1:0", agents=static_agents(example_agents, "echo")
    )


@pytest.fixture
async def http(gateway: PodiumServer) -> AsyncIterator[httpx.AsyncClient]:
    assert gateway.gateway is not None
    async with httpx.AsyncClient(base_url=gateway.gateway.url, timeout=10) as client:
        yield client


def _details(body: dict[str, Any], type_suffix: str) -> list[dict[str, Any]]:
    return [d for d in body.get("details", []) if d["@type"].endswith(type_suffix)]


async def _finished_run(http: httpx.AsyncClient) -> dict[str, Any]:
    created = await http.post("/v1/CreateDefinition", json=ECHO_DEFINITION)
    assert created.status_code == 200, created.text
    started = await http.post(
        "/v1/StartRun",
        json={"definition": {"name": "gw-echo"}, "input": {"q": "hi"}, "start": True},
    )
    assert started.status_code == 200, started.text
    run_id = started.json()["run"]["id"]
    async with http.stream("GET", f"/v1/runs/{run_id}/events") as events:
        async for line in events.aiter_lines():
            if line.startswith("data:") and "TYPE_RUN_COMPLETED" in line:
                break
    got = await http.post("/v1/GetRun", json={"runId": run_id})
    assert got.status_code == 200
    return dict(got.json()["run"])


async def test_the_gateway_is_off_unless_configured(podium_server: PodiumServer) -> None:
    assert podium_server.gateway is None


async def test_a_console_address_in_use_stops_the_start(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        server = PodiumServer(
            Settings.from_env(
                {},
                database_url=database_url,
                listen_address="127.0.0.1:0",
                console_address=address,
                shutdown_grace_seconds=0.0,
            )
        )
        try:
            with pytest.raises(StartupError, match=f"cannot serve the console on {address}"):
                await server.start()
        finally:
            await server.stop(0)


async def test_unary_rpcs_round_trip_in_the_protobuf_json_mapping(
    http: httpx.AsyncClient,
) -> None:
    run = await _finished_run(http)
    assert run["state"] == "STATE_SUCCEEDED"
    assert [step["stepId"] for step in run["steps"]] == ["first", "second"]
    assert run["steps"][0]["output"] == {"echo": {"q": "hi"}}
    listed = await http.post(
        "/v1/ListRuns", json={"definitionName": "gw-echo", "states": ["STATE_SUCCEEDED"]}
    )
    assert [r["id"] for r in listed.json()["runs"]] == [run["id"]]
    # No body is the empty request.
    agents = await http.post("/v1/ListAgents")
    assert agents.status_code == 200
    assert [a["name"] for a in agents.json()["agents"]] == ["echo"]


async def test_errors_are_google_rpc_status_json_with_field_violations(
    http: httpx.AsyncClient,
) -> None:
    # The server's own validation, forwarded: INVALID_ARGUMENT -> 400 with BadRequest.
    empty = await http.post("/v1/StartRun", json={})
    assert empty.status_code == 400
    body = empty.json()
    assert body["code"] == 3 and body["message"]
    violations = _details(body, "google.rpc.BadRequest")[0]["fieldViolations"]
    assert violations and all(v["field"] and v["description"] for v in violations)
    assert _details(body, "google.rpc.ErrorInfo")[0]["domain"] == "podium.orchestration.v1"

    bad_id = await http.post("/v1/GetRun", json={"runId": "not-a-uuid"})
    assert bad_id.status_code == 400
    assert [v["field"] for v in _details(bad_id.json(), "BadRequest")[0]["fieldViolations"]] == [
        "run_id"
    ]
    missing = await http.post("/v1/GetRun", json={"runId": str(uuid.uuid4())})
    assert missing.status_code == 404 and missing.json()["code"] == 5

    # HTTP-level problems are answered by the gateway in the same shape.
    unknown_field = await http.post("/v1/GetRun", json={"bogus": 1})
    assert unknown_field.status_code == 400
    fields = _details(unknown_field.json(), "BadRequest")[0]["fieldViolations"]
    assert fields[0]["field"] == "bogus"
    wrong_type = await http.post("/v1/ListRuns", json={"pageSize": "many"})
    assert wrong_type.status_code == 400
    assert _details(wrong_type.json(), "BadRequest")[0]["fieldViolations"][0]["field"] == (
        "pageSize"
    )
    not_json = await http.post("/v1/GetRun", content=b"{", headers={"content-type": "text/plain"})
    assert not_json.status_code == 415 and not_json.json()["code"] == 3
    broken = await http.post(
        "/v1/GetRun", content=b"{", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    no_such_rpc = await http.post("/v1/DropDatabase", json={})
    assert no_such_rpc.status_code == 404 and no_such_rpc.json()["code"] == 5
    wrong_method = await http.get("/v1/GetRun")
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == 12
    assert "POST /v1/<RPC>" in wrong_method.json()["message"]
    nowhere = await http.get("/v1/runs/x/y/z")
    assert nowhere.status_code == 404 and nowhere.json()["code"] == 5
    streaming = await http.post("/v1/WatchRun", json={})
    assert streaming.status_code == 404 and "events" in streaming.json()["message"]


async def test_request_bodies_are_limited(start_server: StartServer) -> None:
    server = await start_server(console_address="127.0.0.1:0", console_max_body_bytes=2048)
    assert server.gateway is not None
    async with httpx.AsyncClient(base_url=server.gateway.url, timeout=10) as http:
        big = {"definition": {"name": "big", "description": "x" * 4096, "steps": []}}
        answer = await http.post("/v1/CreateDefinition", json=big)
        assert answer.status_code == 413
        assert answer.json()["code"] == 8
        assert "2048" in answer.json()["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for _ in range(10):
                yield b" " * 1024

        streamed = await http.post(
            "/v1/ListRuns", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413


async def _sse(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], count: int
) -> list[tuple[int, dict[str, Any]]]:
    """The first ``count`` (id, data) messages of an event stream."""
    messages: list[tuple[int, dict[str, Any]]] = []
    event_id: int | None = None
    async with http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                assert event_id is not None
                messages.append((event_id, json.loads(line[6:])))
                if len(messages) == count:
                    break
    return messages


async def test_run_events_are_sse_resumable_with_last_event_id(http: httpx.AsyncClient) -> None:
    run = await _finished_run(http)
    last = int(run["lastEventSequence"])
    whole = await _sse(http, f"/v1/runs/{run['id']}/events", {}, last)
    assert [event_id for event_id, _ in whole] == list(range(1, last + 1))
    assert all(data["sequence"] == str(event_id) for event_id, data in whole)
    assert whole[0][1]["type"] == "TYPE_RUN_CREATED"
    assert whole[-1][1]["type"] == "TYPE_RUN_COMPLETED"

    # What a reconnecting EventSource sends: the events after that one, no repeats.
    resumed = await _sse(http, f"/v1/runs/{run['id']}/events", {"Last-Event-ID": str(last - 2)}, 2)
    assert [event_id for event_id, _ in resumed] == [last - 1, last]
    assert resumed == whole[-2:]
    by_query = await _sse(http, f"/v1/runs/{run['id']}/events?after_sequence={last - 1}", {}, 1)
    assert by_query == whole[-1:]

    # After the terminal event the stream says it ended (a browser then stops too).
    async with http.stream(
        "GET", f"/v1/runs/{run['id']}/events", headers={"Last-Event-ID": str(last)}
    ) as tail:
        assert await tail.aread() == b"retry: 1000\n\nevent: end\ndata: {}\n\n"

    bad = await http.get(f"/v1/runs/{run['id']}/events", headers={"Last-Event-ID": "-1"})
    assert bad.status_code == 400
    assert bad.json()["details"][1]["fieldViolations"][0]["field"] == "Last-Event-ID"
    unknown = await http.get(f"/v1/runs/{uuid.uuid4()}/events")
    assert unknown.status_code == 404 and unknown.json()["code"] == 5


async def test_console_pages_and_assets_are_served(http: httpx.AsyncClient) -> None:
    for path in ("/", f"/runs/{uuid.uuid4()}", "/definitions/x", "/agents", "/approvals"):
        page = await http.get(path)
        assert page.status_code == 200
        assert '<script src="/static/console.js"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
    script = await http.get("/static/console.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert (await http.get("/static/../app.py")).status_code == 404
    assert (await http.get("/static/secrets.txt")).status_code == 404


async def test_the_gateway_serves_a_tls_server_through_its_own_socket(
    start_server: StartServer, tmp_path: Path
) -> None:
    """With TLS (even mTLS) on the gRPC port, the gateway still reaches the server: over
    a unix socket of its own, not the TLS port."""
    ca = make_ca()
    write(tmp_path, "ca", ca)
    write(
        tmp_path,
        "server",
        issue(ca, "localhost", names=("localhost",), ips=("127.0.0.1",), server=True),
    )
    server = await start_server(
        tls_cert_file=tmp_path / "server.pem",
        tls_key_file=tmp_path / "server.key",
        tls_client_ca_file=tmp_path / "ca.pem",
        console_address="127.0.0.1:0",
    )
    assert server.gateway is not None
    async with httpx.AsyncClient(base_url=server.gateway.url) as http:
        answer = await http.post("/v1/ListDefinitions", json={})
    assert answer.status_code == 200, answer.text
    assert "definitions" in answer.json() or answer.json() == {}
