"""Validation of a definition's steps: ids, targets, inputs, dependencies (unknown,
duplicate, cyclic), ``${steps...}`` references (known and upstream) and conditions
(``when``: CEL that compiles, over known variables and upstream steps)."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import struct_pb2

from podium.orchestration.v1 import definition_pb2
from podium.server.engine import conditions
from podium.server.engine.conditions import LOOP_VARIABLES
from podium.server.engine.loops import MAX_ITERATIONS
from podium.server.engine.references import (
    Reference,
    join_location,
    parse_path,
    scan_references,
)
from podium.server.engine.validation_fanout import ITEM_SOURCES, check_for_each
from podium.server.engine.validation_fields import MAX_DESCRIPTION
from podium.server.engine.validation_graph import DependencyGraph, cycle_text
from podium.server.engine.validation_policies import PolicyChecker
from podium.server.engine.validation_timers import TimerStepChecker

__all__ = ["DefinitionValidator"]

STEP_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")

_MAX_STEP_ID = 64
_SUGGEST_MAX_IDS = 500  # beyond this, "did you mean" would cost too much per typo


class DefinitionValidator(PolicyChecker, TimerStepChecker):
    """Validates a whole definition: its fields, policies and steps."""

    # -- the definition

    def run(self, definition: definition_pb2.Definition) -> None:
        self.check_name("name", definition.name, "name", required=not self.plan)
        self.check_text("description", definition.description, MAX_DESCRIPTION)
        self.check_labels(definition)
        if definition.HasField("execution"):
            self.check_execution(definition.execution)
        if definition.HasField("error_handling"):
            handling = definition.error_handling
            if handling.HasField("on_step_failure"):
                self.check_failure_policy(
                    "error_handling.on_step_failure", handling.on_step_failure
                )
            self.check_text("error_handling.rollback.hint", handling.rollback.hint, MAX_DESCRIPTION)
        self.check_steps(definition)
        self.check_triggers(definition)

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

        graph = DependencyGraph(len(steps))
        for index, step in enumerate(steps):
            self.check_step(definition, index, step)
            self.check_dependencies(index, step, first_index, graph)

        self.check_cycles(steps, graph)
        self.check_references(steps, first_index, graph)
        self.check_conditions(steps, first_index, graph)

    def check_step(
        self, definition: definition_pb2.Definition, index: int, step: definition_pb2.Step
    ) -> None:
        path = f"steps[{index}]"
        target = step.WhichOneof("target")
        if target is None:
            self.add(
                path,
                f"step '{step.id}' needs a target: set one of agent, skill, orchestration, "
                "sleep, wait_for_event or plan",
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
        elif target in ("sleep", "wait_for_event"):
            self.check_timer_step(path, step, target)
        elif target == "plan":
            agent = step.plan.agent
            if self.check_name(f"{path}.plan.agent", agent, "plan.agent") and self.known_agents:
                if not self.known_agents(agent):
                    self.add(f"{path}.plan.agent", f"unknown agent '{agent}'", "UNKNOWN_AGENT")
        else:
            self.check_orchestration(definition, path, step)

        self.check_text(f"{path}.description", step.description, MAX_DESCRIPTION)
        self.check_text(f"{path}.rollback.hint", step.rollback.hint, MAX_DESCRIPTION)
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
        if step.HasField("loop"):
            self.check_loop(path, step)
        if step.HasField("input"):
            size = step.input.ByteSize()
            if size > self.limits.max_step_input_bytes:
                self.add(
                    f"{path}.input",
                    f"input is {size} bytes serialized; at most "
                    f"{self.limits.max_step_input_bytes} are allowed",
                    "INPUT_TOO_LARGE",
                )

    def check_loop(self, path: str, step: definition_pb2.Step) -> None:
        iterations = step.loop.max_iterations
        if not 1 <= iterations <= MAX_ITERATIONS:
            self.add(
                f"{path}.loop.max_iterations",
                f"required: 1 to {MAX_ITERATIONS} (got {iterations})",
                "INVALID_MAX_ITERATIONS",
            )
        if step.WhichOneof("target") in ("orchestration", "plan"):
            self.add(
                f"{path}.loop",
                "loops of sub-orchestration and plan steps are not supported; loop an agent "
                "or skill step",
                "UNSUPPORTED",
            )
        if step.HasField("checkpoint"):
            self.add(
                f"{path}.loop",
                "a loop step cannot have a checkpoint (it would be asked at every iteration)",
                "UNSUPPORTED",
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

    def check_dependencies(
        self,
        index: int,
        step: definition_pb2.Step,
        first_index: dict[str, int],
        graph: DependencyGraph,
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

    def check_cycles(self, steps: Sequence[definition_pb2.Step], graph: DependencyGraph) -> None:
        for component in graph.components():
            if len(component) < 2:
                continue
            cycle, position = graph.shortest_cycle(component)
            names = cycle_text([steps[i].id for i in cycle])
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
        graph: DependencyGraph,
    ) -> None:
        for index, step in enumerate(steps):
            if step.WhichOneof("target") == "wait_for_event":
                base = f"steps[{index}].wait_for_event.key"
                for ref in scan_references(step.wait_for_event.key).references:
                    if ref.source == "steps":
                        self.check_step_reference(base, index, step, ref, first_index, graph)
            found, for_each = check_for_each(f"steps[{index}]", step)
            for field, description, reason in found:
                self.add(field, description, reason)
            if for_each is not None:
                base = f"steps[{index}].for_each"
                self.check_step_reference(base, index, step, for_each, first_index, graph)
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
                elif ref.source in ITEM_SOURCES and not step.for_each:
                    self.add(
                        _join(base, ref.location),
                        f"{ref.raw} is only defined in the input of a for_each step",
                        "ITEM_OUTSIDE_FOR_EACH",
                    )

    def check_step_reference(
        self,
        base: str,
        index: int,
        step: definition_pb2.Step,
        ref: Reference,
        first_index: dict[str, int],
        graph: DependencyGraph,
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
            if not step.HasField("loop"):  # a loop step's own output: the previous iteration's
                self.add(
                    path,
                    f"{ref.raw}: step '{step.id}' cannot use its own output (only a loop step "
                    "can: its previous iteration's)",
                    "SELF_REFERENCE",
                )
        elif not graph.is_upstream(target, index):
            self.add(
                path,
                f"steps.{ref.step_id} is not upstream of step {step.id}: "
                f"add it to depends_on (directly or through a dependency)",
                "REFERENCE_NOT_UPSTREAM",
            )

    def check_conditions(
        self,
        steps: Sequence[definition_pb2.Step],
        first_index: dict[str, int],
        graph: DependencyGraph,
    ) -> None:
        """Each ``when``: CEL that compiles, uses known variables and upstream steps."""
        for index, step in enumerate(steps):
            expressions = [(f"steps[{index}].when", step.when, frozenset[str]())]
            if step.HasField("loop"):
                until = (f"steps[{index}].loop.until", step.loop.until, LOOP_VARIABLES)
                expressions.append(until)
            for path, source, extra in expressions:
                if source:
                    self.check_expression(path, source, extra, index, step, first_index, graph)

    def check_expression(
        self,
        path: str,
        source: str,
        extra: frozenset[str],
        index: int,
        step: definition_pb2.Step,
        first_index: dict[str, int],
        graph: DependencyGraph,
    ) -> None:
        """One CEL expression of a step (``when``, ``loop.until``)."""
        mentions, problems = conditions.check_condition(source, extra)
        for problem in problems:
            self.add(path, problem.describe(), problem.reason)
        for mention in mentions:
            line, column = conditions.position(source, mention.offset)
            where = f" (at line {line}, column {column})"
            target = first_index.get(mention.step_id)
            if target is None:
                self.add(
                    path,
                    f"steps.{mention.step_id} references unknown step "
                    f"'{mention.step_id}'" + _suggest(mention.step_id, first_index) + where,
                    "UNKNOWN_STEP_REFERENCE",
                )
            elif mention.step_id == step.id:
                self.add(
                    path,
                    f"step '{step.id}' cannot use its own output here"
                    + (" (use output: this iteration's)" if "output" in extra else "")
                    + where,
                    "SELF_REFERENCE",
                )
            elif not graph.is_upstream(target, index):
                self.add(
                    path,
                    f"steps.{mention.step_id} is not upstream of step {step.id}: "
                    f"add it to depends_on (directly or through a dependency){where}",
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


def _suggest(name: str, known: Iterable[str]) -> str:
    candidates = list(known)
    if len(candidates) > _SUGGEST_MAX_IDS:
        return ""
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
