"""Conditions (``engine/conditions.py``): what validation finds in an expression and what
evaluation returns, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from podium.client.definitions import parse_definition
from podium.server.engine.conditions import (
    ConditionEvaluationError,
    check_condition,
    evaluate_condition,
    run_variables,
    step_mentions,
    uses_run_metadata,
)
from podium.server.engine.validation import validate_definition

RUN = run_variables(
    run_id="00000000-0000-0000-0000-000000000001",
    run_input={"language": "fr", "n": 3, "tags": ["a", "b"]},
    labels={"tier": "gold"},
    organization_id="acme",
    definition_name="flow",
    definition_version=2,
    metadata={"customer": {"plan": "enterprise"}},
)


@pytest.mark.parametrize(
    ("source", "steps"),
    [
        ('run.input.language != "en"', []),
        ('steps.classify.output.label == "billing"', ["classify"]),
        ('steps["my-step"].output.x > 1 || steps.a.output == null', ["a", "my-step"]),
        ("has(steps.a.output.x) && steps.a.output.x > 0", ["a"]),
        ('run.input.tags.exists(t, t == "a") && run.labels.tier == "gold"', []),
        ('"steps.fake.output" == run.id', []),  # inside a string: not a reference
        ("size(run.input.tags) == 2 && type(run.input.n) == int", []),
        ("run.definition.version >= 2 && run.organization_id != ''", []),
    ],
)
def test_valid_conditions_and_their_step_references(source: str, steps: list[str]) -> None:
    mentions, problems = check_condition(source)
    assert problems == []
    assert sorted({m.step_id for m in mentions}) == steps == step_mentions(source)


@pytest.mark.parametrize(
    ("source", "reason", "where", "text"),
    [
        ("1 +", "INVALID_CONDITION", (1, 4), "CEL syntax error"),
        ("run.input.x ==\n  ", "INVALID_CONDITION", (2, 3), "syntax error"),
        ("foo == 1", "UNKNOWN_CONDITION_VARIABLE", (1, 1), "unknown variable 'foo'"),
        ("run.inptu.x", "UNKNOWN_CONDITION_VARIABLE", (1, 5), "unknown field run.inptu"),
        ("steps.a == 1", "INVALID_CONDITION", (1, 1), "steps.ID.output"),
        ("run == 1", "INVALID_CONDITION", (1, 1), "run.FIELD"),
        ("x" * 5000, "CONDITION_TOO_LONG", (1, 1), "at most 4096"),
    ],
)
def test_problems_name_their_position(
    source: str, reason: str, where: tuple[int, int], text: str
) -> None:
    _, problems = check_condition(source)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert (problem.reason, (problem.line, problem.column)) == (reason, where)
    assert text in problem.message
    assert f"line {where[0]}, column {where[1]}" in problem.describe()


@pytest.mark.parametrize(
    ("source", "outputs", "expected"),
    [
        ('run.input.language != "en"', {}, True),
        ('run.labels.tier == "silver"', {}, False),
        ("steps.a.output == null", {"a": None}, True),  # skipped upstream
        ('steps.a.output.label == "x"', {"a": {"label": "x"}}, True),
        ("run.input.n > 2.5 && run.input.n == 3.0", {}, True),  # numbers compare across types
        ('run.definition.name == "flow" && run.definition.version == 2', {}, True),
        ('run.metadata.customer.plan == "enterprise"', {}, True),
        # && absorbs the error of a field of a skipped (null) output
        ('steps.a.output != null && steps.a.output.label == "x"', {"a": None}, False),
    ],
)
def test_evaluation(source: str, outputs: dict[str, Any], expected: bool) -> None:
    assert evaluate_condition(source, RUN, outputs) is expected


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("run.input.absent == 1", "absent"),
        ("run.input.n", "not a bool"),
        ("run.input.language + 1 == 2", "failed"),
    ],
)
def test_evaluation_errors(source: str, text: str) -> None:
    with pytest.raises(ConditionEvaluationError, match=text):
        evaluate_condition(source, RUN, {})


def test_only_conditions_reading_run_metadata_get_it() -> None:
    assert uses_run_metadata("run.metadata.x == 1 || run.input.y")
    assert not uses_run_metadata('run.input.metadata == 1 && "run.metadata" != ""')


def test_a_timer_step_cannot_loop() -> None:
    """A loop repeats an agent or skill call: on a sleep or wait_for_event step it is a
    field violation, not ignored."""
    for kind in ({"sleep": {"seconds": 1}}, {"wait_for_event": {"name": "e"}}):
        definition = parse_definition(
            {"name": "t", "steps": [{"id": "w", **kind, "loop": {"max_iterations": 2}}]}
        )
        fields = {v.field for v in validate_definition(definition)}
        assert "steps[0].loop" in fields, (kind, fields)


def test_a_for_each_step_cannot_loop() -> None:
    definition = parse_definition(
        {
            "name": "t",
            "steps": [
                {
                    "id": "each",
                    "agent": "echo",
                    "for_each": "${run.input.items}",
                    "loop": {"max_iterations": 2},
                }
            ],
        }
    )
    assert "steps[0].loop" in {v.field for v in validate_definition(definition)}
