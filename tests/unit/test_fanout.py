"""Pure parts of dynamic fan-out: the escaping of resolved item inputs and the
validation of ``for_each`` / ``max_parallel``."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.fanout import escape_references, item_step_id
from podium.server.engine.references import resolve
from podium.server.engine.validation import validate_plan
from podium.server.storage.steps import StepSpec


def test_escaped_item_inputs_resolve_to_themselves() -> None:
    """An item's resolved input is data: the child's executor resolves it again and
    must get it back unchanged, whatever ``$`` and ``${`` it holds."""
    data = {
        "a": "${run.input.x}",
        "b": ["$${x}", "a$${b", "$$", "$", "cost: $5", {"c": "${steps.s.output}"}],
        "n": 3,
        "none": None,
    }
    escaped = escape_references(data)
    assert resolve(escaped, run_input={}, step_outputs={}) == data
    assert item_step_id(12) == "item-12"


def _violations(steps: list[dict[str, Any]]) -> dict[str, str]:
    plan = json_format.ParseDict({"steps": steps}, definition_pb2.Definition())
    return {v.field: v.reason for v in validate_plan(plan)}


FAN = {"id": "fan", "agent": "echo", "for_each": "${run.input.items}", "input": {"v": "${item}"}}


def test_a_for_each_step_is_valid() -> None:
    upstream = {**FAN, "for_each": "${steps.a.output.list}", "depends_on": ["a"]}
    assert _violations([{"id": "a", "agent": "echo"}, upstream]) == {}
    assert _violations([{**FAN, "max_parallel": 3}]) == {}


@pytest.mark.parametrize(
    ("step", "field", "reason"),
    [
        ({**FAN, "for_each": "items"}, "steps[1].for_each", "INVALID_FOR_EACH"),
        ({**FAN, "for_each": "x ${run.input.items}"}, "steps[1].for_each", "INVALID_FOR_EACH"),
        ({**FAN, "for_each": "${item}"}, "steps[1].for_each", "INVALID_FOR_EACH"),
        ({**FAN, "for_each": "${nope}"}, "steps[1].for_each", "MALFORMED_REFERENCE"),
        (
            {**FAN, "for_each": "${steps.a.output}"},
            "steps[1].for_each",
            "REFERENCE_NOT_UPSTREAM",
        ),
        (
            {**FAN, "for_each": "${steps.zz.output}"},
            "steps[1].for_each",
            "UNKNOWN_STEP_REFERENCE",
        ),
        (
            {**FAN, "checkpoint": {"when": "WHEN_AFTER"}},
            "steps[1].checkpoint",
            "FOR_EACH_CHECKPOINT",
        ),
        (
            {"id": "s", "agent": "echo", "max_parallel": 2},
            "steps[1].max_parallel",
            "FOR_EACH_REQUIRED",
        ),
        (
            {"id": "s", "agent": "echo", "input": {"i": "${item_index}"}},
            "steps[1].input.i",
            "ITEM_OUTSIDE_FOR_EACH",
        ),
    ],
)
def test_refusals_name_the_field(step: dict[str, Any], field: str, reason: str) -> None:
    found = _violations([{"id": "a", "agent": "echo"}, step])
    assert found.get(field) == reason, found


def test_a_for_each_step_needs_an_agent_or_a_skill() -> None:
    step = {k: v for k, v in FAN.items() if k != "agent"}
    step["orchestration"] = {"name": "child"}
    assert _violations([step]).get("steps[0].orchestration") == "FOR_EACH_TARGET"


def test_the_spec_keeps_the_fan_out_fields_and_the_key_step() -> None:
    data = {
        "id": "fan",
        "agent": "echo",
        "for_each": "${run.input.items}",
        "max_parallel": 2,
        "caching": {
            "ttl_seconds": 0.0,
            "key_paths": [],
            "scope": {"plan_sha256": "ab"},
            "target": {"agent": "echo"},
            "key_step": "fan",
        },
    }
    spec = StepSpec.from_json(data)
    assert (spec.for_each, spec.max_parallel) == ("${run.input.items}", 2)
    assert spec.caching is not None and spec.caching.key_step == "fan"
    assert spec.to_json() == data
