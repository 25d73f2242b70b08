"""YAML/JSON definition loader of the client: short forms, errors, dumping."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

import podium.client.definitions as definitions_module
from podium.client.definitions import (
    DefinitionFileError,
    definition_to_dict,
    load_definition,
    parse_definition,
)
from podium.orchestration.v1 import definition_pb2
from podium.server.engine.validation import validate_definition

Definition = definition_pb2.Definition
BudgetPolicy = definition_pb2.BudgetPolicy
CheckpointPolicy = definition_pb2.CheckpointPolicy

# A definition using every part of the format in its YAML short forms: concurrency (with
# the key and max_runs_per_key not built yet), a budget (not built yet), caching, error
# handling with backoff, a rollback hint, a skill comment, a checkpoint and a
# sub-orchestration.
FULL_EXAMPLE = """\
name: research-brief
execution:
  concurrency: { max_parallel: 4, key: "${run.input.customer}", max_runs_per_key: 2 }
  budget: { max_tokens: 200000, max_cost_usd: 5.0, on_exceed: pause }   # pause | fail
  caching: { enabled: true, ttl_seconds: 3600 }
error_handling:
  on_step_failure: { max_attempts: 3, backoff: { initial_seconds: 1, multiplier: 2, max_seconds: 30 },
                     notify_human: false, allow_skip: true }
  rollback: { hint: "delete the draft document" }        # kept for operators, never executed
steps:
  - id: search
    agent: web-search                                   # or: skill: search (any agent with it)
    input: { query: "${run.input.topic}" }
  - id: summarize
    agent: summarizer
    depends_on: [search]
    input: { text: "${steps.search.output.results}" }
    checkpoint: after                                   # human approves the output
  - id: translate
    orchestration: { name: translate-flow }             # a sub-orchestration (child run)
    depends_on: [summarize]
    input: { text: "${steps.summarize.output.summary}" }
