"""Agent rate limits: the rules shared by RegisterAgent and ``PODIUM_AGENTS``, and the
compact ``COUNT/PERIOD`` spelling of the configuration and the CLI.

A rate limit is requests and/or tokens per period over a sliding window; the claim
enforces it (``server/storage/functions/45_rate_limits.sql``).
"""

from __future__ import annotations

import math
import re

__all__ = [
    "MAX_RATE_PERIOD_SECONDS",
    "MAX_RATE_REQUESTS",
    "MAX_RATE_TOKENS",
    "parse_rate",
    "rate_limit_problems",
]

MAX_RATE_PERIOD_SECONDS = 86_400.0  # one day: the usage log keeps a day
MAX_RATE_REQUESTS = 2**31 - 1  # int32 in the proto and the table
MAX_RATE_TOKENS = 2**63 - 1  # int64

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def rate_limit_problems(
    requests_per_period: float, tokens_per_period: float, period_seconds: float
) -> list[tuple[str, str]]:
    """Every problem of a rate limit, as ``(field path, description)`` pairs with paths
    under ``rate_limit`` (``rate_limit.period_seconds``). All zero means no limit."""
    problems: list[tuple[str, str]] = []
    for name, value, most in (
        ("requests_per_period", requests_per_period, MAX_RATE_REQUESTS),
        ("tokens_per_period", tokens_per_period, MAX_RATE_TOKENS),
    ):
        if not 0 <= value <= most or (isinstance(value, float) and not value.is_integer()):
            problems.append(
                (f"rate_limit.{name}", f"must be a whole number >= 0 (0: no limit); got {value}")
            )
    counted = requests_per_period != 0 or tokens_per_period != 0
    path = "rate_limit.period_seconds"
    if not math.isfinite(period_seconds):
        problems.append((path, f"must be a finite number of seconds (got {period_seconds})"))
    elif counted and not 0 < period_seconds <= MAX_RATE_PERIOD_SECONDS:
        problems.append(
            (
                path,
                f"must be more than 0 and at most {MAX_RATE_PERIOD_SECONDS:g} seconds (one "
                f"day) when a count is set; got {period_seconds:g}",
            )
        )
    elif not counted and period_seconds != 0:
        problems.append(
            (path, "a period without requests_per_period or tokens_per_period limits nothing")
        )
    return problems


def parse_rate(value: str) -> tuple[int, float]:
    """``COUNT/PERIOD`` (``60/60s``, ``100000/1m``, ``5/2``: seconds unless ``s``, ``m``
    or ``h``) as ``(count, period_seconds)``.

    Raises:
        ValueError: not of that form.
    """
    match = _RATE.fullmatch(value)
    if match is None:
        raise ValueError(f"expected COUNT/PERIOD such as 60/60s or 100000/1m, got {value!r}")
    unit = (match.group(3) or "s").lower()
    return int(match.group(1)), float(match.group(2)) * _UNIT_SECONDS[unit]
