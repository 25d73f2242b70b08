"""Authentication and authorization of OrchestrationService and A2AService calls.

:class:`AuthInterceptor` checks every call of ``podium.orchestration.v1.OrchestrationService``
and of ``lf.a2a.v1.A2AService`` (Podium as an A2A agent; Health and reflection are not
checked) before the servicer runs:

1. the caller's :class:`Principal` comes from the ``authorization: Bearer <key>``
   metadata (an API key, checked by the engine's
   :class:`~podium.server.engine.api_keys.ApiKeyService`, or a step credential
   ``pds_...`` an agent received with its task, checked by
   :class:`~podium.server.engine.step_credentials.StepCredentials` on every call: role
   ``step``, scoped to its step attempt), or, without a bearer key,
   from a verified client certificate listed in ``PODIUM_MTLS_IDENTITIES``
   (:func:`certificate_principal`);
2. none, a malformed, unknown or revoked key: UNAUTHENTICATED with an ``ErrorInfo``
   reason (``API_KEY_MISSING``, ``API_KEY_MALFORMED``, ``API_KEY_INVALID``,
   ``API_KEY_REVOKED``, ``STEP_CREDENTIAL_INVALID``);
3. a role without the RPC in :data:`PERMISSIONS`: PERMISSION_DENIED (``ROLE_NOT_ALLOWED``);
4. otherwise the principal is set in :data:`current_principal` for the handler, and the
   servicer scopes the call to the principal's organization (:func:`organization_of`).

Keys never appear in a message, a log line or a metric: refusals name the reason, never
the key. With authentication off (``Settings.auth_required`` false) the interceptor is
installed with ``steps_only``: it checks only calls that bring a step credential (so
runs agents start stay linked to their steps), and every other call acts for
``PODIUM_DEFAULT_ORGANIZATION``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from a2a.types import a2a_pb2
from google.rpc import code_pb2

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.api.errors import abort, abort_code
from podium.server.engine.api_keys import Check
from podium.server.engine.engine import Engine
from podium.server.engine.errors import EngineError
from podium.server.engine.step_credentials import StepAttemptRef, is_step_credential

__all__ = [
    "PERMISSIONS",
    "AuthInterceptor",
    "Principal",
    "certificate_principal",
    "current_principal",
    "organization_of",
    "step_scope",
]

log = logging.getLogger(__name__)

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

_SERVICE = pb.DESCRIPTOR.services_by_name["OrchestrationService"].full_name
_A2A_SERVICE = a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].full_name
_PREFIXES = (f"/{_SERVICE}/", f"/{_A2A_SERVICE}/")


@dataclass(frozen=True)
class Principal:
    """Who is calling: an organization and a role. ``via`` says how it was proven
    (``api_key``, ``step_credential`` or ``certificate``); ``key_prefix`` names the key
    (never its secret); ``step`` is the attempt of a step credential."""

    organization_id: str
    role: str
    via: str
    key_prefix: str = ""
    step: StepAttemptRef | None = None


current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "podium_principal", default=None
)
"""The principal of the call being handled (set by :class:`AuthInterceptor`)."""


def organization_of(default: str) -> str:
    """The calling principal's organization, or ``default`` when authentication is off."""
    principal = current_principal.get()
    return default if principal is None else principal.organization_id


def step_scope() -> StepAttemptRef | None:
    """The step attempt of a call made with a step credential (its runs are child runs
    of that step, and it sees only those), None for every other caller."""
    principal = current_principal.get()
    return None if principal is None else principal.step


_VIEWER = frozenset({"viewer", "operator", "admin"})
_OPERATOR = frozenset({"operator", "admin"})
_ADMIN = frozenset({"admin"})
_AGENT = frozenset({"agent"})
_STEP = frozenset({"step"})

