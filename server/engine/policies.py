"""Routing policies: which agents and skills an organization's runs may use, and which
agents need a human approval before each step that calls them.

An organization's :class:`~podium.orchestration.v1.policy_pb2.RoutingPolicy`
(GetRoutingPolicy / UpdateRoutingPolicy, table ``routing_policies``) and a definition's
``execution.routing`` are both allow/deny lists: a name must be on the allow list when it
is not empty, and on no deny list. A definition can only narrow its organization's
policy, since a step must pass both.

They are checked twice:

- at validation (CreateDefinition, ValidateDefinition, StartRun of a saved definition or
  an inline plan, against the current policy): a step whose agent or skill is refused is
  a field violation ``steps[i].agent`` / ``steps[i].skill`` (reason ``POLICY_DENIED``);
  unknown agents stay allowed (they may be registered later);
- at the claim (``podium_claim_steps_of``, ``functions/40_claim.sql``): a skill step is
  routed only to an agent that the organization's stored policy and the definition's
  rules (copied into the step's spec as ``routing``) allow; when every agent offering
  the skill is refused, the claim leaves the step without an agent and names them in
  the spec it returns (``refused_agents``);
- before each dispatch (:meth:`RoutingPolicies.gate`, called by the executor): the
  step's agent (for a skill step, the agent the claim routed it to) and skill against
  the current policy and the definition's rules, and a skill step whose agents were all
  refused at the claim. A refused step fails with ``POLICY_DENIED``, not retried; a
  step whose agent is in ``approval_agents`` parks on a ``checkpoint_before`` approval
  first.

Replicas cache each organization's policy for ``PODIUM_ROUTING_POLICY_CACHE_SECONDS``;
the replica that takes an update sees it at once, the others within that time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from podium.orchestration.v1 import definition_pb2, policy_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.engine.errors import FieldViolation, InvalidArgument
from podium.server.engine.lru import LRUCache
from podium.server.engine.storage_errors import storage_errors
from podium.server.engine.validation_fields import MAX_NAME
from podium.server.engine.validation_policies import ROUTING_LISTS, name_list_violations
from podium.server.storage.policies import PolicyRecord, PolicyRepository

__all__ = ["DispatchVerdict", "RoutingPolicies", "Rules"]

_CACHED_ORGANIZATIONS = 10_000


@dataclass(frozen=True, slots=True)
class Rules:
    """Allow/deny lists of agents and skills; ``source`` names them in refusals."""

    source: str
    allowed_agents: frozenset[str] = frozenset()
    denied_agents: frozenset[str] = frozenset()
    allowed_skills: frozenset[str] = frozenset()
    denied_skills: frozenset[str] = frozenset()

    @classmethod
    def of(cls, source: str, lists: Any) -> Rules:
        """From anything with the four list attributes (a record, a proto)."""
        return cls(
            source,
            frozenset(lists.allowed_agents),
            frozenset(lists.denied_agents),
            frozenset(lists.allowed_skills),
            frozenset(lists.denied_skills),
        )

    @classmethod
    def from_json(cls, source: str, data: Mapping[str, Any]) -> Rules:
        """From the protobuf JSON of RoutingRules (a step spec's ``routing``)."""
        return cls(
            source,
            frozenset(data.get("allowed_agents", ())),
            frozenset(data.get("denied_agents", ())),
            frozenset(data.get("allowed_skills", ())),
            frozenset(data.get("denied_skills", ())),
        )

    def refusal(self, kind: str, name: str) -> str | None:
        """Why ``name`` (an ``agent`` or ``skill``) is refused, or None."""
        allowed, denied = (
            (self.allowed_agents, self.denied_agents)
            if kind == "agent"
            else (self.allowed_skills, self.denied_skills)
        )
        if name in denied:
            return f"{kind} '{name}' is denied by {self.source} (denied_{kind}s)"
        if allowed and name not in allowed:
            return f"{kind} '{name}' is not on the allowed_{kind}s list of {self.source}"
        return None


def _is_empty(rules: definition_pb2.RoutingRules) -> bool:
    return not (
        rules.allowed_agents or rules.denied_agents or rules.allowed_skills or rules.denied_skills
    )


@dataclass(frozen=True, slots=True)
class DispatchVerdict:
    """What the policy says about a claimed step: refused (``refusal``), needs an
    approval first (``approval``), or neither."""

    refusal: str | None = None
    approval: bool = False


_ALLOWED = DispatchVerdict()


def _policy_to_proto(record: PolicyRecord) -> policy_pb2.RoutingPolicy:
    policy = policy_pb2.RoutingPolicy(
        allowed_agents=record.allowed_agents,
        denied_agents=record.denied_agents,
        allowed_skills=record.allowed_skills,
        denied_skills=record.denied_skills,
        approval_agents=record.approval_agents,
        revision=record.revision,
    )
    if record.updated_at is not None:
        ts = Timestamp()
        ts.FromDatetime(record.updated_at)
        policy.update_time.CopyFrom(ts)
    return policy


class RoutingPolicies:
    """The routing policies of organizations: the RPCs, the validation of a plan's
    steps and the check before dispatch (module docstring)."""

    def __init__(self, repository: PolicyRepository, cache_seconds: float) -> None:
        self._repository = repository
        self._cache_seconds = cache_seconds
        self._cache: LRUCache[str, tuple[float, PolicyRecord]] = LRUCache(_CACHED_ORGANIZATIONS)

    # -- the RPCs

    async def get(self, organization_id: str) -> policy_pb2.RoutingPolicy:
        """The organization's policy, read from the database."""
        async with storage_errors():
            record = await self._repository.get(organization_id)
        self._remember(organization_id, record)
        return _policy_to_proto(record)

    async def update(
        self, organization_id: str, request: pb.UpdateRoutingPolicyRequest
    ) -> policy_pb2.RoutingPolicy:
        """Replace the lists named by ``update_mask`` (all five when it is empty)."""
        violations: list[FieldViolation] = []
        paths = list(request.update_mask.paths)
        for i, path in enumerate(paths):
            if path not in ROUTING_LISTS:
                violations.append(
                    FieldViolation(
                        field=f"update_mask.paths[{i}]",
                        description=f"unknown or output-only field '{path[:MAX_NAME]}'; "
                        f"expected one of {', '.join(ROUTING_LISTS)}",
                        reason="INVALID_UPDATE_MASK",
                    )
                )
        names = [p for p in ROUTING_LISTS if p in paths] if paths else list(ROUTING_LISTS)
        violations.extend(
            FieldViolation(field=field, description=description, reason=reason)
            for field, description, reason in name_list_violations(request.policy, "policy", names)
        )
        if violations:
            raise InvalidArgument(
                "UpdateRoutingPolicy request is invalid",
                reason="INVALID_ROUTING_POLICY",
                violations=violations,
            )
        lists: dict[str, Sequence[str] | None] = {
            name: list(dict.fromkeys(getattr(request.policy, name))) for name in names
        }
        async with storage_errors():
            record = await self._repository.put(organization_id, lists)
        self._remember(organization_id, record)
        return _policy_to_proto(record)

    # -- the cached policy

    def _remember(self, organization_id: str, record: PolicyRecord) -> None:
        self._cache.put(organization_id, (time.monotonic() + self._cache_seconds, record))

    async def current(self, organization_id: str) -> PolicyRecord:
        """The organization's policy, cached for ``cache_seconds``."""
        cached = self._cache.get(organization_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with storage_errors():
            record = await self._repository.get(organization_id)
        self._remember(organization_id, record)
        return record

    # -- validation

    async def plan_violations(
        self, organization_id: str, plan: definition_pb2.Definition, prefix: str = ""
    ) -> list[FieldViolation]:
        """A violation per agent or skill step of ``plan`` that the organization's
        current policy or the plan's own ``execution.routing`` refuses."""
        record = await self.current(organization_id)
        rules = [Rules.of("the organization's routing policy", record)]
        if not _is_empty(plan.execution.routing):
            rules.append(Rules.of("the definition's execution.routing", plan.execution.routing))
        if record.revision == 0 and len(rules) == 1:
            return []  # nothing to refuse: no step is looked at
        at = f"{prefix}." if prefix else ""
        violations = []
        for index, step in enumerate(plan.steps):
            kind = step.WhichOneof("target")
            if kind not in ("agent", "skill"):
                continue
            name = step.agent if kind == "agent" else step.skill
            for r in rules:
                refusal = r.refusal(kind, name)
                if refusal is not None:
                    violations.append(
                        FieldViolation(
                            field=f"{at}steps[{index}].{kind}",
                            description=f"step '{step.id}': {refusal}",
                            reason="POLICY_DENIED",
                        )
                    )
                    break
        return violations

    # -- dispatch

    async def gate(
        self,
        organization_id: str,
        agent: str | None,
        skill: str | None,
        routing: Mapping[str, Any] | None,
        refused_agents: Sequence[str] | None = None,
    ) -> DispatchVerdict:
        """The verdict on dispatching a step to ``agent`` (None: no agent was found) for
        ``skill`` (a skill step) under the current policy and the definition's rules;
        ``refused_agents``: the agents offering the skill, all refused at the claim."""
        record = await self.current(organization_id)
        if record.revision == 0 and not routing and not refused_agents:
            return _ALLOWED
        rules = [Rules.of("the organization's routing policy", record)]
        if routing:
            rules.append(Rules.from_json("the definition's execution.routing", routing))
        for r in rules:
            refusal = r.refusal("skill", skill) if skill else None
            if refusal is None and agent:
                refusal = r.refusal("agent", agent)
                if refusal is not None and skill:
                    refusal = f"skill '{skill}' was routed to a refused agent: {refusal}"
            if refusal is not None:
                return DispatchVerdict(refusal=refusal)
        if refused_agents and not agent:
            reasons = (_agent_refusal(rules, name) for name in refused_agents)
            return DispatchVerdict(
                refusal=f"no agent offering skill '{skill}' is allowed: {'; '.join(reasons)}"
            )
        return DispatchVerdict(approval=bool(agent) and agent in record.approval_agents)


def _agent_refusal(rules: Sequence[Rules], agent: str) -> str:
    """Why ``agent`` is refused by the first of ``rules`` that refuses it; the claim's
    word when this replica's cached policy does not (yet) refuse it."""
    for r in rules:
        refusal = r.refusal("agent", agent)
        if refusal is not None:
            return refusal
    return f"agent '{agent}' was refused by the routing policy when the step was claimed"
