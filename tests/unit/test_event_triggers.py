"""The payload filter of event triggers: jsonb containment, in Python."""

from __future__ import annotations

import pytest

from podium.server.engine.triggers import contains, trigger_request_id


@pytest.mark.parametrize(
    ("value", "pattern", "expected"),
    [
        ({"a": 1, "b": 2}, {"a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": 1}, {"b": 1}, False),
        ({"a": {"b": [1, 2, {"c": "x"}]}}, {"a": {"b": [{"c": "x"}, 2]}}, True),
        ({"a": [1, 2]}, {"a": [3]}, False),
        ({"a": 1.0}, {"a": 1}, True),
        ({"a": True}, {"a": 1}, False),
        ({"a": 1}, {"a": True}, False),
        ({"a": "1"}, {"a": 1}, False),
        ({}, {}, True),
        ([1, 2], [2], True),
        ({"a": None}, {"a": None}, True),
    ],
)
def test_contains_follows_jsonb_containment(value: object, pattern: object, expected: bool) -> None:
    assert contains(value, pattern) is expected


def test_request_ids_are_per_event_and_definition_and_fit_the_limit() -> None:
    first = trigger_request_id("e" * 128, "d" * 64)
    assert len(first) <= 128
    assert first == trigger_request_id("e" * 128, "d" * 64)
    assert first != trigger_request_id("e" * 128, "other")
    assert trigger_request_id("a\0b", "c") != trigger_request_id("a", "b\0c")
