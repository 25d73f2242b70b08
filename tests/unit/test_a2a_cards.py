"""A2A agents by card URL, the parts that need no network: where the card is read, which
interface of a card is called, how HTTP failures read in the attempt loop, and the
endpoint rules of RegisterAgent and PODIUM_AGENTS."""

from __future__ import annotations

import grpc
import httpx
import pytest
from a2a.client.errors import A2AClientError, A2AClientTimeoutError
from a2a.types import a2a_pb2
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError

from podium.server.agents.a2a_attempt import has_a2a_error
from podium.server.agents.a2a_http import (
    CardUnavailable,
    card_location,
    choose_binding,
    translate,
)
from podium.server.agents.a2a_v03 import A2AConversionError
from podium.server.agents.endpoints import EndpointRefused
from podium.server.agents.static import agent_problems, parse_static_agents
from podium.server.outbound_http import UrlRefused


def card(*interfaces: tuple[str, str, str]) -> a2a_pb2.AgentCard:
    return a2a_pb2.AgentCard(
        supported_interfaces=[
            a2a_pb2.AgentInterface(protocol_binding=b, url=u, protocol_version=v)
            for b, u, v in interfaces
        ]
    )


def test_card_location() -> None:
    well_known = "https://a.example/.well-known/agent-card.json"
    assert card_location("https://a.example") == well_known
    assert card_location("https://a.example/") == well_known
    assert card_location(well_known) == well_known
    assert card_location("http://a.example:8080/cards/x.json") == (
        "http://a.example:8080/cards/x.json"
    )
    with pytest.raises(UrlRefused, match="user information"):
        card_location("https://me:secret@a.example/")


def test_the_first_binding_podium_speaks_in_the_agents_order() -> None:
    chosen = choose_binding(
        card(
            ("WEBSOCKET", "wss://a/ws", "1.0"),
            ("HTTP+JSON", "https://a/rest", "1.0"),
            ("JSONRPC", "https://a/rpc", "1.0"),
            ("GRPC", "a:443", "1.0"),
        )
    )
    assert (chosen.protocol, chosen.url, chosen.grpc) == ("HTTP+JSON", "https://a/rest", False)
    grpc_first = choose_binding(card(("GRPC", "a:443", "1.0"), ("JSONRPC", "https://a", "1.0")))
    assert (grpc_first.protocol, grpc_first.url, grpc_first.grpc) == ("GRPC", "a:443", True)


def test_within_a_binding_1_0_then_1_x_then_0_3() -> None:
    chosen = choose_binding(
        card(
            ("JSONRPC", "https://a/v03", "0.3"),
            ("JSONRPC", "https://a/v11", "1.1"),
            ("JSONRPC", "https://a/v10", "1.0.0"),
        )
    )
    assert chosen.url == "https://a/v10"
    legacy = choose_binding(card(("JSONRPC", "https://a/v03", "0.3"), ("GRPC", "a:1", "2.0")))
    assert (legacy.url, legacy.legacy) == ("https://a/v03", True)
    # A binding whose only versions Podium does not speak gives way to the next binding.
    skipped = choose_binding(card(("JSONRPC", "https://a/v2", "2.0"), ("GRPC", "a:1", "1.0")))
    assert skipped.protocol == "GRPC"


def test_a_card_without_a_binding_podium_speaks() -> None:
    with pytest.raises(CardUnavailable, match="WEBSOCKET 1.0") as refused:
        choose_binding(card(("WEBSOCKET", "wss://a", "1.0"), ("JSONRPC", "https://a", "3.0")))
    assert refused.value.transient is False
    with pytest.raises(CardUnavailable, match="none"):
        choose_binding(card())


def test_http_failures_read_as_grpc_statuses() -> None:
    not_found = translate(TaskNotFoundError("no task t1"))
    assert isinstance(not_found, grpc.aio.AioRpcError)
    assert not_found.code() is grpc.StatusCode.NOT_FOUND
    assert not_found.details() == "TaskNotFoundError: no task t1"
    assert has_a2a_error(not_found)
    refused = translate(TaskNotCancelableError("done"))
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION
    try:
        raise A2AClientError("Network communication error: reset") from httpx.ReadError("reset")
    except A2AClientError as exc:
        cut = translate(exc)
    assert isinstance(cut, grpc.aio.AioRpcError)
    assert cut.code() is grpc.StatusCode.UNAVAILABLE and not has_a2a_error(cut)
    request = httpx.Request("POST", "https://a/rpc")
    try:
        raise A2AClientError("HTTP Error 503") from httpx.HTTPStatusError(
            "503", request=request, response=httpx.Response(503, request=request)
        )
    except A2AClientError as exc:
        busy = translate(exc)
    assert isinstance(busy, grpc.aio.AioRpcError)
    assert busy.code() is grpc.StatusCode.UNAVAILABLE
    late = translate(A2AClientTimeoutError("timed out"))
    assert isinstance(late, grpc.aio.AioRpcError)
    assert late.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    denied = translate(EndpointRefused("a.example resolves to 10.0.0.1, a private address"))
    assert isinstance(denied, grpc.aio.AioRpcError)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    assert isinstance(translate(A2AClientError("Invalid JSON-RPC response")), A2AConversionError)
    bug = RuntimeError("a bug")
    assert translate(bug) is bug


def _endpoint_problems(endpoint: str, protocol: str) -> list[tuple[str, str]]:
    return agent_problems(
        name="remote",
        endpoint=endpoint,
        skills=[],
        max_concurrency=0,
        default_timeout_seconds=0,
        labels={},
        protocol=protocol,
    )


def test_card_urls_are_a2a_endpoints_only() -> None:
    assert _endpoint_problems("https://a.example/.well-known/agent-card.json", "a2a") == []
    ((path, problem),) = _endpoint_problems("https://a.example", "podium_v1")
    assert path == "endpoint" and "only A2A agents" in problem
    ((_, form),) = _endpoint_problems("https://a.example:0/", "a2a")
    assert "port must not be 0" in form
    (static,) = parse_static_agents("planner=https://a.example;protocol=a2a;skills=plan")
    assert (static.endpoint, static.protocol, static.skills) == (
        "https://a.example",
        "a2a",
        ("plan",),
    )
    with pytest.raises(ValueError, match="only A2A agents"):
        parse_static_agents("planner=https://a.example")
