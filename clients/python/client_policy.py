"""The routing policy methods of :class:`~podium.client.client.PodiumClient` (a mixin,
kept apart so the client module stays readable)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import policy_pb2

if TYPE_CHECKING:
    from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

__all__ = ["POLICY_LISTS", "PolicyMethods"]

POLICY_LISTS = (
    "allowed_agents",
    "denied_agents",
    "allowed_skills",
    "denied_skills",
    "approval_agents",
)
"""The lists of a routing policy."""


class PolicyMethods:
    """GetRoutingPolicy and UpdateRoutingPolicy."""

    _stub: pb_grpc.OrchestrationServiceAsyncStub

    async def _unary(
        self, method: Callable[..., Any], request: Message, timeout: float | None
    ) -> Any:
        raise NotImplementedError  # PodiumClient's

    async def get_routing_policy(self, *, timeout: float | None = None) -> policy_pb2.RoutingPolicy:
        """The organization's routing policy (empty lists when never set)."""
        response = await self._unary(
            self._stub.GetRoutingPolicy, pb.GetRoutingPolicyRequest(), timeout
        )
        return response.policy  # type: ignore[no-any-return]

    async def update_routing_policy(
        self,
        *,
        allowed_agents: Sequence[str] | None = None,
        denied_agents: Sequence[str] | None = None,
        allowed_skills: Sequence[str] | None = None,
        denied_skills: Sequence[str] | None = None,
        approval_agents: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> policy_pb2.RoutingPolicy:
        """Replace the lists given (an empty list clears one; None keeps it); returns
        the policy. Admins only. ValueError when no list is given."""
        given = {
            "allowed_agents": allowed_agents,
            "denied_agents": denied_agents,
            "allowed_skills": allowed_skills,
            "denied_skills": denied_skills,
            "approval_agents": approval_agents,
        }
        lists = {name: list(value) for name, value in given.items() if value is not None}
        if not lists:
            raise ValueError(f"give at least one of {', '.join(POLICY_LISTS)}")
        request = pb.UpdateRoutingPolicyRequest(
            update_mask=field_mask_pb2.FieldMask(paths=list(lists))
        )
        for name, values in lists.items():
            getattr(request.policy, name).extend(values)
        response = await self._unary(self._stub.UpdateRoutingPolicy, request, timeout)
        return response.policy  # type: ignore[no-any-return]
