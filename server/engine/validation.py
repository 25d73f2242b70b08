"""Validation of definitions and inline plans.

:func:`validate_definition` returns one ``google.rpc.BadRequest.FieldViolation`` per
problem (it never stops at the first) so the API can answer INVALID_ARGUMENT with every
problem at once. ``field`` is a field path built from proto field names and indices
(``steps[2].depends_on[0]``, ``error_handling.on_step_failure.max_attempts``); inside a
step input it continues with the JSON location (``steps[0].input.query``); map keys and
JSON keys that are not identifiers are quoted with backticks (AIP-161). ``reason`` is a
stable UPPER_SNAKE code (``DUPLICATE_STEP_ID``, ``DEPENDENCY_CYCLE``, ...).

Proto3 cannot tell an explicit 0 from an unset number, so 0 always means "the default"
(e.g. ``execution.concurrency.max_parallel``); only negative values are rejected there.
Fields with explicit presence (``max_attempts``) are checked when set.

Every check is linear in the size of the definition (cycles: Tarjan's SCC; upstream
references: ancestor bitsets computed only when a reference is not a direct dependency),
so 10,000 steps validate quickly.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.rpc.error_details_pb2 import BadRequest

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.references import (
    Reference,
    join_location,
    parse_path,
    scan_references,
)

__all__ = [
    "DefinitionTargets",
    "ValidationLimits",
    "normalize_definition",
    "referenced_targets",
    "validate_definition",
    "validate_plan",
]

FieldViolation = BadRequest.FieldViolation

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")
STEP_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
LABEL_KEY_PATTERN = re.compile(r"[a-z0-9_./-]+")

_MAX_NAME = 128
_MAX_DESCRIPTION = 2000
_MAX_LABELS = 64
_MAX_LABEL_KEY = 63
_MAX_LABEL_VALUE = 256
_MAX_STEP_ID = 64
_SUGGEST_MAX_IDS = 500  # beyond this, "did you mean" would cost too much per typo


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """Bounds enforced by validation (server settings may override the defaults).

    Attributes:
        max_steps: Most steps a definition may have.
        max_attempts: Highest ``max_attempts`` a failure policy may ask for.
        max_timeout_seconds: Longest step timeout (and default timeout), in seconds.
        max_step_input_bytes: Largest serialized (protobuf) input of one step.
        max_violations: Most violations returned; the last one then says how many more
            were found (keeps the error details within gRPC metadata limits).
    """

    max_steps: int = 10_000
    max_attempts: int = 100
    max_timeout_seconds: float = 86_400.0
    max_step_input_bytes: int = 256 * 1024
    max_violations: int = 100


@dataclass(frozen=True, slots=True)
class DefinitionTargets:
    """Agents, skills and definitions named by a definition's steps.

    Lets the caller prefetch (asynchronously) what the ``known_*`` callbacks of
    :func:`validate_definition` need.
    """

    agents: frozenset[str] = field(default_factory=frozenset)
    skills: frozenset[str] = field(default_factory=frozenset)
    definitions: frozenset[tuple[str, int]] = field(default_factory=frozenset)


def referenced_targets(definition: definition_pb2.Definition) -> DefinitionTargets:
    """Return the agents, skills and ``(name, version)`` definitions the steps target."""
    agents: set[str] = set()
    skills: set[str] = set()
    definitions: set[tuple[str, int]] = set()
    for step in definition.steps:
        target = step.WhichOneof("target")
        if target == "agent":
            agents.add(step.agent)
        elif target == "skill":
            skills.add(step.skill)
        elif target == "orchestration":
            definitions.add((step.orchestration.name, step.orchestration.version))
    return DefinitionTargets(frozenset(agents), frozenset(skills), frozenset(definitions))


def normalize_definition(definition: definition_pb2.Definition) -> definition_pb2.Definition:
    """Return a copy without the output-only fields (version, organization_id,
    create_time, archived, content_hash): the form that is stored and hashed."""
    normalized = definition_pb2.Definition()
    normalized.CopyFrom(definition)
    normalized.ClearField("version")
    normalized.ClearField("organization_id")
    normalized.ClearField("create_time")
    normalized.ClearField("archived")
    normalized.ClearField("content_hash")
    return normalized


def validate_definition(
    definition: definition_pb2.Definition,
    *,
    known_definitions: Callable[[str, int], bool] | None = None,
    known_agents: Callable[[str], bool] | None = None,
    known_skills: Callable[[str], bool] | None = None,
    limits: ValidationLimits = ValidationLimits(),
    field_prefix: str = "",
) -> list[BadRequest.FieldViolation]:
    """Validate a definition; return one field violation per problem (empty when valid).

    Args:
        definition: The definition as sent by a client. Output-only fields are ignored.
        known_definitions: ``(name, version) -> exists`` for sub-orchestration targets
            (version 0 means "any version"). ``None`` skips the check. A step running the
            definition itself is always rejected (recursion); indirect recursion through
            other definitions cannot be seen here.
        known_agents: ``name -> registered`` for ``agent`` targets; ``None`` skips.
        known_skills: ``skill -> offered by some agent`` for ``skill`` targets; ``None`` skips.
        limits: Bounds to enforce.
        field_prefix: Prepended to every field path (e.g. ``"definition"``).
    """
    validator = _Validator(
        limits, field_prefix, known_definitions, known_agents, known_skills, plan=False
    )
    validator.run(definition)
    return validator.result()


def validate_plan(
    plan: definition_pb2.Definition,
    *,
    known_definitions: Callable[[str, int], bool] | None = None,
    known_agents: Callable[[str], bool] | None = None,
    known_skills: Callable[[str], bool] | None = None,
    limits: ValidationLimits = ValidationLimits(),
    field_prefix: str = "",
) -> list[BadRequest.FieldViolation]:
    """Validate an inline plan (StartRun ``plan``): like :func:`validate_definition`,
    except that ``name`` is optional (checked only when set)."""
    validator = _Validator(
        limits, field_prefix, known_definitions, known_agents, known_skills, plan=True
    )
    validator.run(plan)
    return validator.result()


# --------------------------------------------------------------------------- internals


def _describe_name_rule(what: str) -> str:
    return (
        f"{what} must be 1 to {_MAX_NAME} characters of lowercase letters, digits, "
        "'_', '.' and '-', starting with a letter or digit"
    )


def _quote_key(key: str) -> str:
    return join_location("", key)


class _Validator:
    def __init__(
        self,
        limits: ValidationLimits,
        prefix: str,
        known_definitions: Callable[[str, int], bool] | None,
        known_agents: Callable[[str], bool] | None,
        known_skills: Callable[[str], bool] | None,
        *,
        plan: bool,
    ) -> None:
        self.limits = limits
        self.prefix = prefix
        self.known_definitions = known_definitions
        self.known_agents = known_agents
        self.known_skills = known_skills
        self.plan = plan
        self.violations: list[BadRequest.FieldViolation] = []

    # -- reporting

    def add(self, path: str, description: str, reason: str) -> None:
        if self.prefix:
            path = f"{self.prefix}.{path}" if path else self.prefix
        self.violations.append(FieldViolation(field=path, description=description, reason=reason))

    def result(self) -> list[BadRequest.FieldViolation]:
        limit = max(self.limits.max_violations, 1)
        if len(self.violations) <= limit:
            return self.violations
        kept = self.violations[: limit - 1]
        rest = self.violations[limit - 1 :]
        first = rest[0]
        kept.append(
            FieldViolation(
                field=first.field,
                description=f"{first.description} (and {len(rest) - 1} more problems not shown)",
                reason=first.reason,
            )
        )
        return kept

    # -- generic checks

    def check_name(self, path: str, value: str, what: str, *, required: bool = True) -> bool:
        if not value:
            if required:
                self.add(path, f"{what} is required", "REQUIRED")
            return False
        if len(value) > _MAX_NAME or not NAME_PATTERN.fullmatch(value):
            self.add(
                path, f"{_describe_name_rule(what)}; got '{value[:_MAX_NAME]}'", "INVALID_NAME"
            )
            return False
        return True

    def check_text(self, path: str, value: str, maximum: int) -> None:
        if len(value) > maximum:
            self.add(path, f"at most {maximum} characters (got {len(value)})", "TOO_LONG")

    def check_number(
        self,
        path: str,
        value: float,
        *,
        minimum: float = 0.0,
        maximum: float | None = None,
        rule: str = "must not be negative",
    ) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            self.add(path, f"must be a finite number (got {value})", "INVALID_NUMBER")
            return False
        if value < minimum:
            self.add(path, f"{rule} (got {_num(value)})", "OUT_OF_RANGE")
            return False
        if maximum is not None and value > maximum:
            self.add(path, f"must be at most {_num(maximum)} (got {_num(value)})", "OUT_OF_RANGE")
            return False
        return True

    def check_enum(self, path: str, value: int, enum: EnumDescriptor) -> None:
        if value not in enum.values_by_number:
            allowed = ", ".join(v.name for v in enum.values if v.number != 0)
            self.add(path, f"unknown value {value}; expected one of {allowed}", "INVALID_ENUM")

    # -- the definition

    def run(self, definition: definition_pb2.Definition) -> None:
        self.check_name("name", definition.name, "name", required=not self.plan)
        self.check_text("description", definition.description, _MAX_DESCRIPTION)
        self.check_labels(definition)
        if definition.HasField("execution"):
            self.check_execution(definition.execution)
        if definition.HasField("error_handling"):
            handling = definition.error_handling
            if handling.HasField("on_step_failure"):
                self.check_failure_policy(
                    "error_handling.on_step_failure", handling.on_step_failure
                )
            self.check_text(
                "error_handling.rollback.hint", handling.rollback.hint, _MAX_DESCRIPTION
            )
        self.check_steps(definition)

    def check_labels(self, definition: definition_pb2.Definition) -> None:
        labels = definition.labels
        if len(labels) > _MAX_LABELS:
            self.add("labels", f"at most {_MAX_LABELS} labels (got {len(labels)})", "TOO_MANY")
        for key in sorted(labels):
            path = f"labels.{_quote_key(key)}"
            if not key or len(key) > _MAX_LABEL_KEY or not LABEL_KEY_PATTERN.fullmatch(key):
                self.add(
                    path,
                    f"label keys must be 1 to {_MAX_LABEL_KEY} characters of lowercase "
                    f"letters, digits, '_', '.', '-' and '/'; got '{key}'",
                    "INVALID_LABEL",
                )
            value = labels[key]
            if len(value) > _MAX_LABEL_VALUE:
                self.add(
                    path,
                    f"label values must be at most {_MAX_LABEL_VALUE} characters "
                    f"(got {len(value)})",
                    "INVALID_LABEL",
                )

    def check_execution(self, execution: definition_pb2.ExecutionPolicy) -> None:
        concurrency = execution.concurrency
        self.check_number(
            "execution.concurrency.max_parallel",
            concurrency.max_parallel,
            rule="must be positive (0 uses the server default)",
        )
        self.check_number(
            "execution.concurrency.max_runs_per_key",
            concurrency.max_runs_per_key,
            rule="must not be negative (0 means unlimited)",
        )
        if concurrency.key:
            scan = scan_references(concurrency.key)
            for error in scan.errors:
                self.add("execution.concurrency.key", error.message, "MALFORMED_REFERENCE")
            for ref in scan.references:
                if ref.source != "run":
                    self.add(
                        "execution.concurrency.key",
                        f"{ref.raw}: the concurrency key may only reference ${{run.input...}}",
                        "INVALID_REFERENCE",
                    )
        budget = execution.budget
        self.check_number(
            "execution.budget.max_tokens",
            budget.max_tokens,
            rule="must not be negative (0 means unlimited)",
        )
        self.check_number(
            "execution.budget.max_cost_usd",
            budget.max_cost_usd,
            rule="must not be negative (0 means unlimited)",
        )
        self.check_enum(
            "execution.budget.on_exceed",
            budget.on_exceed,
            definition_pb2.BudgetPolicy.DESCRIPTOR.enum_types_by_name["OnExceed"],
        )
        self.check_number("execution.caching.ttl_seconds", execution.caching.ttl_seconds)
        self.check_number(
            "execution.default_timeout_seconds",
            execution.default_timeout_seconds,
            maximum=self.limits.max_timeout_seconds,
        )

    def check_failure_policy(self, path: str, policy: definition_pb2.StepFailurePolicy) -> None:
        if policy.HasField("max_attempts"):
            self.check_number(
                f"{path}.max_attempts",
                policy.max_attempts,
                minimum=1,
                maximum=self.limits.max_attempts,
                rule="must be at least 1 (the first attempt counts)",
            )
        if policy.HasField("backoff"):
            backoff = policy.backoff
            bpath = f"{path}.backoff"
            initial_ok = self.check_number(f"{bpath}.initial_seconds", backoff.initial_seconds)
            if backoff.multiplier != 0:
                self.check_number(
                    f"{bpath}.multiplier",
                    backoff.multiplier,
                    minimum=1,
                    rule="must be at least 1 (0 uses the default, 2)",
                )
            max_ok = self.check_number(f"{bpath}.max_seconds", backoff.max_seconds)
            if (
                initial_ok
                and max_ok
                and backoff.initial_seconds > 0
                and backoff.max_seconds > 0
                and backoff.max_seconds < backoff.initial_seconds
            ):
                self.add(
                    f"{bpath}.max_seconds",
                    f"must be at least initial_seconds ({_num(backoff.initial_seconds)}); "
                    f"got {_num(backoff.max_seconds)}",
                    "OUT_OF_RANGE",
                )

    # -- steps

    def check_steps(self, definition: definition_pb2.Definition) -> None:
        steps = definition.steps
        if not steps:
            self.add("steps", "at least one step is required", "REQUIRED")
            return
        if len(steps) > self.limits.max_steps:
            self.add(
                "steps",
                f"at most {self.limits.max_steps} steps are allowed (got {len(steps)})",
                "TOO_MANY",
            )
            return  # bound the work: the rest would be checked on a definition that is refused

        first_index: dict[str, int] = {}
        for index, step in enumerate(steps):
            path = f"steps[{index}].id"
            if not step.id:
                self.add(path, "step id is required", "REQUIRED")
                continue
            if len(step.id) > _MAX_STEP_ID or not STEP_ID_PATTERN.fullmatch(step.id):
                self.add(
                    path,
                    f"step ids must be 1 to {_MAX_STEP_ID} characters of letters, digits, "
                    f"'_' and '-'; got '{step.id[:_MAX_STEP_ID]}'",
                    "INVALID_STEP_ID",
                )
            if step.id in first_index:
                self.add(
                    path,
                    f"duplicate step id '{step.id}' (first used by steps[{first_index[step.id]}])",
                    "DUPLICATE_STEP_ID",
                )
            else:
                first_index[step.id] = index

        graph = _Graph(len(steps))
        for index, step in enumerate(steps):
            self.check_step(definition, index, step)
            self.check_dependencies(index, step, first_index, graph)

        self.check_cycles(steps, graph)
        self.check_references(steps, first_index, graph)

    def check_step(
        self, definition: definition_pb2.Definition, index: int, step: definition_pb2.Step
    ) -> None:
        path = f"steps[{index}]"
        target = step.WhichOneof("target")
        if target is None:
            self.add(
                path,
                f"step '{step.id}' needs a target: set one of agent, skill or orchestration",
                "MISSING_TARGET",
            )
        elif target == "agent":
            if self.check_name(f"{path}.agent", step.agent, "agent name") and self.known_agents:
                if not self.known_agents(step.agent):
                    self.add(f"{path}.agent", f"unknown agent '{step.agent}'", "UNKNOWN_AGENT")
        elif target == "skill":
            if self.check_name(f"{path}.skill", step.skill, "skill name") and self.known_skills:
                if not self.known_skills(step.skill):
                    self.add(
                        f"{path}.skill",
                        f"no registered agent offers skill '{step.skill}'",
                        "UNKNOWN_SKILL",
                    )
        else:
            self.check_orchestration(definition, path, step)

        self.check_text(f"{path}.description", step.description, _MAX_DESCRIPTION)
        self.check_text(f"{path}.rollback.hint", step.rollback.hint, _MAX_DESCRIPTION)
        self.check_number(
            f"{path}.timeout_seconds",
            step.timeout_seconds,
            maximum=self.limits.max_timeout_seconds,
        )
        if step.HasField("on_failure"):
            self.check_failure_policy(f"{path}.on_failure", step.on_failure)
        if step.HasField("checkpoint"):
            self.check_checkpoint(f"{path}.checkpoint", step.checkpoint)
        if step.HasField("caching"):
            self.check_number(f"{path}.caching.ttl_seconds", step.caching.ttl_seconds)
            for k, key_path in enumerate(step.caching.key_paths):
                try:
                    if not key_path:
                        raise ValueError("must not be empty")
                    parse_path(key_path)
                except ValueError as error:
                    self.add(
                        f"{path}.caching.key_paths[{k}]",
                        f"invalid input path '{key_path}': {error}",
                        "INVALID_PATH",
                    )
        if step.HasField("input"):
            size = step.input.ByteSize()
            if size > self.limits.max_step_input_bytes:
                self.add(
                    f"{path}.input",
                    f"input is {size} bytes serialized; at most "
                    f"{self.limits.max_step_input_bytes} are allowed",
                    "INPUT_TOO_LARGE",
                )

    def check_orchestration(
        self, definition: definition_pb2.Definition, path: str, step: definition_pb2.Step
    ) -> None:
        ref = step.orchestration
        name_ok = self.check_name(f"{path}.orchestration.name", ref.name, "orchestration.name")
        version_ok = self.check_number(
            f"{path}.orchestration.version",
            ref.version,
            rule="must not be negative (0 means the latest version)",
        )
        if not name_ok:
            return
        if definition.name and ref.name == definition.name:
            self.add(
                f"{path}.orchestration.name",
                f"step '{step.id}' runs definition '{ref.name}' inside itself: "
                "recursion is not allowed",
                "RECURSIVE_ORCHESTRATION",
            )
            return
        if version_ok and self.known_definitions is not None:
            if not self.known_definitions(ref.name, ref.version):
                what = f"version {ref.version} of definition" if ref.version else "definition"
                self.add(
                    f"{path}.orchestration",
                    f"unknown {what} '{ref.name}'",
                    "UNKNOWN_DEFINITION",
                )

    def check_checkpoint(self, path: str, checkpoint: definition_pb2.CheckpointPolicy) -> None:
        enums = definition_pb2.CheckpointPolicy.DESCRIPTOR.enum_types_by_name
        self.check_enum(f"{path}.when", checkpoint.when, enums["When"])
        self.check_enum(f"{path}.on_expiry", checkpoint.on_expiry, enums["ExpiryAction"])
        self.check_enum(f"{path}.on_reject", checkpoint.on_reject, enums["RejectAction"])
        self.check_number(
            f"{path}.expires_after_seconds",
            checkpoint.expires_after_seconds,
            rule="must not be negative (0 means never)",
        )
        configured = (
            checkpoint.prompt
            or checkpoint.approvers
            or checkpoint.expires_after_seconds
            or checkpoint.on_expiry
            or checkpoint.on_reject
        )
        if checkpoint.when == 0 and configured:
            self.add(
                f"{path}.when",
                "when is required (before or after) once a checkpoint is configured",
                "REQUIRED",
            )
        for a, approver in enumerate(checkpoint.approvers):
            if not approver.strip():
                self.add(f"{path}.approvers[{a}]", "must not be empty", "REQUIRED")

    def check_dependencies(
        self,
        index: int,
        step: definition_pb2.Step,
        first_index: dict[str, int],
        graph: _Graph,
    ) -> None:
        seen: dict[str, int] = {}
        for position, dependency in enumerate(step.depends_on):
            path = f"steps[{index}].depends_on[{position}]"
            if dependency in seen:
                self.add(
                    path,
                    f"duplicate dependency '{dependency}' (also depends_on[{seen[dependency]}])",
                    "DUPLICATE_DEPENDENCY",
                )
                continue
            seen[dependency] = position
            if not dependency:
                self.add(path, "must not be empty", "REQUIRED")
                continue
            if dependency == step.id:
                self.add(path, f"step '{step.id}' depends on itself", "SELF_DEPENDENCY")
                continue
            target = first_index.get(dependency)
            if target is None:
                self.add(
                    path,
                    f"step '{step.id}' depends on unknown step '{dependency}'"
                    + _suggest(dependency, first_index),
                    "UNKNOWN_DEPENDENCY",
                )
                continue
            graph.add_edge(index, target, position)

    def check_cycles(self, steps: Sequence[definition_pb2.Step], graph: _Graph) -> None:
        for component in graph.components():
            if len(component) < 2:
                continue
            cycle, position = graph.shortest_cycle(component)
            names = _cycle_text([steps[i].id for i in cycle])
            extra = ""
            others = sorted(set(component) - set(cycle))
            if others:
                shown = ", ".join(steps[i].id for i in others[:10])
                more = f" and {len(others) - 10} more" if len(others) > 10 else ""
                extra = f"; steps {shown}{more} are on further cycles with them"
            self.add(
                f"steps[{cycle[0]}].depends_on[{position}]",
                f"dependency cycle: {names} (each step depends on the next){extra}",
                "DEPENDENCY_CYCLE",
            )

    def check_references(
        self,
        steps: Sequence[definition_pb2.Step],
        first_index: dict[str, int],
        graph: _Graph,
    ) -> None:
        for index, step in enumerate(steps):
            if not step.HasField("input"):
                continue
            base = f"steps[{index}].input"
            value = self.struct_to_python(base, step.input)
            scan = scan_references(value)
            for error in scan.errors:
                self.add(_join(base, error.location), error.message, "MALFORMED_REFERENCE")
            for ref in scan.references:
                if ref.source == "steps":
                    self.check_step_reference(base, index, step, ref, first_index, graph)

    def check_step_reference(
        self,
        base: str,
        index: int,
        step: definition_pb2.Step,
        ref: Reference,
        first_index: dict[str, int],
        graph: _Graph,
    ) -> None:
        path = _join(base, ref.location)
        assert ref.step_id is not None
        target = first_index.get(ref.step_id)
        if target is None:
            self.add(
                path,
                f"{ref.raw} references unknown step '{ref.step_id}'"
                + _suggest(ref.step_id, first_index),
                "UNKNOWN_STEP_REFERENCE",
            )
        elif ref.step_id == step.id:
            self.add(
                path, f"{ref.raw}: step '{step.id}' cannot use its own output", "SELF_REFERENCE"
            )
        elif not graph.is_upstream(target, index):
            self.add(
                path,
                f"steps.{ref.step_id} is not upstream of step {step.id}: "
                f"add it to depends_on (directly or through a dependency)",
                "REFERENCE_NOT_UPSTREAM",
            )

    def struct_to_python(self, path: str, struct: struct_pb2.Struct) -> dict[str, Any]:
        """Convert a Struct to Python, reporting non-finite numbers on the way.

        Keys are sorted: map order is unspecified, violations must come out stable.
        """
        fields = struct.fields
        return {
            key: self.value_to_python(join_location(path, key), fields[key])
            for key in sorted(fields)
        }

    def value_to_python(self, path: str, value: struct_pb2.Value) -> Any:
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            return self.struct_to_python(path, value.struct_value)
        if kind == "list_value":
            return [
                self.value_to_python(join_location(path, i), item)
                for i, item in enumerate(value.list_value.values)
            ]
        if kind == "number_value":
            if not math.isfinite(value.number_value):
                self.add(
                    path,
                    f"numbers must be finite (got {value.number_value})",
                    "INVALID_NUMBER",
                )
            return value.number_value
        if kind == "string_value":
            return value.string_value
        if kind == "bool_value":
            return value.bool_value
        return None


def _join(base: str, location: str) -> str:
    if not location:
        return base
    return f"{base}{location}" if location.startswith("[") else f"{base}.{location}"


def _cycle_text(ids: list[str]) -> str:
    """``a -> b -> c -> a``; long cycles keep their first and last ten steps."""
    if len(ids) > 21:
        hidden = len(ids) - 20
        ids = [*ids[:10], f"... ({hidden} more steps) ...", *ids[-10:]]
    return " -> ".join(ids)


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _suggest(name: str, known: Iterable[str]) -> str:
    candidates = list(known)
    if len(candidates) > _SUGGEST_MAX_IDS:
        return ""
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Graph:
    """Step dependency graph: an edge ``step -> dependency`` per ``depends_on`` entry."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.edges: list[list[int]] = [[] for _ in range(size)]
        self.positions: list[list[int]] = [[] for _ in range(size)]
        self.direct: list[set[int]] = [set() for _ in range(size)]
        self._component: list[int] = []
        self._components: list[list[int]] | None = None
        self._ancestors: list[int] | None = None

    def add_edge(self, step: int, dependency: int, position: int) -> None:
        self.edges[step].append(dependency)
        self.positions[step].append(position)
        self.direct[step].add(dependency)

    def components(self) -> list[list[int]]:
        """Strongly connected components (iterative Tarjan), dependencies first."""
        if self._components is not None:
            return self._components
        n = self.size
        order = [-1] * n
        low = [0] * n
        on_stack = [False] * n
        stack: list[int] = []
        component = [-1] * n
        components: list[list[int]] = []
        counter = 0
        for root in range(n):
            if order[root] != -1:
                continue
            order[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack[root] = True
            work: list[tuple[int, int]] = [(root, 0)]
            while work:
                v, i = work[-1]
                edges = self.edges[v]
                if i < len(edges):
                    work[-1] = (v, i + 1)
                    w = edges[i]
                    if order[w] == -1:
                        order[w] = low[w] = counter
                        counter += 1
                        stack.append(w)
                        on_stack[w] = True
                        work.append((w, 0))
                    elif on_stack[w] and order[w] < low[v]:
                        low[v] = order[w]
                    continue
                work.pop()
                if work:
                    parent = work[-1][0]
                    if low[v] < low[parent]:
                        low[parent] = low[v]
                if low[v] == order[v]:
                    members: list[int] = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        component[w] = len(components)
                        members.append(w)
                        if w == v:
                            break
                    components.append(sorted(members))
        self._component = component
        self._components = components
        return components

    def shortest_cycle(self, members: list[int]) -> tuple[list[int], int]:
        """A shortest cycle through the lowest-index member of a component.

        Returns the cycle as step indices (first repeated at the end) and the
        ``depends_on`` position of its first edge.
        """
        start = members[0]
        comp = self._component[start]
        parent: dict[int, int] = {start: -1}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            for w in self.edges[v]:
                if self._component[w] != comp:
                    continue
                if w == start:
                    path = [v]
                    while parent[path[-1]] != -1:
                        path.append(parent[path[-1]])
                    path.reverse()  # start ... v
                    cycle = [*path, start]
                    position = self.positions[start][self.edges[start].index(cycle[1])]
                    return cycle, position
                if w not in parent:
                    parent[w] = v
                    queue.append(w)
        raise AssertionError("a strongly connected component of 2+ steps has a cycle")

    def is_upstream(self, candidate: int, step: int) -> bool:
        """Whether ``candidate`` is a (transitive) dependency of ``step``."""
        if candidate in self.direct[step]:
            return True
        return bool((self.ancestors()[step] >> candidate) & 1)

    def ancestors(self) -> list[int]:
        """Bitset of transitive dependencies per step, built once over the SCC order."""
        if self._ancestors is not None:
            return self._ancestors
        components = self.components()
        ancestors = [0] * self.size
        for number, members in enumerate(components):
            bits = 0
            for v in members:
                for w in self.edges[v]:
                    if self._component[w] != number:
                        bits |= ancestors[w] | (1 << w)
                    else:
                        bits |= 1 << w
            for v in members:
                ancestors[v] = bits
        self._ancestors = ancestors
        return ancestors
