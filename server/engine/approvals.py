"""Human approvals: list, read and decide the checkpoints and failure reviews steps wait
on. Deciding moves the step on in the same transaction (see
``server/storage/functions/60_approvals.sql``):

=====================  ==========================================================
kind                   decisions
=====================  ==========================================================
checkpoint_before      approve: the step is queued and runs (``input`` is merged over
                       its resolved input); reject: the step fails (and the run) or is
                       skipped, per the checkpoint's ``on_reject``
checkpoint_after       approve: the step succeeds with its output (or ``input`` as a
                       replacement output); reject: as above
failure_review         retry: one more attempt; skip: the step is skipped; fail: the
                       step and the run fail
input_required         approve: ``input`` is the answer, sent to the A2A agent's task
                       (same task and context ids) by the next attempt; reject: the
                       step fails (and the run)
budget                 approve (with ``budget_max_tokens`` / ``budget_max_cost_usd``):
                       the budget's limits are raised and the run goes on (refused
                       while the budget would stay exhausted); reject: the run fails
                       with BUDGET_EXCEEDED (``functions/65_budgets.sql``)
=====================  ==========================================================
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from podium.orchestration.v1 import approval_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.engine.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from podium.server.engine.paging import bounded_keyset_page, decode_keyset, page_size
from podium.server.engine.references import normalize_numbers
from podium.server.engine.requests import MAX_REQUEST_ID_LENGTH, parse_run_id, struct_violations
from podium.server.engine.sizes import DEFAULT_MAX_RESPONSE_BYTES, fit_approval
from podium.server.engine.storage_errors import storage_errors
from podium.server.engine.validation_policies import MAX_COST_USD, MAX_TOKENS
from podium.server.storage.approvals import ApprovalRow, ApprovalsRepository
from podium.server.telemetry.metrics import Metrics

__all__ = ["ApprovalService", "approval_to_proto"]

MAX_ACTOR_LENGTH = 256
MAX_COMMENT_LENGTH = 4096

_KINDS = {
    "checkpoint_before": approval_pb2.Approval.KIND_CHECKPOINT_BEFORE,
    "checkpoint_after": approval_pb2.Approval.KIND_CHECKPOINT_AFTER,
    "failure_review": approval_pb2.Approval.KIND_FAILURE_REVIEW,
    "input_required": approval_pb2.Approval.KIND_INPUT_REQUIRED,
    "budget": approval_pb2.Approval.KIND_BUDGET,
}
_STATES = {
    "pending": approval_pb2.Approval.STATE_PENDING,
    "decided": approval_pb2.Approval.STATE_DECIDED,
    "expired": approval_pb2.Approval.STATE_EXPIRED,
    "cancelled": approval_pb2.Approval.STATE_CANCELLED,
}
_STATE_NAMES = {value: name for name, value in _STATES.items()}
DECISIONS = {
    "approve": approval_pb2.DECISION_APPROVE,
    "reject": approval_pb2.DECISION_REJECT,
    "retry": approval_pb2.DECISION_RETRY,
    "skip": approval_pb2.DECISION_SKIP,
    "fail": approval_pb2.DECISION_FAIL,
}
"""Decision names (CLI, A2A answers) -> ``approval_pb2.Decision`` values."""
_DECISION_NAMES = {value: name for name, value in DECISIONS.items()}


def _ts(value: Any, target: Timestamp) -> None:
    if value is not None:
        target.FromDatetime(value)


def approval_to_proto(row: ApprovalRow, max_bytes: int | None = None) -> approval_pb2.Approval:
    """The API form of a stored approval; with ``max_bytes``, one that takes more
    leaves out its subject (``subject_omitted``)."""
    out = approval_pb2.Approval(
        id=str(row.id),
        organization_id=row.organization_id,
        run_id=str(row.run_id),
        step_id=row.step_id,
        kind=_KINDS.get(row.kind, approval_pb2.Approval.KIND_UNSPECIFIED),
        state=_STATES.get(row.state, approval_pb2.Approval.STATE_UNSPECIFIED),
        prompt=row.prompt,
        approvers=row.approvers,
        decision=DECISIONS.get(row.decision or "", approval_pb2.DECISION_UNSPECIFIED),
        actor=row.actor or "",
        comment=row.comment or "",
        conversation_id=str(row.conversation_id) if row.conversation_id else "",
    )
    if isinstance(row.subject, dict):
        out.subject.update(row.subject)
    _ts(row.created_at, out.create_time)
    _ts(row.expires_at, out.expire_time)
    _ts(row.decided_at, out.decide_time)
    if max_bytes is not None and isinstance(row.subject, dict):
        fit_approval(out, max_bytes, row.subject)
    return out


def _approval_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            "approval_id must be a UUID",
            violations=[FieldViolation(field="approval_id", description="not a UUID")],
        ) from None


class ApprovalService:
    """Use cases behind ListApprovals, GetApproval and DecideApproval."""

    def __init__(
        self,
        repository: ApprovalsRepository,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._repository = repository
        self.max_response_bytes = max_response_bytes
        """What one approval or page may take (``sizes.response_budget``)."""
        self.metrics = Metrics()

    def instrument(self, metrics: Metrics) -> None:
        """Record into the server's ``metrics`` instead of the private default."""
        self.metrics = metrics

    async def get(self, organization_id: str, approval_id: str) -> approval_pb2.Approval:
        """One approval of the organization."""
        aid = _approval_id(approval_id)
        async with storage_errors():
            row = await self._repository.get(organization_id, aid)
        if row is None:
            raise NotFound(
                f"approval {approval_id} not found",
                reason="APPROVAL_NOT_FOUND",
                metadata={"approval_id": approval_id},
            )
        return approval_to_proto(row, self.max_response_bytes)

    async def list(
        self, organization_id: str, request: pb.ListApprovalsRequest
    ) -> tuple[list[approval_pb2.Approval], str]:
        """A page of approvals, oldest first (pending only unless ``states`` says)."""
        size = page_size(request.page_size)
        states = sorted({_STATE_NAMES[s] for s in request.states if s in _STATE_NAMES})
        if len(states) != len(set(request.states)):
            raise InvalidArgument(
                "states holds an unknown state",
                violations=[FieldViolation(field="states", description="unknown state")],
            )
        run_id = parse_run_id(request.run_id) if request.run_id else None
        filters = {"states": states, "run": request.run_id}
        after = decode_keyset(request.page_token, filters)
        async with storage_errors():
            rows = await self._repository.list(
                organization_id,
                states=states or ["pending"],
                run_id=run_id,
                after=after,
                limit=size + 1,
            )
        return bounded_keyset_page(
            rows,
            size,
            filters,
            lambda row: approval_to_proto(row, self.max_response_bytes),
            self.max_response_bytes,
        )

    async def decide(
        self, organization_id: str, request: pb.DecideApprovalRequest
    ) -> approval_pb2.Approval:
        """Decide a pending approval; see the module docstring for what each decision
        does. Repeating a decision with the same ``request_id`` returns the approval;
        deciding a decided approval otherwise is FAILED_PRECONDITION."""
        violations: list[FieldViolation] = []
        aid: uuid.UUID | None = None
        try:
            aid = _approval_id(request.approval_id)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
        decision = _DECISION_NAMES.get(request.decision)
        if decision is None:
            violations.append(
                FieldViolation(
                    field="decision",
                    description="required: DECISION_APPROVE or DECISION_REJECT for a "
                    "checkpoint; DECISION_RETRY, DECISION_SKIP or DECISION_FAIL for a "
                    "failure review",
                )
            )
        for name, limit in (
            ("actor", MAX_ACTOR_LENGTH),
            ("comment", MAX_COMMENT_LENGTH),
            ("request_id", MAX_REQUEST_ID_LENGTH),
        ):
            if len(getattr(request, name)) > limit:
                violations.append(
                    FieldViolation(field=name, description=f"at most {limit} characters")
                )
        extra = _extra_input(request.input, violations)
        budget_tokens, budget_cost = _budget_limits(request, violations)
        if violations:
            raise InvalidArgument("DecideApproval request is invalid", violations=violations)
        assert aid is not None and decision is not None
        if budget_tokens is not None or budget_cost is not None:
            async with storage_errors():
                found = await self._repository.get(organization_id, aid)
            if found is not None and found.kind != "budget":
                raise InvalidArgument(
                    f"approval {request.approval_id} is a {found.kind} approval: only a "
                    "budget approval takes new budget limits",
                    violations=[
                        FieldViolation(field=name, description="only for a budget approval")
                        for name in ("budget_max_tokens", "budget_max_cost_usd")
                        if request.HasField(name)
                    ],
                )
        async with storage_errors():
            status = await self._repository.decide(
                organization_id,
                aid,
                decision=decision,
                actor=request.actor,
                comment=request.comment,
                request_id=request.request_id or None,
                input=extra,
                budget_max_tokens=budget_tokens,
                budget_max_cost_usd=budget_cost,
            )
            row = await self._repository.get(organization_id, aid)
        meta = {"approval_id": request.approval_id}
        if status == "not_found" or row is None:
            raise NotFound(
                f"approval {request.approval_id} not found",
                reason="APPROVAL_NOT_FOUND",
                metadata=meta,
            )
        if status.startswith("already_"):
            state = status.removeprefix("already_")
            raise FailedPrecondition(
                f"approval {request.approval_id} is already {state}"
                + (f" ({row.decision} by {row.actor or 'unknown'})" if row.decision else ""),
                reason="APPROVAL_NOT_PENDING",
                metadata={**meta, "state": state},
            )
        if status == "invalid_decision":
            allowed = (
                "DECISION_RETRY, DECISION_SKIP or DECISION_FAIL"
                if row.kind == "failure_review"
                else "DECISION_APPROVE or DECISION_REJECT"
            )
            raise InvalidArgument(
                f"a {row.kind} approval takes {allowed}",
                reason="INVALID_DECISION",
                violations=[FieldViolation(field="decision", description=f"expected {allowed}")],
            )
        if status == "forbidden":
            raise PermissionDenied(
                f"{request.actor or 'an anonymous actor'} may not decide approval "
                f"{request.approval_id}; approvers: {', '.join(row.approvers)}",
                reason="NOT_AN_APPROVER",
                metadata=meta,
            )
        if status == "budget_exceeded":
            raise FailedPrecondition(
                f"approving {request.approval_id} leaves the budget exhausted: give a "
                "budget_max_tokens / budget_max_cost_usd above the usage "
                f"({_usage_text(row.subject)}), or reject it",
                reason="BUDGET_STILL_EXCEEDED",
                metadata=meta,
            )
        if status == "ok":
            await self._count_run_end(row.run_id)
        return approval_to_proto(row, self.max_response_bytes)

    async def _count_run_end(self, run_id: uuid.UUID) -> None:
        """A run waiting on an approval is running, so a decision that leaves it finished
        is the one that ended it: count it like a completion does."""
        try:
            async with storage_errors():
                end = await self._repository.run_end(run_id)
        except Exception:  # metrics must not fail a recorded decision
            return
        if end is not None and end[0] in ("succeeded", "failed", "cancelled"):
            state, started, ended = end
            seconds = (ended - started).total_seconds() if started and ended else None
            self.metrics.run_ended(state, seconds)

    async def expire(self, limit: int = 100) -> int:
        """Apply the default action of expired approvals; returns how many."""
        return await self._repository.expire(limit)


