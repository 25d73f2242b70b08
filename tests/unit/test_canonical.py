"""Canonical JSON and content hashes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.canonical import canonical_json, definition_hash, sha256_hex

Definition = definition_pb2.Definition

SPEC: dict[str, Any] = {
    "name": "research-brief",
    "description": "Find, summarize, translate",
    "labels": {"team": "research", "tier": "gold"},
    "execution": {"concurrency": {"max_parallel": 4}, "budget": {"max_tokens": 1000}},
    "steps": [
        {
            "id": "search",
            "agent": "web-search",
            "input": {"query": "${run.input.topic}", "options": {"limit": 5, "lang": "en"}},
        },
        {"id": "summarize", "agent": "summarizer", "depends_on": ["search"]},
    ],
}


def test_canonical_form() -> None:
    value = {"b": [1, 2.5, 3.0, True, None], "a": {"z": "é", "y": -0.0}, "c": 1e-7}
    assert (
        canonical_json(value) == '{"a":{"y":0,"z":"é"},"b":[1,2.5,3,true,null],"c":1e-07}'.encode()
    )


def test_key_order_and_whitespace_do_not_matter() -> None:
    one = json.loads('{"a": 1, "b": {"x": [1, 2], "y": "t"}}')
    two = json.loads('{\n  "b": {"y": "t",   "x": [1,2]},\n  "a": 1\n}')
    assert canonical_json(one) == canonical_json(two)
    assert sha256_hex(one) == sha256_hex(two)


def test_integral_floats_equal_ints() -> None:
    assert sha256_hex({"n": 1.0}) == sha256_hex({"n": 1})
    assert canonical_json(2.0**60) == str(2**60).encode()
    assert sha256_hex({"n": 1.5}) != sha256_hex({"n": 1})


def test_floats_round_trip() -> None:
    for number in (0.1, 1 / 3, 1e300, -2.5e-300):
        assert float(canonical_json(number)) == number


def test_any_value_change_changes_the_hash() -> None:
    base = {"a": [1, "x", True], "b": None}
    hashes = {
        sha256_hex(v)
        for v in (
            base,
            {"a": [1, "x", False], "b": None},
            {"a": [1, "y", True], "b": None},
            {"a": [2, "x", True], "b": None},
            {"a": [1, "x", True], "b": 0},
            {"a": [1, "x", True]},
            {"a": ["x", 1, True], "b": None},
        )
    }
    assert len(hashes) == 7


def test_sha256_hex_is_the_digest_of_the_canonical_bytes() -> None:
    value = {"k": "v"}
    assert sha256_hex(value) == hashlib.sha256(b'{"k":"v"}').hexdigest()


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_rejected(number: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": [number]})


@pytest.mark.parametrize("value", [{1: "x"}, {"s": {1, 2}}, b"bytes"])
def test_non_json_values_are_rejected(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


def _definition(spec: dict[str, Any]) -> Definition:
    return json_format.ParseDict(spec, Definition())


def test_definition_hash_ignores_struct_key_order_and_output_only_fields() -> None:
    reordered = json.loads(json.dumps(SPEC))
    reordered["steps"][0]["input"] = {
        "options": {"lang": "en", "limit": 5.0},
        "query": "${run.input.topic}",
    }
    reordered["labels"] = {"tier": "gold", "team": "research"}
    stored = _definition(reordered)
    stored.version = 3
    stored.organization_id = "org-1"
    stored.content_hash = "old"
    stored.archived = True
    stored.create_time.seconds = 1_700_000_000

    assert definition_hash(stored) == definition_hash(_definition(SPEC))
    assert len(definition_hash(stored)) == 64


def test_definition_hash_is_stable_across_serialization() -> None:
    definition = _definition(SPEC)
    copy = Definition.FromString(definition.SerializeToString(deterministic=False))
    assert definition_hash(copy) == definition_hash(definition)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: setattr(d, "description", "other"),
        lambda d: d.labels.__setitem__("tier", "silver"),
        lambda d: d.steps[0].input["options"].__setitem__("limit", 6),
        lambda d: d.steps[1].depends_on.append("x"),
        lambda d: setattr(d.execution.concurrency, "max_parallel", 5),
        lambda d: setattr(d.steps[0], "skill", "web-search"),
    ],
)
def test_definition_hash_changes_with_content(change: Any) -> None:
    definition = _definition(SPEC)
    before = definition_hash(definition)
    change(definition)
    assert definition_hash(definition) != before
