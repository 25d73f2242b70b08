"""GetUsage and a run's usage through the HTTP/JSON gateway, over httpx, against a real
server and the real echo agent (which reports ``input.usage`` as its usage)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from podium.client.examples.agents import ExampleAgents
from tests.integration.conftest import StartServer, static_agents

USAGE = {"input_tokens": 12, "output_tokens": 8, "cost_usd": 0.02, "model": "m-gw"}


@pytest.fixture
async def http(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[httpx.AsyncClient]:
    server = await start_server(
        console_address="127.0.0.1:0", agents=static_agents(example_agents, "echo")
    )
    assert server.gateway is not None
    async with httpx.AsyncClient(base_url=server.gateway.url, timeout=10) as client:
        yield client


def _violations(body: dict[str, Any]) -> dict[str, str]:
    return {
        v["field"]: v["description"]
        for d in body.get("details", [])
        if d["@type"].endswith("BadRequest")
        for v in d["fieldViolations"]
    }


async def test_get_usage_groups_the_usage_agents_reported(http: httpx.AsyncClient) -> None:
    """Two echo steps reporting 12+8 tokens each: GetUsage by agent and model in JSON
    (int64 as strings), the total row without group_by, GetRun's totalUsage."""
    steps = [
        {"id": "a", "agent": "echo", "input": {"usage": USAGE}},
        {"id": "b", "agent": "echo", "dependsOn": ["a"], "input": {"usage": USAGE}},
    ]
    created = await http.post(
        "/v1/CreateDefinition", json={"definition": {"name": "gw-usage", "steps": steps}}
    )
    assert created.status_code == 200, created.text
    started = await http.post(
        "/v1/StartRun", json={"definition": {"name": "gw-usage"}, "start": True}
    )
    assert started.status_code == 200, started.text
    run_id = started.json()["run"]["id"]
    async with http.stream("GET", f"/v1/runs/{run_id}/events") as events:
        async for line in events.aiter_lines():
            if line.startswith("data:") and "TYPE_RUN_COMPLETED" in line:
                break

    grouped = await http.post(
        "/v1/GetUsage", json={"groupBy": ["DIMENSION_AGENT", "DIMENSION_MODEL"]}
    )
    assert grouped.status_code == 200, grouped.text
    [row] = grouped.json()["rows"]
    assert (row["agent"], row["model"], row["stepAttempts"]) == ("echo", "m-gw", "2")
    assert row["usage"]["inputTokens"] == "24" and row["usage"]["outputTokens"] == "16"
    assert row["usage"]["costUsd"] == pytest.approx(0.04)
    total = await http.post("/v1/GetUsage", json={"definitionName": "gw-usage"})
    assert total.status_code == 200, total.text
    [only] = total.json()["rows"]
    assert only.get("agent", "") == "" and only["usage"]["inputTokens"] == "24"
    none = await http.post("/v1/GetUsage", json={"definitionName": "no-such-definition"})
    assert none.status_code == 200 and none.json().get("rows", []) == []

    run = (await http.post("/v1/GetRun", json={"runId": run_id})).json()["run"]
    assert run["totalUsage"]["inputTokens"] == "24"
    assert run["totalUsage"]["outputTokens"] == "16"
    assert "budget" not in run


async def test_get_usage_refusals_are_400_with_the_field(http: httpx.AsyncClient) -> None:
    too_long = await http.post(
        "/v1/GetUsage",
        json={"startTime": "2025-01-01T00:00:00Z", "endTime": "2026-06-01T00:00:00Z"},
    )
    assert too_long.status_code == 400
    assert too_long.json()["code"] == 3
    assert _violations(too_long.json()) == {"start_time": "the range is at most 366 days"}
    twice = await http.post("/v1/GetUsage", json={"groupBy": ["DIMENSION_DAY", "DIMENSION_DAY"]})
    assert twice.status_code == 400
    assert set(_violations(twice.json())) == {"group_by[1]"}
    unknown = await http.post("/v1/GetUsage", json={"groupBy": ["DIMENSION_PLANET"]})
    assert unknown.status_code == 400
    assert set(_violations(unknown.json())) == {"groupBy[0]"}


async def test_the_usage_page_and_its_script_are_served(http: httpx.AsyncClient) -> None:
    page = await http.get("/usage")
    assert page.status_code == 200
    assert '<script src="/static/usage.js"' in page.text and 'href="/usage"' in page.text
    script = await http.get("/static/usage.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "GetUsage" in script.text
