"""What a ``podium.agent.v1`` agent's card gives its entry: :func:`merge_card`.

RegisterAgent and the static agents (``PODIUM_AGENTS``) read the agent's card
(``GetAgentCard``) and take from it what the entry does not say:

- ``skills``: none given -> the card's skill ids. Given ones narrow the card's: each
  must be one of them (a card that announces no skills accepts any).
- ``max_concurrency``: 0 -> the card's. A value given may be lower than the card's (a
  card's 0 announces no limit), not higher.
- ``default_timeout_seconds``: 0 -> the card's. A value given overrides it.

Contradictions are problems (``(field path, description)``, the shape of
:func:`~podium.server.agents.static.agent_problems`); with ``narrow=True`` (a card read
later for a lazy registration, when nobody can be answered any more) they are resolved
in favour of the card instead: skills it does not offer are dropped, a higher limit is
lowered to the card's. Skill ids of the card that break the naming rule are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from podium.agent.v1 import agent_pb2
from podium.server.agents.static import MAX_SKILLS, MAX_TIMEOUT_SECONDS, agent_problems

__all__ = ["CardValues", "merge_card"]


@dataclass(frozen=True, slots=True)
class CardValues:
    """The values an agent entry gets once its card is read."""

    skills: tuple[str, ...]
    max_concurrency: int
    default_timeout_seconds: float


def _card_skills(card: agent_pb2.AgentCard) -> list[str]:
    skills: list[str] = []
    for skill in card.skills:
        valid = not agent_problems(
            name="x",
            endpoint="h:1",
            skills=[skill.id],
            max_concurrency=0,
            default_timeout_seconds=0,
            labels={},
        )
        if valid and skill.id not in skills:
            skills.append(skill.id)
    return skills[:MAX_SKILLS]


def merge_card(
    card: agent_pb2.AgentCard,
    *,
    skills: Sequence[str],
    max_concurrency: int,
    default_timeout_seconds: float,
    narrow: bool = False,
) -> tuple[CardValues, list[tuple[str, str]]]:
    """The entry's values merged with ``card`` (module doc), and the contradictions
    (empty with ``narrow``)."""
    problems: list[tuple[str, str]] = []
    offered = _card_skills(card)
    merged_skills = list(skills)
    if not skills:
        merged_skills = offered
    elif offered:
        missing = [(index, s) for index, s in enumerate(skills) if s not in offered]
        if narrow:
            merged_skills = [s for s in skills if s in offered]
        for index, skill in missing if not narrow else ():
            problems.append(
                (
                    f"skills[{index}]",
                    f"the agent's card does not offer skill '{skill}' "
                    f"(it offers: {', '.join(offered)})",
                )
            )
    limit = max(card.max_concurrency, 0)
    merged_max = max_concurrency or limit
    if limit and max_concurrency > limit:
        if narrow:
            merged_max = limit
        else:
            problems.append(
                (
                    "max_concurrency",
                    f"the agent's card accepts at most {limit} tasks at once; "
                    f"got {max_concurrency} (0 takes the card's)",
                )
            )
    timeout = card.default_timeout_seconds
    card_timeout = timeout if math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT_SECONDS else 0.0
    merged_timeout = default_timeout_seconds or card_timeout
    return CardValues(tuple(merged_skills), merged_max, merged_timeout), problems
