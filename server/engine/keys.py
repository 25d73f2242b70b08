"""Concurrency keys and run priorities: the key template's checks (CreateDefinition),
the key value and priority of a new run (StartRun), and the waiting reason GetRun shows.

The key is a template over the run input (``${run.input.customer}``, text around
references kept), resolved once with the reference machinery of
:mod:`podium.server.engine.references` and stored on the run; the limits
(``max_runs_per_key``, ``max_steps_per_key``) are enforced in SQL (``46_keys.sql``,
``40_claim.sql``).
"""

from __future__ import annotations

import json
from typing import Any

from google.rpc.error_details_pb2 import BadRequest

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.errors import InvalidArgument
from podium.server.engine.references import (
    MissingReferenceError,
    ReferenceSyntaxError,
    resolve,
    scan_references,
)
from podium.server.storage.run_records import RunKeying

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_PER_KEY",
    "MAX_PRIORITY",
    "key_template_violations",
    "run_keying",
    "waiting_reason",
]

MAX_KEY_LENGTH = 256
MAX_PER_KEY = 10_000
MAX_PRIORITY = 9

FieldViolation = BadRequest.FieldViolation


def key_template_violations(template: str, path: str) -> list[tuple[str, str, str]]:
    """(path, description, reason) for each problem of a key template: too long,
    malformed references, references to anything but the run input."""
    found: list[tuple[str, str, str]] = []
    if len(template) > MAX_KEY_LENGTH:
        found.append(
            (path, f"must be at most {MAX_KEY_LENGTH} characters (got {len(template)})", "TOO_LONG")
        )
        return found
    scan = scan_references(template)
    for error in scan.errors:
        found.append((path, f"{error.raw}: {error.message}", "MALFORMED_REFERENCE"))
    for ref in scan.references:
        if ref.source != "run":
            found.append(
                (
                    path,
                    f"{ref.raw}: a concurrency key may only reference the run input "
                    "(${run.input...})",
                    "INVALID_REFERENCE",
                )
            )
    return found


def run_keying(plan: definition_pb2.Definition, run_input: Any, priority: int | None) -> RunKeying:
    """The key value, limits and priority of a new run of ``plan``.

    ``priority`` is the StartRun field (None: the definition's). Raises InvalidArgument
    (field violations on ``input`` / ``priority``) when the key references a path the
    input lacks, resolves to more than MAX_KEY_LENGTH characters, or the priority is out
    of range.
    """
    concurrency = plan.execution.concurrency
    effective = plan.execution.priority if priority is None else priority
    if not 0 <= effective <= MAX_PRIORITY:
        raise InvalidArgument(
            "priority is out of range",
            violations=[
                FieldViolation(
                    field="priority",
                    description=f"must be 0 to {MAX_PRIORITY} (got {effective})",
                )
            ],
        )
    key: str | None = None
    if concurrency.key:
        try:
            value = resolve(concurrency.key, run_input=run_input, step_outputs={})
        except (MissingReferenceError, ReferenceSyntaxError) as exc:
            raise InvalidArgument(
                "the input lacks the concurrency key",
                violations=[
                    FieldViolation(
                        field="input",
                        description=f"the definition's concurrency key "
                        f"{concurrency.key!r} cannot be computed: {exc}",
                    )
                ],
            ) from None
        key = value if isinstance(value, str) else _compact(value)
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidArgument(
                "the concurrency key value is too long",
                violations=[
                    FieldViolation(
                        field="input",
                        description=f"the concurrency key {concurrency.key!r} resolves to "
                        f"{len(key)} characters; at most {MAX_KEY_LENGTH}",
                    )
                ],
            )
    return RunKeying(
        key=key,
        priority=effective,
        max_runs_per_key=concurrency.max_runs_per_key if key is not None else 0,
        max_steps_per_key=concurrency.max_steps_per_key if key is not None else 0,
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def waiting_reason(key: str, running: int, maximum: int) -> str:
    """GetRun's ``waiting_reason`` of a run waiting for its concurrency key."""
    return f"concurrency key {key!r}: {running} of {maximum} runs running"
