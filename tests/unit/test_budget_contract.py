"""The contract says what budgets enforce: the proto comments name the limits the
validation applies, and no budget field is documented as not supported any more."""

from __future__ import annotations

import re
from pathlib import Path

from podium.orchestration.v1 import approval_pb2, event_pb2
from podium.server.engine.approvals import _KINDS
from podium.server.engine.validation_policies import MAX_COST_USD, MAX_TOKENS

PROTOS = Path(__file__).resolve().parents[2] / "protos" / "podium" / "orchestration" / "v1"


def _message(file: str, name: str) -> str:
    text = (PROTOS / file).read_text(encoding="utf-8")
    start = text.index(f"message {name} {{")
    # The comment above the message and its body, up to the next top-level message.
    comment_start = text.rfind("\n\n", 0, start)
    end = text.find("\nmessage ", start + 1)
    return text[comment_start : end if end > 0 else None]


def test_budget_policy_comments_state_the_enforced_limits() -> None:
    budget = _message("definition.proto", "BudgetPolicy")
    execution = _message("definition.proto", "ExecutionPolicy")
    assert "not supported" not in (budget + execution).lower()
    assert MAX_TOKENS == 10**15 and "At most 10^15" in budget
    assert MAX_COST_USD == 1e9 and "at most 10^9" in budget
    for promise in ("paused", "BUDGET_EXCEEDED", "run.budget_exceeded", "in flight"):
        assert promise in budget, promise


def test_decide_approval_budget_fields_state_the_enforced_limits() -> None:
    decide = _message("orchestration_service.proto", "DecideApprovalRequest")
    assert re.search(r"budget_max_tokens = \d+;", decide)
    assert "0 to 10^15" in decide and "0 to 10^9" in decide


def test_every_approval_kind_and_budget_event_is_mapped() -> None:
    names = {v.name for v in approval_pb2.Approval.Kind.DESCRIPTOR.values if v.number}
    assert {f"KIND_{k.upper()}" for k in _KINDS} == names
    types = event_pb2.RunEvent.Type.DESCRIPTOR.values_by_name
    assert "TYPE_RUN_BUDGET_EXCEEDED" in types and "TYPE_RUN_BUDGET_RAISED" in types