def _extra_input(
    struct: struct_pb2.Struct, violations: list[FieldViolation]
) -> dict[str, Any] | None:
    if not struct.fields:
        return None
    problems = struct_violations(struct, "input")
    if problems:
        violations.extend(problems)
        return None
    value: dict[str, Any] = normalize_numbers(json_format.MessageToDict(struct))
    return value


def _budget_limits(
    request: pb.DecideApprovalRequest, violations: list[FieldViolation]
) -> tuple[int | None, float | None]:
    """The new limits of a budget approval (None: not given), checked."""
    tokens: int | None = None
    cost: float | None = None
    if request.HasField("budget_max_tokens"):
        tokens = request.budget_max_tokens
        if not 0 <= tokens <= MAX_TOKENS:
            violations.append(
                FieldViolation(field="budget_max_tokens", description=f"must be 0 to {MAX_TOKENS}")
            )
    if request.HasField("budget_max_cost_usd"):
        cost = request.budget_max_cost_usd
        if not (math.isfinite(cost) and 0 <= cost <= MAX_COST_USD):
            violations.append(
                FieldViolation(
                    field="budget_max_cost_usd",
                    description=f"must be a finite number from 0 to {MAX_COST_USD:g}",
                )
            )
    return tokens, cost


def _usage_text(subject: Any) -> str:
    if not isinstance(subject, dict):
        return "unknown"
    return f"{subject.get('used_tokens', 0)} tokens, {subject.get('used_cost_usd', 0)} USD"
