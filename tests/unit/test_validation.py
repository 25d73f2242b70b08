"""Definition validation: one field violation per problem, with exact field paths."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.validation import (
    ValidationLimits,
    normalize_definition,
    referenced_targets,
    validate_definition,
    validate_plan,
)

Definition = definition_pb2.Definition


def step(step_id: str, *depends_on: str, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": step_id, "agent": "worker"}
    if depends_on:
        data["depends_on"] = list(depends_on)
    data.update(fields)
    return data


def make(*steps: dict[str, Any], **fields: Any) -> Definition:
    data: dict[str, Any] = {"name": "flow", "steps": list(steps)}
    data.update(fields)
    return json_format.ParseDict(data, Definition())


def problems(definition: Definition, **kwargs: Any) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in validate_definition(definition, **kwargs)]


def only(definition: Definition, **kwargs: Any) -> tuple[str, str]:
    found = problems(definition, **kwargs)
    assert len(found) == 1, found
    return found[0]


# The definition of test_definition_loader.py's FULL_EXAMPLE as a dict, without its
# budget and concurrency key (refused until built).
FULL_EXAMPLE: dict[str, Any] = {
    "name": "research-brief",
    "execution": {
        "concurrency": {"max_parallel": 4},
        "caching": {"enabled": True, "ttl_seconds": 3600},
    },
    "error_handling": {
        "on_step_failure": {
            "max_attempts": 3,
            "backoff": {"initial_seconds": 1, "multiplier": 2, "max_seconds": 30},
            "notify_human": False,
            "allow_skip": True,
        },
        "rollback": {"hint": "delete the draft document"},
    },
    "steps": [
        {"id": "search", "agent": "web-search", "input": {"query": "${run.input.topic}"}},
        {
            "id": "summarize",
            "agent": "summarizer",
            "depends_on": ["search"],
            "input": {"text": "${steps.search.output.results}"},
            "checkpoint": {"when": "WHEN_AFTER"},
        },
        {
            "id": "translate",
            "orchestration": {"name": "translate-flow"},
            "depends_on": ["summarize"],
            "input": {"text": "${steps.summarize.output.summary}"},
        },
    ],
}


# --------------------------------------------------------------------------- valid


def test_full_example_is_valid() -> None:
    definition = json_format.ParseDict(FULL_EXAMPLE, Definition())
    assert validate_definition(definition) == []


def test_minimal_definition_is_valid() -> None:
    assert problems(make(step("only"))) == []


def test_chain_of_ten_thousand_steps_is_valid() -> None:
    steps = [step("s0", input={"q": "${run.input.q}"})]
    steps += [
        step(f"s{i}", f"s{i - 1}", input={"first": "${steps.s0.output}"}) for i in range(1, 10_000)
    ]
    assert problems(make(*steps)) == []


def test_wide_fan_in_of_ten_thousand_steps_is_valid() -> None:
    leaves = [step(f"leaf{i}") for i in range(9_999)]
    sink = step("sink", *(f"leaf{i}" for i in range(9_999)))
    assert problems(make(*leaves, sink)) == []


def test_transitive_dependency_may_be_referenced() -> None:
    definition = make(
        step("a"),
        step("b", "a"),
        step("c", "b", input={"x": "${steps.a.output.value}"}),
    )
    assert problems(definition) == []


# --------------------------------------------------------------------------- name, labels


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", "name is required"),
        ("Research Brief", "lowercase letters, digits, '_', '.' and '-'"),
        ("-leading-dash", "starting with a letter or digit"),
        ("x" * 129, "1 to 128 characters"),
    ],
)
def test_invalid_names(name: str, expected: str) -> None:
    field, description = only(make(step("a"), name=name))
    assert field == "name"
    assert expected in description


def test_name_of_128_characters_is_valid() -> None:
    assert problems(make(step("a"), name="a" * 128)) == []


def test_plan_name_is_optional_but_checked_when_set() -> None:
    plan = make(step("a"), name="")
    assert validate_plan(plan) == []
    plan.name = "Bad Name"
    assert [v.field for v in validate_plan(plan)] == ["name"]


def test_description_length() -> None:
    assert problems(make(step("a"), description="d" * 2000)) == []
    field, description = only(make(step("a"), description="d" * 2001))
    assert field == "description"
    assert "at most 2000 characters" in description


def test_labels() -> None:
    definition = make(
        step("a"),
        labels={"team": "x", "Env": "prod", "my-key": "v" * 257, "k" * 64: "v", "a/b.c_d": "ok"},
    )
    found = problems(definition)
    fields = [f for f, _ in found]
    assert fields == ["labels.Env", f"labels.{'k' * 64}", "labels.`my-key`"]
    assert "label keys must be 1 to 63 characters" in found[0][1]
    assert "label values must be at most 256 characters" in found[2][1]


def test_too_many_labels() -> None:
    definition = make(step("a"), labels={f"k{i}": "v" for i in range(65)})
    assert only(definition)[0] == "labels"


# --------------------------------------------------------------------------- steps


def test_no_steps() -> None:
    assert only(make()) == ("steps", "at least one step is required")


def test_too_many_steps() -> None:
    definition = make(step("a"), step("b"), step("c"))
    field, description = only(definition, limits=ValidationLimits(max_steps=2))
    assert field == "steps"
    assert "at most 2 steps" in description


@pytest.mark.parametrize(
    ("step_id", "expected"),
    [
        ("", "step id is required"),
        ("has space", "letters, digits, '_' and '-'"),
        ("x" * 65, "1 to 64 characters"),
    ],
)
def test_invalid_step_ids(step_id: str, expected: str) -> None:
    field, description = only(make(step("ok"), step(step_id)))
    assert field == "steps[1].id"
    assert expected in description


def test_duplicate_step_id_is_reported_on_the_later_step() -> None:
    field, description = only(make(step("a"), step("b"), step("a")))
    assert field == "steps[2].id"
    assert "duplicate step id 'a'" in description
    assert "steps[0]" in description


def test_missing_target() -> None:
    field, description = only(make({"id": "lonely"}))
    assert field == "steps[0]"
    assert "'lonely' needs a target" in description


@pytest.mark.parametrize(
    ("target", "field", "expected"),
    [
        ({"agent": ""}, "steps[0].agent", "agent name is required"),
        ({"agent": "Web Search"}, "steps[0].agent", "lowercase letters"),
        ({"skill": "Search!"}, "steps[0].skill", "lowercase letters"),
        ({"orchestration": {}}, "steps[0].orchestration.name", "orchestration.name is required"),
        (
            {"orchestration": {"name": "sub", "version": -1}},
            "steps[0].orchestration.version",
            "must not be negative",
        ),
        ({"plan": {}}, "steps[0].plan.agent", "plan.agent is required"),
        ({"plan": {"agent": "Planner!"}}, "steps[0].plan.agent", "lowercase letters"),
        (
            {"plan": {"agent": "planner"}, "loop": {"max_iterations": 2}},
            "steps[0].loop",
            "loops of sub-orchestration and plan steps are not supported",
        ),
        (
            {"plan": {"agent": "planner"}, "for_each": "${run.input.items}"},
            "steps[0].plan",
            "not a sub-orchestration or a plan",
        ),
    ],
)
def test_invalid_targets(target: dict[str, Any], field: str, expected: str) -> None:
    definition = make({"id": "a", **target})
    found_field, description = only(definition)
    assert found_field == field
    assert expected in description


# --------------------------------------------------------------------------- depends_on


def test_unknown_dependency() -> None:
    field, description = only(make(step("search"), step("sum", "serach")))
    assert field == "steps[1].depends_on[0]"
    assert "'sum' depends on unknown step 'serach'" in description
    assert "did you mean 'search'?" in description


def test_self_dependency() -> None:
    field, description = only(make(step("a", "a")))
    assert field == "steps[0].depends_on[0]"
    assert "'a' depends on itself" in description


def test_duplicate_dependency() -> None:
    field, description = only(make(step("a"), step("b", "a", "a")))
    assert field == "steps[1].depends_on[1]"
    assert "duplicate dependency 'a'" in description
    assert "depends_on[0]" in description


# --------------------------------------------------------------------------- cycles


def test_cycle_is_reported_once_in_cycle_order() -> None:
    found = problems(make(step("a", "b"), step("b", "c"), step("c", "a")))
    assert len(found) == 1
    field, description = found[0]
    assert field == "steps[0].depends_on[0]"
    assert "a -> b -> c -> a" in description


def test_cycle_starts_at_its_first_step_and_names_the_edge_to_remove() -> None:
    definition = make(step("root"), step("x", "root", "z"), step("y", "x"), step("z", "y"))
    field, description = only(definition)
    assert field == "steps[1].depends_on[1]"
    assert "x -> z -> y -> x" in description


def test_two_disjoint_cycles_are_two_violations() -> None:
    definition = make(
        step("a", "b"),
        step("b", "a"),
        step("ok"),
        step("c", "ok", "d"),
        step("d", "e"),
        step("e", "c"),
    )
    found = problems(definition)
    assert found == [
        ("steps[0].depends_on[0]", found[0][1]),
        ("steps[3].depends_on[1]", found[1][1]),
    ]
    assert "a -> b -> a" in found[0][1]
    assert "c -> d -> e -> c" in found[1][1]


def test_entangled_cycles_are_one_violation_naming_the_other_steps() -> None:
    definition = make(step("a", "b"), step("b", "a", "c"), step("c", "b"))
    field, description = only(definition)
    assert field == "steps[0].depends_on[0]"
    assert "a -> b -> a" in description
    assert "steps c are on further cycles" in description


def test_long_cycle_is_found_and_abbreviated() -> None:
    n = 10_000
    steps = [step("s0", f"s{n - 1}")] + [step(f"s{i}", f"s{i - 1}") for i in range(1, n)]
    field, description = only(make(*steps))
    assert field == "steps[0].depends_on[0]"
    assert description.startswith(f"dependency cycle: s0 -> s{n - 1} -> s{n - 2}")
    assert "more steps" in description
    assert description.count("->") < 30


def test_references_inside_a_cycle_do_not_crash() -> None:
    definition = make(
        step("a", "b", input={"x": "${steps.b.output}"}),
        step("b", "a", input={"x": "${steps.a.output}"}),
        step("c", "a", input={"x": "${steps.b.output}"}),
    )
    found = problems(definition)
    assert len(found) == 1
    assert "a -> b -> a" in found[0][1]


# --------------------------------------------------------------------------- references


def test_reference_to_a_step_that_is_not_upstream() -> None:
    definition = make(step("a"), step("b", input={"text": "${steps.a.output.summary}"}))
    field, description = only(definition)
    assert field == "steps[1].input.text"
    assert "steps.a is not upstream of step b: add it to depends_on" in description


def test_reference_to_a_downstream_step_is_not_upstream() -> None:
    definition = make(step("a", input={"x": "${steps.b.output}"}), step("b", "a"))
    field, description = only(definition)
    assert field == "steps[0].input.x"
    assert "steps.b is not upstream of step a" in description


def test_reference_location_inside_lists_and_nested_objects() -> None:
    definition = make(
        step("a"),
        step("b", input={"items": ["ok", {"text": "see ${steps.a.output}"}]}),
    )
    assert only(definition)[0] == "steps[1].input.items[1].text"


def test_reference_to_an_unknown_step() -> None:
    definition = make(step("search"), step("b", "search", input={"x": "${steps.serch.output}"}))
    field, description = only(definition)
    assert field == "steps[1].input.x"
    assert "unknown step 'serch'" in description
    assert "did you mean 'search'?" in description


def test_reference_to_own_output() -> None:
    field, description = only(make(step("a", input={"x": "${steps.a.output}"})))
    assert field == "steps[0].input.x"
    assert "cannot use its own output" in description


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${foo.bar}", "unknown root 'foo'"),
        ("${steps.x}", "expected ${steps.x.output...}"),
        ("${run.input", "unterminated reference"),
    ],
)
def test_malformed_reference(text: str, expected: str) -> None:
    field, description = only(make(step("a", input={"q": text})))
    assert field == "steps[0].input.q"
    assert expected in description


def test_each_malformed_reference_is_one_violation() -> None:
    definition = make(step("a", input={"q": "${foo} and ${bar}", "r": ["${steps.x}"]}))
    assert [f for f, _ in problems(definition)] == [
        "steps[0].input.q",
        "steps[0].input.q",
        "steps[0].input.r[0]",
    ]


def test_non_finite_number_in_input() -> None:
    definition = make(step("a"))
    definition.steps[0].input.get_or_create_struct("limits")["x"] = math.inf
    field, description = only(definition)
    assert field == "steps[0].input.limits.x"
    assert "finite" in description


def test_input_size_limit() -> None:
    definition = make(step("a", input={"text": "x" * 200}))
    field, description = only(definition, limits=ValidationLimits(max_step_input_bytes=100))
    assert field == "steps[0].input"
    assert "at most 100" in description
    assert problems(definition, limits=ValidationLimits(max_step_input_bytes=1000)) == []


# --------------------------------------------------------------------------- budgets, keys


POLICIES = {
    "budget": {"max_tokens": 200000, "max_cost_usd": 5.0, "on_exceed": "ON_EXCEED_PAUSE"},
    "concurrency": {"max_parallel": 4, "key": "${run.input.customer}", "max_runs_per_key": 2},
}


def test_a_budget_and_a_concurrency_key_are_valid_together() -> None:
    assert validate_definition(make(step("a"), execution=POLICIES)) == []
    assert validate_plan(make(step("a"), execution=POLICIES), field_prefix="plan") == []


@pytest.mark.parametrize(
    ("execution", "field"),
    [
        ({"budget": {"max_tokens": -5}}, "execution.budget.max_tokens"),
        ({"budget": {"max_tokens": 10**16}}, "execution.budget.max_tokens"),
        ({"budget": {"max_cost_usd": -0.01}}, "execution.budget.max_cost_usd"),
        ({"budget": {"max_cost_usd": "NaN"}}, "execution.budget.max_cost_usd"),
        ({"budget": {"max_cost_usd": "Infinity"}}, "execution.budget.max_cost_usd"),
        ({"budget": {"on_exceed": 7}}, "execution.budget.on_exceed"),
    ],
)
def test_a_bad_budget_value_is_one_violation(execution: dict[str, Any], field: str) -> None:
    found, _ = only(make(step("a"), execution=execution))
    assert found == field


@pytest.mark.parametrize(
    "budget",
    [
        {"max_tokens": 5},
        {"max_cost_usd": 0.01},
        {"on_exceed": "ON_EXCEED_FAIL"},
        {"max_tokens": 10**15, "max_cost_usd": 1e9, "on_exceed": "ON_EXCEED_PAUSE"},
    ],
)
def test_a_budget_is_valid(budget: dict[str, Any]) -> None:
    assert problems(make(step("a"), execution={"budget": budget})) == []


def test_unset_budget_and_concurrency_key_are_valid() -> None:
    execution = {
        "budget": {"max_tokens": 0, "max_cost_usd": 0, "on_exceed": "ON_EXCEED_UNSPECIFIED"},
        "concurrency": {"max_parallel": 2, "key": "", "max_runs_per_key": 0},
    }
    assert problems(make(step("a"), execution=execution)) == []


# --------------------------------------------------------------------------- numbers


NUMBER_CASES: list[tuple[dict[str, Any], str, str]] = [
    (
        {"error_handling": {"on_step_failure": {"max_attempts": 0}}},
        "error_handling.on_step_failure.max_attempts",
        "at least 1",
    ),
    (
        {"error_handling": {"on_step_failure": {"max_attempts": 101}}},
        "error_handling.on_step_failure.max_attempts",
        "at most 100",
    ),
    (
        {"error_handling": {"on_step_failure": {"backoff": {"initial_seconds": -1}}}},
        "error_handling.on_step_failure.backoff.initial_seconds",
        "must not be negative",
    ),
    (
        {"error_handling": {"on_step_failure": {"backoff": {"multiplier": 0.5}}}},
        "error_handling.on_step_failure.backoff.multiplier",
        "at least 1",
    ),
    (
        {"error_handling": {"on_step_failure": {"backoff": {"max_seconds": -2}}}},
        "error_handling.on_step_failure.backoff.max_seconds",
        "must not be negative",
    ),
    (
        {
            "error_handling": {
                "on_step_failure": {"backoff": {"initial_seconds": 10, "max_seconds": 5}}
            }
        },
        "error_handling.on_step_failure.backoff.max_seconds",
        "at least initial_seconds (10)",
    ),
    (
        {"error_handling": {"on_step_failure": {"backoff": {"initial_seconds": "NaN"}}}},
        "error_handling.on_step_failure.backoff.initial_seconds",
        "finite",
    ),
    (
        {"execution": {"concurrency": {"max_parallel": -1}}},
        "execution.concurrency.max_parallel",
        "must be positive",
    ),
    (
        {"execution": {"caching": {"ttl_seconds": -1}}},
        "execution.caching.ttl_seconds",
        "must not be negative",
    ),
    (
        {"execution": {"default_timeout_seconds": 86_401}},
        "execution.default_timeout_seconds",
        "at most 86400",
    ),
]

STEP_NUMBER_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"on_failure": {"max_attempts": 0}}, "steps[0].on_failure.max_attempts", "at least 1"),
    ({"on_failure": {"max_attempts": -3}}, "steps[0].on_failure.max_attempts", "at least 1"),
    (
        {"on_failure": {"backoff": {"multiplier": 0.9}}},
        "steps[0].on_failure.backoff.multiplier",
        "at least 1",
    ),
    ({"timeout_seconds": -1}, "steps[0].timeout_seconds", "must not be negative"),
    ({"timeout_seconds": 86_401}, "steps[0].timeout_seconds", "at most 86400"),
    ({"timeout_seconds": "NaN"}, "steps[0].timeout_seconds", "finite"),
    ({"caching": {"ttl_seconds": -1}}, "steps[0].caching.ttl_seconds", "must not be negative"),
    (
        {"checkpoint": {"when": "WHEN_BEFORE", "expires_after_seconds": -1}},
        "steps[0].checkpoint.expires_after_seconds",
        "must not be negative",
    ),
    ({"checkpoint": {"when": 5}}, "steps[0].checkpoint.when", "unknown value 5"),
]


@pytest.mark.parametrize(("fields", "field", "expected"), NUMBER_CASES)
def test_bad_definition_numbers(fields: dict[str, Any], field: str, expected: str) -> None:
    found_field, description = only(make(step("a"), **fields))
    assert found_field == field
    assert expected in description


@pytest.mark.parametrize(("fields", "field", "expected"), STEP_NUMBER_CASES)
def test_bad_step_numbers(fields: dict[str, Any], field: str, expected: str) -> None:
    found_field, description = only(make(step("a", **fields)))
    assert found_field == field
    assert expected in description


def test_zero_means_default_for_numbers_without_presence() -> None:
    definition = make(
        step("a", on_failure={"max_attempts": 1, "backoff": {"multiplier": 0}}, timeout_seconds=0),
        execution={"concurrency": {"max_parallel": 0}, "default_timeout_seconds": 86_400},
        error_handling={"on_step_failure": {"max_attempts": 100}},
    )
    assert problems(definition) == []


def test_limits_are_configurable() -> None:
    definition = make(step("a", on_failure={"max_attempts": 5}, timeout_seconds=100))
    limits = ValidationLimits(max_attempts=3, max_timeout_seconds=60)
    assert [f for f, _ in problems(definition, limits=limits)] == [
        "steps[0].timeout_seconds",
        "steps[0].on_failure.max_attempts",
    ]


def test_checkpoint_options_without_when() -> None:
    field, description = only(make(step("a", checkpoint={"prompt": "Looks good?"})))
    assert field == "steps[0].checkpoint.when"
    assert "when is required" in description


def test_invalid_cache_key_paths() -> None:
    definition = make(step("a", caching={"key_paths": ["query", "options.lang", "a..b", ""]}))
    assert [f for f, _ in problems(definition)] == [
        "steps[0].caching.key_paths[2]",
        "steps[0].caching.key_paths[3]",
    ]


# --------------------------------------------------------------------------- targets


def test_unknown_sub_orchestration() -> None:
    calls: list[tuple[str, int]] = []

    def known(name: str, version: int) -> bool:
        calls.append((name, version))
        return name == "translate-flow"

    definition = make(
        {"id": "a", "orchestration": {"name": "translate-flow"}},
        {"id": "b", "orchestration": {"name": "missing-flow", "version": 3}},
    )
    field, description = only(definition, known_definitions=known)
    assert field == "steps[1].orchestration"
    assert "unknown version 3 of definition 'missing-flow'" in description
    assert calls == [("translate-flow", 0), ("missing-flow", 3)]


def test_sub_orchestration_of_itself_is_recursion() -> None:
    definition = make({"id": "again", "orchestration": {"name": "flow"}})
    field, description = only(definition, known_definitions=lambda name, version: False)
    assert field == "steps[0].orchestration.name"
    assert "recursion" in description
    assert "'again'" in description


def test_unknown_agents_and_skills() -> None:
    definition = make(
        {"id": "a", "agent": "known"},
        {"id": "b", "agent": "ghost"},
        {"id": "c", "skill": "nobody-has-it"},
    )
    found = problems(
        definition,
        known_agents=lambda name: name == "known",
        known_skills=lambda skill: False,
    )
    assert found == [
        ("steps[1].agent", "unknown agent 'ghost'"),
        ("steps[2].skill", "no registered agent offers skill 'nobody-has-it'"),
    ]


def test_referenced_targets() -> None:
    definition = json_format.ParseDict(FULL_EXAMPLE, Definition())
    targets = referenced_targets(definition)
    assert targets.agents == {"web-search", "summarizer"}
    assert targets.skills == frozenset()
    assert targets.definitions == {("translate-flow", 0)}


def test_a_plan_step_names_its_planner_agent() -> None:
    definition = make({"id": "p", "plan": {"agent": "planner"}})
    assert problems(definition) == []
    assert referenced_targets(definition).agents == {"planner"}
    found = only(definition, known_agents=lambda name: name != "planner")
    assert found == ("steps[0].plan.agent", "unknown agent 'planner'")


# --------------------------------------------------------------------------- reporting


def test_every_problem_is_reported_not_just_the_first() -> None:
    definition = make(
        step("a", "ghost"),
        step("a"),
        step("b", on_failure={"max_attempts": 0}, input={"x": "${steps.c.output}"}),
        step("c", "c"),
        name="Bad Name",
    )
    assert [f for f, _ in problems(definition)] == [
        "name",
        "steps[1].id",
        "steps[0].depends_on[0]",
        "steps[2].on_failure.max_attempts",
        "steps[3].depends_on[0]",
        "steps[2].input.x",
    ]


def test_violations_carry_stable_reasons() -> None:
    violations = validate_definition(make(step("a", "b"), step("b", "a"), step("a")))
    assert [v.reason for v in violations] == ["DUPLICATE_STEP_ID", "DEPENDENCY_CYCLE"]


def test_field_prefix() -> None:
    violations = validate_plan(make(step("a", "x")), field_prefix="plan")
    assert [v.field for v in violations] == ["plan.steps[0].depends_on[0]"]


def test_violations_are_capped() -> None:
    definition = make(*(step(f"s{i}", "ghost") for i in range(50)))
    violations = validate_definition(definition, limits=ValidationLimits(max_violations=10))
    assert len(violations) == 10
    assert violations[-1].field == "steps[9].depends_on[0]"
    assert "(and 40 more problems not shown)" in violations[-1].description


# --------------------------------------------------------------------------- normalize


def test_normalize_definition_clears_output_only_fields() -> None:
    definition = json_format.ParseDict(FULL_EXAMPLE, Definition())
    expected = copy.deepcopy(definition)
    definition.version = 7
    definition.organization_id = "org"
    definition.create_time.seconds = 1_700_000_000
    definition.archived = True
    definition.content_hash = "abc"

    normalized = normalize_definition(definition)

    assert normalized == expected
    assert definition.version == 7  # the original is untouched


@pytest.mark.parametrize(
    ("execution", "field", "reason"),
    [
        (
            {"concurrency": {"key": "${steps.a.output.customer}"}},
            "execution.concurrency.key",
            "INVALID_REFERENCE",
        ),
        (
            {"concurrency": {"key": "${run.input"}},
            "execution.concurrency.key",
            "MALFORMED_REFERENCE",
        ),
        ({"concurrency": {"key": "k" * 257}}, "execution.concurrency.key", "TOO_LONG"),
        (
            {"concurrency": {"key": "x", "max_runs_per_key": -1}},
            "execution.concurrency.max_runs_per_key",
            "OUT_OF_RANGE",
        ),
        (
            {"concurrency": {"max_runs_per_key": 2}},
            "execution.concurrency.max_runs_per_key",
            "KEY_REQUIRED",
        ),
        (
            {"concurrency": {"key": "x", "max_steps_per_key": 10001}},
            "execution.concurrency.max_steps_per_key",
            "OUT_OF_RANGE",
        ),
        ({"priority": 10}, "execution.priority", "OUT_OF_RANGE"),
        ({"priority": -1}, "execution.priority", "OUT_OF_RANGE"),
    ],
)
def test_a_bad_concurrency_key_limit_or_priority_is_one_violation(
    execution: dict[str, Any], field: str, reason: str
) -> None:
    violations = validate_definition(make(step("a"), execution=execution))
    assert [(v.field, v.reason) for v in violations] == [(field, reason)]


def test_a_key_with_limits_and_a_priority_is_valid() -> None:
    execution = {
        "concurrency": {
            "key": "tenant-${run.input.org.id}",
            "max_runs_per_key": 2,
            "max_steps_per_key": 3,
        },
        "priority": 9,
    }
    assert validate_definition(make(step("a"), execution=execution)) == []
