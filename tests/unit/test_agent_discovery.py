"""What an agent's card gives its entry (agents/discovery.py)."""

from __future__ import annotations

from podium.agent.v1 import agent_pb2
from podium.server.agents.discovery import CardValues, merge_card


def card(*skills: str, max_concurrency: int = 0, timeout: float = 0.0) -> agent_pb2.AgentCard:
    return agent_pb2.AgentCard(
        name="a",
        skills=[agent_pb2.Skill(id=s) for s in skills],
        max_concurrency=max_concurrency,
        default_timeout_seconds=timeout,
    )


def test_nothing_given_takes_the_card() -> None:
    got = merge_card(
        card("sleep", "nap", "Bad Id", max_concurrency=2, timeout=42),
        skills=[],
        max_concurrency=0,
        default_timeout_seconds=0,
    )
    assert got == (CardValues(("sleep", "nap"), 2, 42.0), [])


def test_given_values_narrow_or_override() -> None:
    got = merge_card(
        card("sleep", "nap", max_concurrency=2, timeout=42),
        skills=["nap"],
        max_concurrency=1,
        default_timeout_seconds=5,
    )
    assert got == (CardValues(("nap",), 1, 5.0), [])


def test_contradictions_are_problems_or_narrowed() -> None:
    offered = card("nap", max_concurrency=2)
    _, problems = merge_card(
        offered, skills=["fly", "nap"], max_concurrency=3, default_timeout_seconds=0
    )
    assert [path for path, _ in problems] == ["skills[0]", "max_concurrency"]
    assert "does not offer skill 'fly' (it offers: nap)" in problems[0][1]
    narrowed = merge_card(
        offered, skills=["fly", "nap"], max_concurrency=3, default_timeout_seconds=0, narrow=True
    )
    assert narrowed == (CardValues(("nap",), 2, 0.0), [])


def test_a_card_without_skills_or_limit_accepts_what_is_given() -> None:
    got = merge_card(card(), skills=["any"], max_concurrency=9, default_timeout_seconds=0)
    assert got == (CardValues(("any",), 9, 0.0), [])
