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

The checks live in ``validation_fields.py`` (reporting; names, texts, numbers, enums),
``validation_policies.py`` (labels, execution, failure and checkpoint policies),
``validation_steps.py`` (steps, dependencies, references) and ``validation_graph.py``
(the dependency graph: cycles, upstream queries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from google.rpc.error_details_pb2 import BadRequest

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.validation_fields import ValidationLimits
from podium.server.engine.validation_steps import DefinitionValidator

__all__ = [
    "DefinitionTargets",
    "ValidationLimits",
    "normalize_definition",
    "referenced_targets",
    "validate_definition",
    "validate_plan",
]


_DEFAULT_LIMITS = ValidationLimits()


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
        elif target == "plan":
            agents.add(step.plan.agent)
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
    limits: ValidationLimits = _DEFAULT_LIMITS,
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
    validator = DefinitionValidator(
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
    limits: ValidationLimits = _DEFAULT_LIMITS,
    field_prefix: str = "",
) -> list[BadRequest.FieldViolation]:
    """Validate an inline plan (StartRun ``plan``): like :func:`validate_definition`,
    except that ``name`` is optional (checked only when set)."""
    validator = DefinitionValidator(
        limits, field_prefix, known_definitions, known_agents, known_skills, plan=True
    )
    validator.run(plan)
    return validator.result()
