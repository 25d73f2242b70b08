"""Agent rate limits: the rules, the compact ``COUNT/PERIOD`` spelling of
``PODIUM_AGENTS`` and of the CLI, and the file form."""

from __future__ import annotations

from pathlib import Path

import pytest

from podium.client.cli_commands import agent_rate_limit
from podium.client.cli_output import CliError
from podium.server.agents.rate_limits import parse_rate, rate_limit_problems
from podium.server.agents.static import parse_static_agents


@pytest.mark.parametrize(
    ("text", "expected"),
    [("60/60s", (60, 60.0)), ("5/2", (5, 2.0)), ("1000/1m", (1000, 60.0)), ("9/1.5h", (9, 5400.0))],
)
def test_parse_rate(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "60", "a/1s", "60/", "-1/1s", "1/1d"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/PERIOD"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("limit", "paths"),
    [
        ((0, 0, 0.0), []),
        ((60, 0, 60.0), []),
        ((0, 1000, 86_400.0), []),
        ((5, 0, 0.0), ["rate_limit.period_seconds"]),
        ((5, 0, 86_400.5), ["rate_limit.period_seconds"]),
        ((5, 0, float("nan")), ["rate_limit.period_seconds"]),
        ((0, 0, 10.0), ["rate_limit.period_seconds"]),
        ((-1, 0, 10.0), ["rate_limit.requests_per_period"]),
        ((0, -1, 10.0), ["rate_limit.tokens_per_period"]),
    ],
)
def test_rate_limit_problems(limit: tuple[int, int, float], paths: list[str]) -> None:
    assert [path for path, _ in rate_limit_problems(*limit)] == paths


def test_compact_static_agents_take_rate_and_tokens() -> None:
    agents = parse_static_agents("llm=127.0.0.1:1;rate=60/1m;tokens=9000/60s,plain=127.0.0.1:2")
    assert (agents[0].requests_per_period, agents[0].tokens_per_period) == (60, 9000)
    assert agents[0].rate_period_seconds == 60.0
    assert (agents[1].requests_per_period, agents[1].rate_period_seconds) == (0, 0.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("llm=127.0.0.1:1;rate=60/1m;tokens=9000/30s", "same period"),
        ("llm=127.0.0.1:1;rate=sixty", "COUNT/PERIOD"),
        ("llm=127.0.0.1:1;rate=5/100000", "period_seconds"),
    ],
)
def test_compact_static_agents_refuse_bad_rates(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_static_agents(value)


def test_file_static_agents_take_a_rate_limit(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        "- name: llm\n  endpoint: 127.0.0.1:1\n"
        "  rate_limit: {requests_per_period: 10, tokens_per_period: 500, period_seconds: 30}\n"
    )
    (agent,) = parse_static_agents(str(path))
    assert (agent.requests_per_period, agent.tokens_per_period) == (10, 500)
    assert agent.rate_period_seconds == 30.0
    path.write_text("- name: llm\n  endpoint: 127.0.0.1:1\n  rate_limit: {per_minute: 10}\n")
    with pytest.raises(ValueError, match="rate_limit must be an object"):
        parse_static_agents(str(path))
    path.write_text(
        "- name: llm\n  endpoint: 127.0.0.1:1\n"
        "  rate_limit: {period_seconds: 0, requests_per_period: 3}\n"
    )
    with pytest.raises(ValueError, match="period_seconds"):
        parse_static_agents(str(path))


def test_cli_rate_flags() -> None:
    assert agent_rate_limit(None, None) is None
    limit = agent_rate_limit("30/1m", "90000/60s")
    assert limit is not None
    assert (limit.requests_per_period, limit.tokens_per_period, limit.period_seconds) == (
        30,
        90000,
        60.0,
    )
    with pytest.raises(CliError, match="same period"):
        agent_rate_limit("30/1m", "90000/30s")
    with pytest.raises(CliError, match="COUNT/PERIOD"):
        agent_rate_limit("thirty", None)


def test_static_agents_take_a_rate_limit_per_key(tmp_path: Path) -> None:
    (compact,) = parse_static_agents("llm=127.0.0.1:1;rate=5/1m;rate_per_key=true")
    assert compact.rate_per_key and compact.requests_per_period == 5
    (default,) = parse_static_agents("llm=127.0.0.1:1;rate=5/1m")
    assert not default.rate_per_key
    with pytest.raises(ValueError, match="must be true or false"):
        parse_static_agents("llm=127.0.0.1:1;rate=5/1m;rate_per_key=yes")
    path = tmp_path / "agents.yaml"
    path.write_text(
        "- name: llm\n  endpoint: 127.0.0.1:1\n"
        "  rate_limit: {requests_per_period: 10, period_seconds: 30, per_key: true}\n"
    )
    (agent,) = parse_static_agents(str(path))
    assert agent.rate_per_key
    path.write_text(
        "- name: llm\n  endpoint: 127.0.0.1:1\n"
        "  rate_limit: {requests_per_period: 10, period_seconds: 30, per_key: 1}\n"
    )
    with pytest.raises(ValueError, match="per_key must be true or false"):
        parse_static_agents(str(path))
