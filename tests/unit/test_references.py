"""`${...}` references: discovery, malformed references, resolution, number normalization."""

from __future__ import annotations

from typing import Any

import pytest

from podium.server.engine.references import (
    MissingReferenceError,
    Reference,
    ReferenceSyntaxError,
    find_references,
    lookup,
    normalize_numbers,
    parse_path,
    resolve,
    scan_references,
)

SEARCH_OUTPUT = {
    "results": [
        {"url": "https://a.example", "score": 0.9},
        {"url": "https://b.example", "score": 0.5},
    ],
    "count": 2,
    "done": True,
    "next": None,
    "meta": {"engine": "x"},
}


def _resolve(value: Any, **outputs: Any) -> Any:
    return resolve(
        value,
        run_input={"topic": "whales", "n": 3, "tags": ["a", "b"], "flag": False},
        step_outputs={"search": SEARCH_OUTPUT, **outputs},
    )


# --------------------------------------------------------------------------- discovery


def test_find_references_reports_source_step_path_location_and_raw() -> None:
    value = {
        "query": "${run.input.topic}",
        "items": ["plain", "see ${steps.search.output.results[0].url} and ${run.input}"],
        "nested": {"deep": [{"x": "${steps.search.output}"}]},
    }

    refs = find_references(value)

    assert refs == [
        Reference("run", None, ("topic",), "query", "${run.input.topic}"),
        Reference(
            "steps",
            "search",
            ("results", 0, "url"),
            "items[1]",
            "${steps.search.output.results[0].url}",
        ),
        Reference("run", None, (), "items[1]", "${run.input}"),
        Reference("steps", "search", (), "nested.deep[0].x", "${steps.search.output}"),
    ]
    assert refs[1].expression == "steps.search.output.results[0].url"


def test_location_quotes_keys_that_are_not_identifiers() -> None:
    refs = find_references({"content-type": {"a b": "${run.input.x}"}})
    assert refs[0].location == "`content-type`.`a b`"


def test_whitespace_inside_braces_is_ignored() -> None:
    (ref,) = find_references("${ run.input.topic }")
    assert ref.path == ("topic",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${foo.bar}", "unknown root 'foo'"),
        ("${steps.x}", "expected ${steps.x.output...}"),
        ("${steps.x.result}", "expected ${steps.x.output...}"),
        ("${steps}", "missing step id"),
        ("${run}", "expected ${run.input...}"),
        ("${run.output.x}", "expected ${run.input...}"),
        ("${}", "empty reference"),
        ("${run.input.a..b}", "invalid path syntax"),
        ("${run.input.a[x]}", "invalid path syntax"),
        ("text ${run.input.a", "unterminated reference"),
    ],
)
def test_malformed_references_are_reported_per_location(text: str, expected: str) -> None:
    scan = scan_references({"ok": "${run.input.a}", "bad": [text]})

    assert [r.location for r in scan.references] == ["ok"]
    assert len(scan.errors) == 1
    assert scan.errors[0].location == "bad[0]"
    assert expected in scan.errors[0].message


def test_find_references_raises_with_every_malformed_reference() -> None:
    with pytest.raises(ReferenceSyntaxError) as info:
        find_references({"a": "${foo}", "b": "${steps.x}"})
    assert [e.location for e in info.value.errors] == ["a", "b"]


def test_escaped_dollar_brace_is_not_a_reference() -> None:
    assert scan_references("$${run.input.x} costs $5").references == []
    assert _resolve("$${run.input.topic} is ${run.input.topic}") == "${run.input.topic} is whales"


def test_parse_path() -> None:
    assert parse_path("") == ()
    assert parse_path("options.lang") == ("options", "lang")
    assert parse_path("results[0].url") == ("results", 0, "url")
    with pytest.raises(ValueError, match="invalid path syntax"):
        parse_path("a..b")


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${steps.search.output.meta}", {"engine": "x"}),
        ("${steps.search.output.results}", SEARCH_OUTPUT["results"]),
        ("${steps.search.output.count}", 2),
        ("${steps.search.output.done}", True),
        ("${steps.search.output.next}", None),
        ("${steps.search.output.results[1].score}", 0.5),
        ("${run.input.tags}", ["a", "b"]),
        ("${run.input.flag}", False),
        ("${steps.search.output.results.0.url}", "https://a.example"),
    ],
)
def test_exact_reference_keeps_the_json_type(template: str, expected: Any) -> None:
    result = _resolve({"v": template})["v"]
    assert result == expected
    assert type(result) is type(expected)


def test_whole_input_and_nested_containers_are_rebuilt() -> None:
    value: dict[str, Any] = {"a": ["${run.input}", {"b": "${run.input.n}"}], "c": 1.5, "d": None}
    result = _resolve(value)
    assert result == {
        "a": [{"topic": "whales", "n": 3, "tags": ["a", "b"], "flag": False}, {"b": 3}],
        "c": 1.5,
        "d": None,
    }
    assert value["a"][1] == {"b": "${run.input.n}"}  # the input is not modified


