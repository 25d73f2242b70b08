"""The generic half of definition validation: the reporting of field violations (with
their path prefix and the cap on how many come back) and the checks of single fields:
names, texts, numbers, enums. ``validation_policies.py`` and ``validation_steps.py``
build on :class:`FieldChecker`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.descriptor import EnumDescriptor
from google.rpc.error_details_pb2 import BadRequest

from podium.server.engine.requests import text_problem

__all__ = ["FieldChecker", "ValidationLimits", "format_number"]

FieldViolation = BadRequest.FieldViolation

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")

MAX_NAME = 128
MAX_DESCRIPTION = 2000


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


def describe_name_rule(what: str) -> str:
    return (
        f"{what} must be 1 to {MAX_NAME} characters of lowercase letters, digits, "
        "'_', '.' and '-', starting with a letter or digit"
    )


class FieldChecker:
    """Collects the violations of one definition; the generic checks of single fields."""

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
        if len(value) > MAX_NAME or not NAME_PATTERN.fullmatch(value):
            self.add(path, f"{describe_name_rule(what)}; got '{value[:MAX_NAME]}'", "INVALID_NAME")
            return False
        return True

    def check_text(self, path: str, value: str, maximum: int) -> None:
        problem = text_problem(value, maximum)
        if problem is not None:
            self.add(path, *problem)

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
            self.add(path, f"{rule} (got {format_number(value)})", "OUT_OF_RANGE")
            return False
        if maximum is not None and value > maximum:
            self.add(
                path,
                f"must be at most {format_number(maximum)} (got {format_number(value)})",
                "OUT_OF_RANGE",
            )
            return False
        return True

    def check_enum(self, path: str, value: int, enum: EnumDescriptor) -> None:
        if value not in enum.values_by_number:
            allowed = ", ".join(v.name for v in enum.values if v.number != 0)
            self.add(path, f"unknown value {value}; expected one of {allowed}", "INVALID_ENUM")


def format_number(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