PERMISSIONS: Mapping[str, frozenset[str]] = {
    # Reading: every role but agent reads everything of its organization; a step
    # credential (role step) only the child runs of its step (the servicer scopes it).
    "GetDefinition": _VIEWER | _AGENT,
    "ListDefinitions": _VIEWER,
    "ValidateDefinition": _VIEWER | _AGENT,
    "GetRun": _VIEWER | _AGENT | _STEP,
    "GetRunPayload": _VIEWER | _AGENT | _STEP,
    "GetUsage": _VIEWER,
    "ListRuns": _VIEWER | _AGENT | _STEP,
    "WatchRun": _VIEWER | _AGENT | _STEP,
    "WatchRuns": _VIEWER,
    "ListRunEvents": _VIEWER | _AGENT | _STEP,
    "ListDeliverables": _VIEWER | _AGENT,
    "ListApprovals": _VIEWER,
    "GetApproval": _VIEWER,
    "ListAgents": _VIEWER,
    "GetAgent": _VIEWER,
    "ListWebhookDeliveries": _VIEWER,
    "GetSchedule": _VIEWER,
    "GetRoutingPolicy": _VIEWER,
    "ListSchedules": _VIEWER,
    # Operating runs: operators (and agents for starting runs and sending events).
    "StartRun": _OPERATOR | _AGENT | _STEP,
    "CancelRun": _OPERATOR,
    "ContinueRun": _OPERATOR,
    "ResumeRun": _OPERATOR,
    "ForkRun": _OPERATOR,
    "DecideApproval": _OPERATOR,
    "SendEvent": _OPERATOR | _AGENT,
    "CreateSchedule": _OPERATOR,
    "PauseSchedule": _OPERATOR,
    "ResumeSchedule": _OPERATOR,
    "DeleteSchedule": _OPERATOR,
    "InvalidateCache": _OPERATOR,
    # Configuring the organization: admins.
    "CreateDefinition": _ADMIN,
    "ArchiveDefinition": _ADMIN,
    "RegisterAgent": _ADMIN,
    "DeregisterAgent": _ADMIN,
    "UpdateRoutingPolicy": _ADMIN,
    # lf.a2a.v1.A2AService (Podium as an A2A agent, api/a2a.py): a task is a run, so
    # reading tasks is reading runs and cancelling one is CancelRun; a message starts a
    # run (StartRun's roles), and one that continues, decides or resumes a task also
    # needs ContinueRun's, DecideApproval's or ResumeRun's (checked by the handler).
    "GetExtendedAgentCard": _VIEWER | _AGENT,
    "GetTask": _VIEWER | _AGENT,
    "ListTasks": _VIEWER | _AGENT,
    "SubscribeToTask": _VIEWER | _AGENT,
    "SendMessage": _OPERATOR | _AGENT,
    "SendStreamingMessage": _OPERATOR | _AGENT,
    "CancelTask": _OPERATOR,
    # Push notifications are not offered (PushNotificationNotSupported); roles as if they were.
    "CreateTaskPushNotificationConfig": _OPERATOR | _AGENT,
    "GetTaskPushNotificationConfig": _VIEWER | _AGENT,
    "ListTaskPushNotificationConfigs": _VIEWER | _AGENT,
    "DeleteTaskPushNotificationConfig": _OPERATOR | _AGENT,
}
"""RPC name -> the roles that may call it. An RPC missing here is refused to every role
(``tests/unit/test_auth.py`` checks that every RPC of the contract is listed)."""


def bearer_key(metadata: Any) -> tuple[str | None, int]:
    """The key of the ``authorization: Bearer <key>`` metadata and how many
    ``authorization`` entries there were."""
    values = [
        value for key, value in metadata or () if key == "authorization" and isinstance(value, str)
    ]
    if len(values) != 1:
        return None, len(values)
    scheme, _, key = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return None, 1
    return key.strip(), 1


def certificate_principal(
    auth_context: Mapping[str, Any], identities: Mapping[str, tuple[str, str]]
) -> Principal | None:
    """The principal of a verified client certificate, from ``context.auth_context()``:
    its ``x509_common_name`` looked up in ``PODIUM_MTLS_IDENTITIES`` (CN -> organization,
    role). Only TLS connections count (``transport_security_type`` ``ssl``); the server
    must require and verify client certificates for the name to be trusted."""
    if not identities:
        return None
    security = auth_context.get("transport_security_type") or []
    if b"ssl" not in security:
        return None
    for raw in auth_context.get("x509_common_name") or []:
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        grant = identities.get(name)
        if grant is not None:
            return Principal(organization_id=grant[0], role=grant[1], via="certificate")
    return None


