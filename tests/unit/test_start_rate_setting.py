"""PODIUM_START_RUN_RATE: N/PERIOD."""

from __future__ import annotations

import pytest

from podium.server.config import ConfigError, Settings


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("100/1s", (100, 1.0)), ("6000/1m", (6000, 60.0)), ("5/30", (5, 30.0)), ("", None)],
)
def test_start_run_rate_parses(raw: str, expected: tuple[int, float] | None) -> None:
    assert Settings.from_env({"PODIUM_START_RUN_RATE": raw}).start_run_rate == expected


@pytest.mark.parametrize("raw", ["100", "0/1s", "10/0s", "10/2d", "ten/1s", "10/1w"])
def test_a_bad_start_run_rate_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="PODIUM_START_RUN_RATE"):
        Settings.from_env({"PODIUM_START_RUN_RATE": raw})
