"""Podium as an A2A agent over JSON-RPC (``PODIUM_A2A_HTTP_ADDRESS``).

a2a-sdk's JSON-RPC routes (``POST /``, SSE for the streaming methods) over
:class:`ForwardingRequestHandler`, which calls ``lf.a2a.v1.A2AService`` on the server's
own gRPC port with the caller's ``Authorization`` header: the gRPC servicer
(``server/api/a2a.py``) is the one implementation, with the server's interceptors
(authentication, metrics, tracing). ``GET /.well-known/agent-card.json`` is the agent
card: the caller's organization's one (``GetExtendedAgentCard``) when the call is
allowed, else a card without skills that says an extended card exists.

Errors: the A2A errors of the gRPC status (``ErrorInfo`` domain ``a2a-protocol.org``)
become the same JSON-RPC errors; INVALID_ARGUMENT is InvalidParams (with its field
violations), NOT_FOUND TaskNotFound; a refused key (401), a refused role (403), a
rate limit (429) and an unavailable server (503) are HTTP statuses, since JSON-RPC has
no error for them. Request bodies are limited as the console's
(``PODIUM_CONSOLE_MAX_BODY_BYTES``). Only the ``Authorization`` header is forwarded
(never the console's cookie: another page on the same site could send it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.server.routes.jsonrpc_routes import create_jsonrpc_routes
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils import errors as a2a_errors
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, PROTOCOL_VERSION_1_0
from a2a.utils.proto_utils import bad_request_to_validation_errors
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from podium.server.gateway.rpc import HTTP_STATUS, BodyError, error_response, read_body
from podium.server.gateway.upstream import UNARY_TIMEOUT_SECONDS, status_of

__all__ = ["A2A_DOMAIN", "ForwardingRequestHandler", "a2a_routes"]

A2A_DOMAIN = "a2a-protocol.org"
"""The ErrorInfo domain of A2A errors on the gRPC binding."""

_HTTP_ERRORS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }
)

_Response = TypeVar("_Response")


def _headers(context: ServerCallContext) -> list[tuple[str, str]]:
    headers: dict[str, str] = context.state.get("headers") or {}
    metadata = [("a2a-version", PROTOCOL_VERSION_1_0)]
    authorization = headers.get("authorization")
    if authorization:
        metadata.append(("authorization", authorization))
    return metadata


def _raise(error: grpc.aio.AioRpcError) -> NoReturn:
    """The A2A error (or HTTP refusal) of a failed gRPC call (module docstring)."""
    status = status_of(error)
    cls: type[a2a_errors.A2AError] | None = None
    data: dict[str, Any] | None = None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(info) and info.domain == A2A_DOMAIN:
            cls = a2a_errors.A2A_REASON_TO_ERROR.get(info.reason)
        elif detail.Unpack(bad_request):
            data = {"errors": bad_request_to_validation_errors(bad_request)}
    code = error.code()
    if cls is None and code in _HTTP_ERRORS:
        headers = {"WWW-Authenticate": "Bearer"} if code == grpc.StatusCode.UNAUTHENTICATED else {}
        raise HTTPException(HTTP_STATUS[code.value[0]], status.message, headers=headers)
    if cls is None:
        cls = {
            grpc.StatusCode.INVALID_ARGUMENT: a2a_errors.InvalidParamsError,
            grpc.StatusCode.NOT_FOUND: a2a_errors.TaskNotFoundError,
            grpc.StatusCode.FAILED_PRECONDITION: a2a_errors.UnsupportedOperationError,
        }.get(code, a2a_errors.InternalError)
    raise cls(status.message, data=data)


def _event(response: a2a_pb2.StreamResponse) -> Event:
    kind = response.WhichOneof("payload")
    event: Event = getattr(response, kind or "task")
    return event


class ForwardingRequestHandler(RequestHandler):
    """Each A2A request as the same gRPC call to the server (module docstring)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]

    async def _call(
        self,
        method: Callable[..., Awaitable[_Response]],
        request: Any,
        context: ServerCallContext,
    ) -> _Response:
        try:
            return await method(request, metadata=_headers(context), timeout=UNARY_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            _raise(exc)

    async def _stream(
        self, method: Callable[..., Any], request: Any, context: ServerCallContext
    ) -> AsyncIterator[Event]:
        call = method(request, metadata=_headers(context))
        try:
            async for response in call:
                yield _event(response)
        except grpc.aio.AioRpcError as exc:
            _raise(exc)
        finally:
            call.cancel()  # the HTTP client went away, or the stream ended

    async def on_get_task(
        self, params: a2a_pb2.GetTaskRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | None:
        task: a2a_pb2.Task = await self._call(self._stub.GetTask, params, context)
        return task

    async def on_list_tasks(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        response: a2a_pb2.ListTasksResponse = await self._call(
            self._stub.ListTasks, params, context
        )
        return response

    async def on_cancel_task(
        self, params: a2a_pb2.CancelTaskRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | None:
        task: a2a_pb2.Task = await self._call(self._stub.CancelTask, params, context)
        return task

    async def on_message_send(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | a2a_pb2.Message:
        # No deadline of ours: a blocking SendMessage lasts as long as the run.
        try:
            response: a2a_pb2.SendMessageResponse = await self._stub.SendMessage(
                params, metadata=_headers(context)
            )
        except grpc.aio.AioRpcError as exc:
            _raise(exc)
        return response.message if response.HasField("message") else response.task

    async def on_message_send_stream(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        async for event in self._stream(self._stub.SendStreamingMessage, params, context):
            yield event

    async def on_subscribe_to_task(
        self, params: a2a_pb2.SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        async for event in self._stream(self._stub.SubscribeToTask, params, context):
            yield event

    async def on_create_task_push_notification_config(
        self, params: a2a_pb2.TaskPushNotificationConfig, context: ServerCallContext
    ) -> a2a_pb2.TaskPushNotificationConfig:
        config: a2a_pb2.TaskPushNotificationConfig = await self._call(
            self._stub.CreateTaskPushNotificationConfig, params, context
        )
        return config

    async def on_get_task_push_notification_config(
        self, params: a2a_pb2.GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> a2a_pb2.TaskPushNotificationConfig:
        config: a2a_pb2.TaskPushNotificationConfig = await self._call(
            self._stub.GetTaskPushNotificationConfig, params, context
        )
        return config

    async def on_list_task_push_notification_configs(
        self,
        params: a2a_pb2.ListTaskPushNotificationConfigsRequest,
        context: ServerCallContext,
    ) -> a2a_pb2.ListTaskPushNotificationConfigsResponse:
        configs: a2a_pb2.ListTaskPushNotificationConfigsResponse = await self._call(
            self._stub.ListTaskPushNotificationConfigs, params, context
        )
        return configs

    async def on_delete_task_push_notification_config(
        self,
        params: a2a_pb2.DeleteTaskPushNotificationConfigRequest,
        context: ServerCallContext,
    ) -> None:
        await self._call(self._stub.DeleteTaskPushNotificationConfig, params, context)

    async def on_get_extended_agent_card(
        self, params: a2a_pb2.GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> a2a_pb2.AgentCard:
        card: a2a_pb2.AgentCard = await self._call(self._stub.GetExtendedAgentCard, params, context)
        return card


def public_card(url: str) -> a2a_pb2.AgentCard:
    """The card for a caller the server does not let read the extended one."""
    return a2a_pb2.AgentCard(
        name="Podium",
        description="Runs the organization's orchestration definitions: one task is one "
        "run. The skills (the definitions) are in the extended card, for an API key.",
        supported_interfaces=[
            a2a_pb2.AgentInterface(
                url=url, protocol_binding="JSONRPC", protocol_version=PROTOCOL_VERSION_1_0
            )
        ],
        capabilities=a2a_pb2.AgentCapabilities(streaming=True, extended_agent_card=True),
        default_input_modes=["application/json", "text/plain"],
        default_output_modes=["application/json", "text/plain"],
    )


def a2a_routes(
    channel: grpc.aio.Channel, url: Callable[[], str], max_body_bytes: int
) -> list[Route]:
    """The JSON-RPC endpoint (``POST /``, bodies up to ``max_body_bytes``: 413 past that)
    and the agent card; ``url`` is the endpoint's own URL (known once bound)."""
    handler = ForwardingRequestHandler(channel)
    (rpc_route,) = create_jsonrpc_routes(handler, "/")
    dispatch = rpc_route.endpoint

    async def jsonrpc(request: Request) -> Response:
        try:
            body = await read_body(request, max_body_bytes)
        except BodyError as exc:
            return error_response(exc.status, exc.http_status)
        request._body = body  # Starlette's cache of the body, where the SDK reads it
        response: Response = await dispatch(request)
        return response

    stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]

    async def agent_card(request: Request) -> Response:
        metadata = [("a2a-version", PROTOCOL_VERSION_1_0)]
        authorization = request.headers.get("authorization")
        if authorization:
            metadata.append(("authorization", authorization))
        try:
            card = await stub.GetExtendedAgentCard(
                a2a_pb2.GetExtendedAgentCardRequest(),
                metadata=metadata,
                timeout=UNARY_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise HTTPException(HTTP_STATUS[code.value[0]], status_of(exc).message) from None
            card = public_card(url())
        return JSONResponse(MessageToDict(card))

    return [
        Route(AGENT_CARD_WELL_KNOWN_PATH, agent_card, methods=["GET"]),
        Route("/", jsonrpc, methods=["POST"]),
    ]