_MISSING = (
    "this call needs an API key: send the metadata 'authorization: Bearer <key>' "
    "(podium keys create makes one; clients take --api-key or PODIUM_API_KEY)"
)
_STEP_INVALID = "STEP_CREDENTIAL_INVALID"
_REFUSALS = {
    Check.MALFORMED: "the API key is malformed (expected pdm_<prefix>_<secret>)",
    Check.UNKNOWN: "the API key is not valid",
    Check.REVOKED: "the API key has been revoked",
}


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates and authorizes OrchestrationService calls (module docstring)."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        identities: Mapping[str, tuple[str, str]] | None = None,
        *,
        steps_only: bool = False,
    ) -> None:
        self._engine = engine
        self._identities = identities or {}
        self._steps_only = steps_only

    async def _principal(self, context: Any, method: str) -> Principal:
        try:
            engine = self._engine()  # UNAVAILABLE while starting, key or not
        except EngineError as exc:
            await abort(context, exc)
        key, count = bearer_key(context.invocation_metadata())
        if key is None:
            principal = None
            if count == 0:
                principal = certificate_principal(context.auth_context(), self._identities)
            if principal is None:
                reason, message = (
                    ("API_KEY_MISSING", _MISSING)
                    if count == 0
                    else (
                        "API_KEY_MALFORMED",
                        "expected exactly one 'authorization: Bearer <key>' metadata entry",
                    )
                )
                await abort_code(context, code_pb2.UNAUTHENTICATED, message, reason)
        elif is_step_credential(key):
            try:
                step = await engine.step_credentials.check(key)
            except EngineError as exc:
                await abort(context, exc)
            if step is None:
                log.info("call refused", extra={"method": method, "reason": _STEP_INVALID})
                await abort_code(
                    context,
                    code_pb2.UNAUTHENTICATED,
                    "the step credential is not valid: its step attempt has ended, or it "
                    "was never issued",
                    _STEP_INVALID,
                )
            principal = Principal(
                organization_id=step.organization_id, role="step", via="step_credential", step=step
            )
        else:
            try:
                checked = await engine.api_keys.check(key)
            except EngineError as exc:
                await abort(context, exc)
            if checked.record is None:
                log.info("call refused", extra={"method": method, "reason": checked.check.value})
                await abort_code(
                    context,
                    code_pb2.UNAUTHENTICATED,
                    _REFUSALS[checked.check],
                    checked.check.value,
                )
            record = checked.record
            principal = Principal(
                organization_id=record.organization_id,
                role=record.role,
                via="api_key",
                key_prefix=record.prefix,
            )
        assert principal is not None
        if principal.role not in PERMISSIONS.get(method, frozenset()):
            await abort_code(
                context,
                code_pb2.PERMISSION_DENIED,
                f"the role {principal.role!r} may not call {method}",
                "ROLE_NOT_ALLOWED",
            )
        return principal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method
        if handler is None or not full_method.startswith(_PREFIXES):
            return handler  # Health, reflection and unknown methods are not checked.
        if self._steps_only:  # authentication off: only step credentials are checked
            key, _ = bearer_key(handler_call_details.invocation_metadata)
            if key is None or not is_step_credential(key):
                return handler
        method = full_method.rpartition("/")[2]
        deserializer = handler.request_deserializer
        serializer = handler.response_serializer
        if handler.request_streaming:  # pragma: no cover - no such RPC in the contract
            raise RuntimeError(f"{full_method}: client streaming is not authenticated")
        if handler.response_streaming:
            stream: Any = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                # Each call runs in a task of its own: the value ends with the call.
                current_principal.set(await self._principal(context, method))
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=deserializer, response_serializer=serializer
            )
        unary: Any = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            current_principal.set(await self._principal(context, method))
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=deserializer, response_serializer=serializer
        )