"""  # noqa: E501


def error_of(text: str) -> DefinitionFileError:
    with pytest.raises(DefinitionFileError) as info:
        parse_definition(text, source="flow.yaml")
    return info.value


def test_full_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "research-brief.yaml"
    path.write_text(FULL_EXAMPLE, encoding="utf-8")

    definition = load_definition(path)

    # Budgets and concurrency keys load, and are valid.
    assert validate_definition(definition) == []
    assert definition.execution.concurrency.max_runs_per_key == 2
    assert definition.name == "research-brief"
    assert definition.execution.concurrency.max_parallel == 4
    assert definition.execution.budget.max_tokens == 200_000
    assert definition.execution.budget.on_exceed == BudgetPolicy.ON_EXCEED_PAUSE
    assert definition.error_handling.on_step_failure.max_attempts == 3
    assert definition.error_handling.on_step_failure.HasField("notify_human")
    assert definition.error_handling.on_step_failure.backoff.max_seconds == 30
    assert [s.id for s in definition.steps] == ["search", "summarize", "translate"]
    assert definition.steps[0].agent == "web-search"
    assert definition.steps[0].input["query"] == "${run.input.topic}"
    assert definition.steps[1].checkpoint.when == CheckpointPolicy.WHEN_AFTER
    assert definition.steps[2].WhichOneof("target") == "orchestration"
    assert definition.steps[2].orchestration.name == "translate-flow"


def test_json_text_is_accepted() -> None:
    text = json.dumps({"name": "j", "steps": [{"id": "a", "agent": "x", "input": {"n": 1}}]})
    definition = parse_definition(text)
    assert definition.steps[0].input["n"] == 1


def test_mapping_is_accepted() -> None:
    definition = parse_definition({"name": "m", "steps": [{"id": "a", "skill": "search"}]})
    assert definition.steps[0].skill == "search"


# --------------------------------------------------------------------------- short forms


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("pause", BudgetPolicy.ON_EXCEED_PAUSE),
        ("fail", BudgetPolicy.ON_EXCEED_FAIL),
        ("FAIL", BudgetPolicy.ON_EXCEED_FAIL),
        ("ON_EXCEED_FAIL", BudgetPolicy.ON_EXCEED_FAIL),
        ("on_exceed_pause", BudgetPolicy.ON_EXCEED_PAUSE),
        ("2", BudgetPolicy.ON_EXCEED_FAIL),
    ],
)
def test_enum_short_forms(written: str, expected: int) -> None:
    definition = parse_definition(f"name: x\nexecution: {{budget: {{on_exceed: {written}}}}}")
    assert definition.execution.budget.on_exceed == expected


def test_enum_short_forms_of_nested_enums() -> None:
    definition = parse_definition(
        "steps:\n  - id: a\n    checkpoint: {when: before, on_expiry: approve, on_reject: skip}\n"
    )
    checkpoint = definition.steps[0].checkpoint
    assert checkpoint.when == CheckpointPolicy.WHEN_BEFORE
    assert checkpoint.on_expiry == CheckpointPolicy.EXPIRY_ACTION_APPROVE
    assert checkpoint.on_reject == CheckpointPolicy.REJECT_ACTION_SKIP


def test_unknown_enum_value_lists_the_short_forms() -> None:
    error = error_of("name: x\nexecution:\n  budget:\n    on_exceed: explode\n")
    assert error.field == "execution.budget.on_exceed"
    assert error.line == 4
    assert "expected one of: pause, fail" in error.message
    assert str(error).startswith("flow.yaml:4: execution.budget.on_exceed: unknown value")


@pytest.mark.parametrize(
    ("written", "expected"),
    [("after", CheckpointPolicy.WHEN_AFTER), ("before", CheckpointPolicy.WHEN_BEFORE)],
)
def test_checkpoint_shorthand(written: str, expected: CheckpointPolicy.When.ValueType) -> None:
    definition = parse_definition(f"steps: [{{id: a, agent: x, checkpoint: {written}}}]")
    assert definition.steps[0].checkpoint == CheckpointPolicy(when=expected)


def test_checkpoint_mapping_form() -> None:
    definition = parse_definition(
        "steps: [{id: a, checkpoint: {when: after, prompt: 'ok?', approvers: [ann]}}]"
    )
    assert definition.steps[0].checkpoint == CheckpointPolicy(
        when=CheckpointPolicy.WHEN_AFTER, prompt="ok?", approvers=["ann"]
    )


def test_orchestration_shorthand() -> None:
    definition = parse_definition("steps: [{id: t, orchestration: translate-flow}]")
    assert definition.steps[0].WhichOneof("target") == "orchestration"
    assert definition.steps[0].orchestration == definition_pb2.OrchestrationRef(
        name="translate-flow"
    )


def test_other_first_field_shorthands() -> None:
    definition = parse_definition(
        "steps:\n  - id: a\n    caching: false\n    rollback: delete the draft\n    on_failure: 3\n"
    )
    step = definition.steps[0]
    assert step.caching.HasField("enabled") and not step.caching.enabled
    assert step.rollback.hint == "delete the draft"
    assert step.on_failure.max_attempts == 3


def test_integers_where_strings_are_expected() -> None:
    definition = parse_definition("steps: [{id: 1, agent: x}, {id: 2, depends_on: [1]}]")
    assert [s.id for s in definition.steps] == ["1", "2"]
    assert list(definition.steps[1].depends_on) == ["1"]


def test_yaml_dates_in_input_become_iso_strings() -> None:
    definition = parse_definition(
        "steps: [{id: a, input: {day: 2024-05-01, at: 2024-05-01T10:00:00Z, 7: seven}}]"
    )
    step_input = definition.steps[0].input
    assert step_input["day"] == "2024-05-01"
    assert step_input["at"] == "2024-05-01T10:00:00Z"
    assert step_input["7"] == "seven"


def test_yaml_anchors_and_merge_keys() -> None:
    definition = parse_definition(
        "steps:\n"
        "  - &base {id: a, agent: worker, timeout_seconds: 30}\n"
        "  - <<: *base\n"
        "    id: b\n"
        "    depends_on: [a]\n"
    )
    assert [(s.id, s.agent, s.timeout_seconds) for s in definition.steps] == [
        ("a", "worker", 30),
        ("b", "worker", 30),
    ]


def test_camel_case_field_names_are_accepted() -> None:
    definition = parse_definition("steps: [{id: a}, {id: b, dependsOn: [a], timeoutSeconds: 5}]")
    assert list(definition.steps[1].depends_on) == ["a"]
    assert definition.steps[1].timeout_seconds == 5


def test_empty_value_leaves_the_field_unset() -> None:
    definition = parse_definition("name: x\ndescription:\nsteps: [{id: a, input: }]")
    assert definition.description == ""
    assert not definition.steps[0].HasField("input")


# --------------------------------------------------------------------------- errors


def test_unknown_field_names_the_field_and_line() -> None:
    error = error_of("name: x\nsteps:\n  - id: a\n    agent: b\n  - id: c\n    agnet: d\n")
    assert error.source == "flow.yaml"
    assert error.field == "steps[1].agnet"
    assert error.line == 6
    assert "unknown field 'agnet' in Step (did you mean 'agent'?)" in error.message
    assert str(error) == (
        "flow.yaml:6: steps[1].agnet: unknown field 'agnet' in Step (did you mean 'agent'?)"
    )


def test_unknown_top_level_field_lists_known_fields_when_nothing_is_close() -> None:
    error = error_of("name: x\nzzz: 1\n")
    assert error.field == "zzz"
    assert error.line == 2
    assert "known fields: name, version" in error.message


def test_bad_yaml_reports_the_line() -> None:
    error = error_of("name: x\nsteps:\n  - id: a\n   agent: [unclosed\n")
    assert error.line is not None and error.line >= 4
    assert error.message.startswith("invalid YAML:")


def test_duplicate_keys_are_rejected() -> None:
    error = error_of("name: x\nsteps:\n  - id: a\n    input: {}\n    input: {q: 1}\n")
    assert error.line == 5
    assert "duplicate key 'input' (first on line 4)" in error.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "got an empty document"),
        ("- a\n- b\n", "got a list"),
        ("just text", "got a str"),
    ],
)
def test_top_level_must_be_a_mapping(text: str, expected: str) -> None:
    error = error_of(text)
    assert "a definition must be a mapping" in error.message
    assert expected in error.message


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("steps: {id: a}", "steps", "expected a list, got a mapping"),
        ("steps: [{id: a, depends_on: b}]", "steps[0].depends_on", "expected a list"),
        (
            "steps: [{id: a, on_failure: {max_attempts: three}}]",
            "steps[0].on_failure.max_attempts",
            "expected an integer",
        ),
        (
            "steps: [{id: a, timeout_seconds: soon}]",
            "steps[0].timeout_seconds",
            "expected a number",
        ),
        ("steps: [{id: [a]}]", "steps[0].id", "expected a string, got a list"),
        (
            "steps: [{id: a, caching: {enabled: maybe}}]",
            "steps[0].caching.enabled",
            "expected true or false",
        ),
        ("steps: [{id: a, checkpoint: [after]}]", "steps[0].checkpoint", "expected a mapping"),
        ("execution: 4", "execution", "expected a mapping for ExecutionPolicy"),
        ("labels: {yes: 1}", "labels", "keys must be strings"),
        ("steps: [{id: a, input: [1, 2]}]", "steps[0].input", "expected a mapping"),
        ("steps: [{id: a, input: {x: .nan}}]", "steps[0].input.x", "numbers must be finite"),
    ],
)
def test_wrong_types_name_the_field(text: str, field: str, expected: str) -> None:
    error = error_of(text)
    assert error.field == field
    assert expected in error.message
    assert error.line == 1


def test_out_of_range_number_is_reported() -> None:
    error = error_of("steps: [{id: a, orchestration: {name: x, version: 99999999999}}]")
    assert "version" in str(error)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionFileError) as info:
        load_definition(tmp_path / "missing.yaml")
    assert "cannot read the file" in str(info.value)
    assert info.value.source.endswith("missing.yaml")


# --------------------------------------------------------------------------- dumping


def test_definition_to_dict_round_trips_with_plain_numbers() -> None:
    definition = parse_definition(FULL_EXAMPLE)
    definition.version = 2

    as_dict = definition_to_dict(definition)

    assert as_dict["version"] == 2
    assert as_dict["execution"]["budget"] == {
        "max_tokens": 200000,
        "max_cost_usd": 5.0,
        "on_exceed": "ON_EXCEED_PAUSE",
    }
    assert as_dict["execution"]["caching"]["ttl_seconds"] == 3600
    assert as_dict["steps"][1]["checkpoint"] == {"when": "WHEN_AFTER"}
    assert "description" not in as_dict  # defaults are omitted
    assert parse_definition(as_dict) == definition
    assert parse_definition(yaml.safe_dump(as_dict)) == definition
    assert parse_definition(json.dumps(as_dict)) == definition


def test_definition_to_dict_keeps_input_integers() -> None:
    definition = parse_definition("steps: [{id: a, input: {n: 3, x: 1.5, l: [1, 2]}}]")
    assert definition_to_dict(definition)["steps"][0]["input"] == {"n": 3, "x": 1.5, "l": [1, 2]}


def test_client_module_does_not_import_the_server() -> None:
    source = Path(definitions_module.__file__).read_text(encoding="utf-8")
    imported: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
    assert not [name for name in imported if name.startswith("podium.server")]
