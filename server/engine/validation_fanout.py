"""Validation of dynamic fan-out (``for_each`` and ``max_parallel`` on a step).

``for_each`` is exactly one ``${run.input...}`` or ``${steps.ID.output...}`` reference
(a ``steps`` one is then checked like an input reference: ID must be upstream); the step
needs an ``agent`` or ``skill`` target and no ``checkpoint``; ``max_parallel`` needs
``for_each``. ``${item...}`` / ``${item_index}`` in the input of a step without
``for_each`` are refused by the reference check (``validation_steps.py``)."""

from __future__ import annotations

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.references import Reference, scan_references

__all__ = ["ITEM_SOURCES", "Violation", "check_for_each"]

Violation = tuple[str, str, str]
"""(field path, description, reason)."""

ITEM_SOURCES = frozenset({"item", "item_index"})

_USAGE = "use one reference such as ${steps.search.output.items} or ${run.input.queries}"


def check_for_each(
    path: str, step: definition_pb2.Step
) -> tuple[list[Violation], Reference | None]:
    """The violations of ``step``'s fan-out fields (``path``: ``steps[i]``) and the
    ``${steps...}`` reference of its ``for_each`` to check for being upstream."""
    violations: list[Violation] = []
    if not step.for_each:
        if step.max_parallel:
            violations.append(
                (f"{path}.max_parallel", "max_parallel needs for_each", "FOR_EACH_REQUIRED")
            )
        return violations, None
    field = f"{path}.for_each"
    target = step.WhichOneof("target")
    if target in ("orchestration", "plan"):
        violations.append(
            (
                f"{path}.{target}",
                "a for_each step runs an agent or a skill per item, not a sub-orchestration "
                "or a plan",
                "FOR_EACH_TARGET",
            )
        )
    if step.HasField("checkpoint"):
        message = "a for_each step cannot have a checkpoint"
        violations.append((f"{path}.checkpoint", message, "FOR_EACH_CHECKPOINT"))
    if step.HasField("loop"):
        message = "a for_each step cannot loop (loop a step inside a sub-orchestration instead)"
        violations.append((f"{path}.loop", message, "FOR_EACH_LOOP"))
    scan = scan_references(step.for_each)
    if scan.errors:
        violations.extend((field, e.message, "MALFORMED_REFERENCE") for e in scan.errors)
        return violations, None
    refs = scan.references
    if len(refs) != 1 or refs[0].raw != step.for_each.strip():
        violations.append(
            (field, f"for_each must be exactly one reference; {_USAGE}", "INVALID_FOR_EACH")
        )
        return violations, None
    ref = refs[0]
    if ref.source in ITEM_SOURCES:
        violations.append((field, f"{ref.raw} is not defined here; {_USAGE}", "INVALID_FOR_EACH"))
        return violations, None
    return violations, ref if ref.source == "steps" else None