def test_embedded_references_are_interpolated_as_text() -> None:
    result = _resolve(
        {
            "s": "About ${run.input.topic}: ${steps.search.output.count} hits",
            "j": "tags=${run.input.tags} meta=${steps.search.output.meta}",
            "n": "next=${steps.search.output.next}, done=${steps.search.output.done}",
        }
    )
    assert result == {
        "s": "About whales: 2 hits",
        "j": 'tags=["a","b"] meta={"engine":"x"}',
        "n": "next=null, done=true",
    }


def test_interpolated_integral_floats_print_as_integers() -> None:
    result = resolve("n=${run.input.n}", run_input={"n": 3.0}, step_outputs={})
    assert result == "n=3"


def test_long_strings_are_resolved() -> None:
    text = "x" * 5000 + " ${run.input.topic} " + "y" * 5000
    assert _resolve(text) == "x" * 5000 + " whales " + "y" * 5000
    assert find_references({"doc": text})[0].location == "doc"


def test_missing_key_error_names_the_path() -> None:
    with pytest.raises(MissingReferenceError) as info:
        resolve({"q": "${run.input.topic}"}, run_input={"subject": "x"}, step_outputs={})
    error = info.value
    assert error.reason.startswith("run.input.topic: key 'topic' not found")
    assert error.location == "q"
    assert error.reference.raw == "${run.input.topic}"
    assert "(referenced at q)" in str(error)


def test_index_out_of_range_error_names_the_path_and_length() -> None:
    with pytest.raises(MissingReferenceError) as info:
        _resolve({"u": ["${steps.search.output.results[3].url}"]})
    assert info.value.reason == (
        "steps.search.output.results[3]: index 3 out of range (list has 2 items)"
    )
    assert info.value.location == "u[0]"


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("${steps.search.output.count.x}", "steps.search.output.count.x: cannot read key 'x'"),
        ("${steps.search.output.meta[0]}", "steps.search.output.meta[0]: cannot index an object"),
        ("${steps.search.output.results.x}", "cannot read key 'x' of an array"),
        ("${steps.other.output}", "steps.other.output: step 'other' has no output"),
    ],
)
def test_type_mismatches_and_unknown_steps_raise(template: str, reason: str) -> None:
    with pytest.raises(MissingReferenceError) as info:
        _resolve(template)
    assert reason in info.value.reason


def test_skipped_step_output_resolves_to_null() -> None:
    assert _resolve("${steps.skipped.output}", skipped=None) is None
    assert _resolve("${steps.skipped.output.summary}", skipped=None) is None
    assert _resolve("was ${steps.skipped.output.summary}", skipped=None) == "was null"


def test_resolve_rejects_malformed_references() -> None:
    with pytest.raises(ReferenceSyntaxError):
        _resolve({"x": "a ${foo.bar}"})


def test_lookup() -> None:
    assert lookup({"a": [1, {"b": 2}]}, ("a", 1, "b")) == 2
    with pytest.raises(LookupError, match=r"\.a\[5\]: index 5 out of range"):
        lookup({"a": []}, ("a", 5))


def test_normalize_numbers() -> None:
    value = {"a": 3.0, "b": [1.5, -0.0, 2.0**53, 2.0**53 * 2], "c": True, "d": "3.0"}
    assert normalize_numbers(value) == {
        "a": 3,
        "b": [1.5, 0, 2**53, 2.0**54],
        "c": True,
        "d": "3.0",
    }
    normalized = normalize_numbers(value)
    assert type(normalized["a"]) is int
    assert type(normalized["b"][3]) is float
    assert normalized["c"] is True
    assert normalize_numbers(float("nan")) != normalize_numbers(float("nan"))


# --------------------------------------------------------------------------- items


def test_item_references_resolve_only_with_an_item() -> None:
    template = {"q": "${item.query}", "i": "${item_index}", "all": "${item}", "t": "#${item_index}"}
    item = ({"query": "tea"}, 4)
    assert resolve(template, run_input={}, step_outputs={}, item=item) == {
        "q": "tea",
        "i": 4,
        "all": {"query": "tea"},
        "t": "#4",
    }
    with pytest.raises(MissingReferenceError, match="only defined in the input of a for_each"):
        resolve(template, run_input={}, step_outputs={})
    with pytest.raises(MissingReferenceError, match=r"item\.nope: key 'nope' not found"):
        resolve("${item.nope}", run_input={}, step_outputs={}, item=({}, 0))


def test_item_references_are_found_and_item_index_has_no_path() -> None:
    refs = find_references({"a": "${item.x[0]}", "b": "${ item_index }"})
    assert [(r.source, r.expression) for r in refs] == [
        ("item", "item.x[0]"),
        ("item_index", "item_index"),
    ]
    scan = scan_references("${item_index.x}")
    assert scan.errors and "has no path" in scan.errors[0].message
