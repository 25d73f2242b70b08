"""Settings of the database connection: the pool mode and the direct URL."""

from __future__ import annotations

import pytest

from podium.server.config import ConfigError, Settings

POOLED = "postgresql://podium@pgbouncer:6432/podium"
DIRECT = "postgresql://podium@postgres:5432/podium"


def test_transaction_pooling_needs_a_direct_url() -> None:
    env = {"PODIUM_DATABASE_URL": POOLED, "PODIUM_DATABASE_POOL_MODE": "transaction"}
    with pytest.raises(ConfigError, match="needs PODIUM_DATABASE_DIRECT_URL"):
        Settings.from_env(env)
    settings = Settings.from_env({**env, "PODIUM_DATABASE_DIRECT_URL": DIRECT})
    assert (settings.database_pool_mode, settings.database_direct_url) == ("transaction", DIRECT)


def test_session_mode_is_the_default_and_needs_nothing_more() -> None:
    settings = Settings.from_env({"PODIUM_DATABASE_URL": DIRECT})
    assert (settings.database_pool_mode, settings.database_direct_url) == ("session", None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PODIUM_DATABASE_POOL_MODE": "statement"}, "expected one of session, transaction"),
        ({"PODIUM_DATABASE_DIRECT_URL": DIRECT}, "without PODIUM_DATABASE_URL"),
        (
            {"PODIUM_DATABASE_URL": POOLED, "PODIUM_DATABASE_DIRECT_URL": "mysql://x/y"},
            "PODIUM_DATABASE_DIRECT_URL: expected a postgresql:// URL",
        ),
    ],
)
def test_bad_database_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
