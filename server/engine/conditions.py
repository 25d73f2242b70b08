"""Step conditions (``when:``): CEL expressions checked at validation, evaluated at run time.

A condition is a CEL expression (the ``common-expression-language`` bindings of the Rust
``cel`` crate) over these variables:

- ``run.input`` (the run's input), ``run.id``, ``run.labels``, ``run.metadata`` (given
  at StartRun; copied into the step's spec at StartRun when the condition reads it),
  ``run.organization_id``, ``run.definition.name`` and ``run.definition.version`` (0
  and "" for an inline plan);
- ``steps.ID.output`` (or ``steps["ID"].output`` for an id that is not a CEL identifier,
  e.g. one with ``-``): the output of an upstream step, null when it was skipped.

Validation (:func:`check_condition`) compiles the expression and reports a syntax error
with its line and column; a lexical pass over the source then finds every variable it
uses, so a reference to an unknown variable, to ``run`` fields that do not exist, or to a
step that is not upstream is reported at its position too. CEL is dynamically typed here
(inputs and outputs are JSON of no declared type), so type errors show at run time.

The executor calls :func:`evaluate_condition` when the step is about to run (the claim
gives it the outputs of the steps its input and condition reference): ``True`` runs it,
``False`` skips it (``CONDITION_FALSE``), anything else raises
:class:`ConditionEvaluationError` (``CONDITION_ERROR``, not retryable).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

from podium.server.engine.outcomes import OutcomePolicy
from podium.server.storage.runs import ClaimedStep, StepOutcome
from podium.server.storage.steps import Outcome, StepError

__all__ = [
    "CONDITION_ERROR",
    "CONDITION_FALSE",
    "LOOP_VARIABLES",
    "MAX_CONDITION_LENGTH",
    "ConditionEvaluationError",
    "ConditionProblem",
    "StepMention",
    "check_condition",
    "check_event_filter",
    "claimed_run_variables",
    "condition_outcome",
    "evaluate_condition",
    "evaluate_event_filter",
    "position",
    "run_variables",
    "skipped_by_condition",
    "step_mentions",
    "uses_run_metadata",
]

CONDITION_FALSE = "CONDITION_FALSE"
CONDITION_ERROR = "CONDITION_ERROR"
MAX_CONDITION_LENGTH = 4096

RUN_FIELDS = frozenset({"input", "id", "labels", "metadata", "organization_id", "definition"})
# Identifiers that are not variables: literals, reserved words and type names.
_NOT_VARIABLES = frozenset(
    {"true", "false", "null", "in", "int", "uint", "double", "bool", "string", "bytes"}
    | {"list", "map", "type", "null_type", "dyn"}
)
# The variables a loop's `until` adds.
LOOP_VARIABLES = frozenset({"output", "iteration"})
# Macros whose first argument binds a variable: `list.exists(x, x > 1)`.
_BINDING_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<string>[rRbB]{0,2}(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
                            |'(?:\\.|[^\\'\n])*'|"(?:\\.|[^\\"\n])*"))
  | (?P<ident>[_A-Za-z][_A-Za-z0-9]*)
  | (?P<number>\d[\w.]*)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class ConditionProblem:
    """What is wrong with a condition, where (1-based line and column) and the
    violation's reason code."""

    message: str
    line: int
    column: int
    reason: str

    def describe(self) -> str:
        return f"{self.message} (at line {self.line}, column {self.column})"


@dataclass(frozen=True, slots=True)
class StepMention:
    """A ``steps.ID`` reference in a condition, at its source offset."""

    step_id: str
    offset: int


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    offset: int


class ConditionEvaluationError(Exception):
    """A condition that could not be evaluated to a bool (``CONDITION_ERROR``)."""


