"""Validation of a definition's policies: labels, the execution policy (concurrency,
concurrency keys, priority, budget, caching, timeouts), failure policies and
checkpoints."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.keys import (
    MAX_PER_KEY,
    MAX_PRIORITY,
    key_template_violations,
)
from podium.server.engine.references import join_location
from podium.server.engine.validation_fields import (
    MAX_NAME,
    NAME_PATTERN,
    FieldChecker,
    describe_name_rule,
    format_number,
)

__all__ = [
    "MAX_COST_USD",
    "MAX_ROUTING_NAMES",
    "MAX_TOKENS",
    "ROUTING_LISTS",
    "PolicyChecker",
    "name_list_violations",
]

LABEL_KEY_PATTERN = re.compile(r"[a-z0-9_./-]+")

MAX_TOKENS = 10**15
"""Largest budget in tokens (and new limit of a budget approval)."""
MAX_COST_USD = 1e9
"""Largest budget in US dollars."""

MAX_ROUTING_NAMES = 1000
"""Most names in one list of ``execution.routing`` (and of a RoutingPolicy)."""

_MAX_LABELS = 64
_MAX_LABEL_KEY = 63
_MAX_LABEL_VALUE = 256


ROUTING_LISTS = (
    "allowed_agents",
    "denied_agents",
    "allowed_skills",
    "denied_skills",
    "approval_agents",
)
"""The lists of a RoutingPolicy; a definition's RoutingRules has the first four."""


def name_list_violations(
    message: Any, path: str, fields: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(field, description, reason) per problem of the name lists ``fields`` of
    ``message`` (routing rules or a policy): too many names, or a name that is not a
    valid agent or skill name."""
    found: list[tuple[str, str, str]] = []
    for field in fields:
        names = getattr(message, field)
        at = f"{path}.{field}"
        if len(names) > MAX_ROUTING_NAMES:
            found.append((at, f"at most {MAX_ROUTING_NAMES} names (got {len(names)})", "TOO_MANY"))
            continue
        what = "skill name" if "skill" in field else "agent name"
        for i, name in enumerate(names):
            if not name or len(name) > MAX_NAME or not NAME_PATTERN.fullmatch(name):
                rule = describe_name_rule(what)
                found.append((f"{at}[{i}]", f"{rule}; got '{name[:MAX_NAME]}'", "INVALID_NAME"))
    return found


def _quote_key(key: str) -> str:
    return join_location("", key)


class PolicyChecker(FieldChecker):
    """The checks of a definition's policies (labels, execution, failure, checkpoint)."""

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
        if concurrency.key:
            for path, description, reason in key_template_violations(
                concurrency.key, "execution.concurrency.key"
            ):
                self.add(path, description, reason)
        for field in ("max_runs_per_key", "max_steps_per_key"):
            value = getattr(concurrency, field)
            path = f"execution.concurrency.{field}"
            if self.check_number(path, value, maximum=MAX_PER_KEY, rule="must not be negative"):
                if value and not concurrency.key:
                    self.add(path, f"{field} needs execution.concurrency.key", "KEY_REQUIRED")
        self.check_number(
            "execution.priority", execution.priority, maximum=MAX_PRIORITY, rule="must be 0 to 9"
        )
        budget = execution.budget
        self.check_number("execution.budget.max_tokens", budget.max_tokens, maximum=MAX_TOKENS)
        self.check_number(
            "execution.budget.max_cost_usd", budget.max_cost_usd, maximum=MAX_COST_USD
        )
        self.check_enum(
            "execution.budget.on_exceed",
            budget.on_exceed,
            definition_pb2.BudgetPolicy.OnExceed.DESCRIPTOR,
        )
        self.check_number("execution.caching.ttl_seconds", execution.caching.ttl_seconds)
        self.check_number(
            "execution.default_timeout_seconds",
            execution.default_timeout_seconds,
            maximum=self.limits.max_timeout_seconds,
        )
        for path, description, reason in name_list_violations(
            execution.routing, "execution.routing", ROUTING_LISTS[:4]
        ):
            self.add(path, description, reason)

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
                    f"must be at least initial_seconds ({format_number(backoff.initial_seconds)}); "
                    f"got {format_number(backoff.max_seconds)}",
                    "OUT_OF_RANGE",
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