def position(source: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column of a source offset."""
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1


def _tokens(source: str) -> list[_Token]:
    return [
        _Token(str(m.lastgroup), m.group(), m.start())
        for m in _TOKEN.finditer(source)
        if m.lastgroup != "space"
    ]


def _string_value(text: str) -> str | None:
    """The value of a simple string literal (no escapes), or None."""
    body = text.lstrip("rR")
    if body[:1] in ("b", "B") or "\\" in body or len(body) < 2:
        return None
    return body[1:-1] if body[0] == body[-1] and body[0] in "'\"" else None


def _analyse(
    source: str, extra_variables: frozenset[str] = frozenset()
) -> tuple[list[StepMention], list[tuple[str, int, str]], set[str]]:
    """The step references of a source that compiles, its misuses of variables as
    (message, offset, reason), and the ``run`` fields it uses."""
    tokens = _tokens(source)
    bound: set[str] = set()
    for i, token in enumerate(tokens[:-3]):
        if (
            token.kind == "ident"
            and token.text in _BINDING_MACROS
            and i > 0
            and tokens[i - 1].text == "."
            and tokens[i + 1].text == "("
            and tokens[i + 2].kind == "ident"
            and tokens[i + 3].text == ","
        ):
            bound.add(tokens[i + 2].text)
    mentions: list[StepMention] = []
    problems: list[tuple[str, int, str]] = []
    run_fields: set[str] = set()

    def at(i: int) -> _Token | None:
        return tokens[i] if 0 <= i < len(tokens) else None

    for i, token in enumerate(tokens):
        if token.kind != "ident":
            continue
        before, after = at(i - 1), at(i + 1)
        if before is not None and before.text == ".":
            continue  # a field or a method
        if after is not None and after.text == "(":
            continue  # a function
        name = token.text
        if name in _NOT_VARIABLES or name in bound or name in extra_variables:
            continue
        if name == "run":
            field = at(i + 2)
            if after is None or after.text != "." or field is None or field.kind != "ident":
                usage = "use run.FIELD (run.input, run.labels, ...)"
                problems.append((usage, token.offset, "INVALID_CONDITION"))
            elif field.text in RUN_FIELDS:
                run_fields.add(field.text)
            else:
                fields = ", ".join(f"run.{f}" for f in sorted(RUN_FIELDS))
                problems.append(
                    (
                        f"unknown field run.{field.text}: use one of {fields}",
                        field.offset,
                        "UNKNOWN_CONDITION_VARIABLE",
                    )
                )
            continue
        if name == "steps":
            mention = _step_mention(tokens, i)
            if mention is None:
                problems.append(
                    (
                        'use steps.ID.output or steps["ID"].output',
                        token.offset,
                        "INVALID_CONDITION",
                    )
                )
            else:
                mentions.append(mention)
            continue
        problems.append(
            (
                f"unknown variable '{name}': use "
                + ", ".join(sorted({"run", "steps", *extra_variables})),
                token.offset,
                "UNKNOWN_CONDITION_VARIABLE",
            )
        )
    return mentions, problems, run_fields


def _step_mention(tokens: list[_Token], i: int) -> StepMention | None:
    """The step referenced by ``steps`` at ``tokens[i]`` followed by ``.output``."""
    rest = tokens[i + 1 : i + 7]
    texts = [t.text for t in rest]
    if len(rest) >= 4 and texts[0] == "." and rest[1].kind == "ident":
        mention, tail = StepMention(rest[1].text, rest[1].offset), texts[2:]
    elif len(rest) >= 5 and texts[0] == "[" and rest[1].kind == "string" and texts[2] == "]":
        value = _string_value(rest[1].text)
        if value is None:
            return None
        mention, tail = StepMention(value, rest[1].offset), texts[3:]
    else:
        return None
    if tail[:2] == [".", "output"]:
        return mention
    if len(tail) >= 3 and tail[0] == "[" and tail[2] == "]" and _string_value(tail[1]) == "output":
        return mention
    return None


def check_condition(
    source: str, extra_variables: frozenset[str] = frozenset()
) -> tuple[list[StepMention], list[ConditionProblem]]:
    """Compile a condition: the steps it references and what is wrong with it (a syntax
    error, an unknown variable); whether those steps exist and are upstream is the
    caller's check (it knows the graph)."""
    if len(source) > MAX_CONDITION_LENGTH:
        message = f"at most {MAX_CONDITION_LENGTH} characters are allowed (got {len(source)})"
        return [], [ConditionProblem(message, 1, 1, "CONDITION_TOO_LONG")]
    try:
        _compile(source)
    except ValueError as error:
        return [], [_syntax_problem(source, str(error))]
    mentions, misuses, _ = _analyse(source, extra_variables)
    problems = [
        ConditionProblem(message, *position(source, offset), reason)
        for message, offset, reason in misuses
    ]
    return mentions, problems


EVENT_VARIABLES = frozenset({"event"})
"""The variable of an event trigger's filter: ``event.id``, ``.name``, ``.key``,
``.payload``."""


def check_event_filter(source: str) -> list[ConditionProblem]:
    """What is wrong with an event trigger's filter: a syntax error, or a variable other
    than ``event`` (a trigger has no run and no steps yet)."""
    mentions, problems = check_condition(source, EVENT_VARIABLES)
    if problems:
        return problems  # too long, a syntax error, or an unknown variable
    _, _, run_fields = _analyse(source, EVENT_VARIABLES)
    if mentions or run_fields:
        where = mentions[0].offset if mentions else source.find("run")
        problems.append(
            ConditionProblem(
                "a trigger filter reads event.id, event.name, event.key and event.payload "
                "only (there is no run yet)",
                *position(source, max(where, 0)),
                "UNKNOWN_CONDITION_VARIABLE",
            )
        )
    return problems


def evaluate_event_filter(source: str, event: Mapping[str, Any]) -> bool:
    """Evaluate an event trigger's filter over ``event``.

    Raises:
        ConditionEvaluationError: It failed or its result is not a bool.
    """
    return _evaluate("filter", source, {"event": dict(event)})


def step_mentions(source: str) -> list[str]:
    """The ids of the steps a (valid) condition references, sorted, without duplicates."""
    return sorted({m.step_id for m in _analyse(source, LOOP_VARIABLES)[0]})


def uses_run_metadata(source: str) -> bool:
    """Whether a (valid) condition reads ``run.metadata``: StartRun then copies the
    run's metadata into the step's spec (``run_metadata``), since the claim does not
    return it."""
    return "metadata" in _analyse(source, LOOP_VARIABLES)[2]


_SYNTAX_POSITION = re.compile(r"<input>:(\d+):(\d+): (?:Syntax error: )?([^\n]*)")


def _syntax_problem(source: str, error: str) -> ConditionProblem:
    match = _SYNTAX_POSITION.search(error)
    if match is None:
        return ConditionProblem(f"invalid CEL expression: {error}", 1, 1, "INVALID_CONDITION")
    line, column, message = int(match.group(1)), int(match.group(2)), match.group(3)
    message = message.split(" expecting {", 1)[0]  # the grammar's token list: noise
    return ConditionProblem(f"CEL syntax error: {message}", line, column, "INVALID_CONDITION")


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> cel.Program:
    return cel.compile(source)


def run_variables(
    *,
    run_id: str,
    run_input: Any,
    labels: Mapping[str, str],
    organization_id: str,
    definition_name: str | None,
    definition_version: int | None,
    metadata: Any = None,
) -> dict[str, Any]:
    """The ``run`` variable of a condition."""
    return {
        "input": run_input if run_input is not None else {},
        "id": run_id,
        "labels": dict(labels),
        "metadata": metadata if metadata is not None else {},
        "organization_id": organization_id,
        "definition": {"name": definition_name or "", "version": definition_version or 0},
    }


def evaluate_condition(
    source: str,
    run: Mapping[str, Any],
    step_outputs: Mapping[str, Any],
    *,
    extra: Mapping[str, Any] | None = None,
) -> bool:
    """Evaluate a condition; ``step_outputs`` maps each upstream step id it may
    reference to its output (None when skipped); ``extra`` adds variables (a loop's
    ``until`` has ``output`` and ``iteration``).

    Raises:
        ConditionEvaluationError: It did not compile, failed (a missing field, a type
            error), or its result is not a bool.
    """
    steps = {step_id: {"output": output} for step_id, output in step_outputs.items()}
    return _evaluate("condition", source, {**(extra or {}), "run": dict(run), "steps": steps})


def _evaluate(kind: str, source: str, variables: Mapping[str, Any]) -> bool:
    """Run a CEL program over ``variables``; the result must be a bool.

    Raises:
        ConditionEvaluationError: It did not compile, failed, or gave no bool.
    """
    try:
        result = _compile(source).execute(dict(variables))
    except (ValueError, TypeError, RuntimeError, KeyError) as error:
        detail = str(error) or type(error).__name__
        if isinstance(error, KeyError):
            detail = f"no such key: {error}"
        raise ConditionEvaluationError(f"{kind} {source!r} failed: {detail}") from None
    if not isinstance(result, bool):
        raise ConditionEvaluationError(
            f"{kind} {source!r} evaluated to {type(result).__name__} {result!r}, not a bool"
        )
    return result


def claimed_run_variables(step: ClaimedStep) -> dict[str, Any]:
    """The ``run`` variable of a claimed step's condition or loop."""
    return run_variables(
        run_id=str(step.run_id),
        run_input=step.run_input,
        labels=step.labels,
        organization_id=step.organization_id,
        definition_name=step.definition_name,
        definition_version=step.definition_version,
        metadata=step.spec.run_metadata,
    )


def condition_outcome(step: ClaimedStep, outcomes: OutcomePolicy) -> StepOutcome | None:
    """None when the claimed step has no condition or it holds; otherwise its outcome:
    skipped with ``CONDITION_FALSE`` (``podium_park_step`` gives the attempt back and
    ``podium_skip_step`` leaves its dependents to run), or the failure
    ``CONDITION_ERROR`` (not retryable: the step's failure policy decides)."""
    when = step.spec.when
    if not when:
        return None
    run = claimed_run_variables(step)
    try:
        if evaluate_condition(when, run, step.upstream):
            return None
    except ConditionEvaluationError as error:
        return outcomes.outcome(step, error=StepError(CONDITION_ERROR, str(error), False))
    outcome = outcomes.outcome(step, park=Outcome.SKIPPED)
    outcome.error = StepError(CONDITION_FALSE, f"condition {when!r} is false", False)
    return outcome


def skipped_by_condition(outcome: StepOutcome) -> bool:
    """Whether an outcome is a skip by a false condition (not an attempt: the metrics
    leave it out, as ``podium_park_step`` gives its attempt number back)."""
    return (
        outcome.outcome == Outcome.SKIPPED
        and outcome.error is not None
        and outcome.error.code == CONDITION_FALSE
    )
