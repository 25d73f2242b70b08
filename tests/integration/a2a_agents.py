"""A real A2A agent for tests, built with a2a-sdk's server classes.

:func:`serve_a2a` starts, on 127.0.0.1:0, ``lf.a2a.v1.A2AService`` (A2A 1.0: the SDK's
``GrpcHandler``) or, with ``version="0.3"``, only ``a2a.v1.A2AService`` (A2A 0.3: the
SDK's ``CompatGrpcHandler``), over its ``DefaultRequestHandler`` and
``InMemoryTaskStore``, running :class:`ScriptedExecutor`, an ``AgentExecutor`` whose
behaviour is chosen by the step input's ``mode``:

- ``ok`` (default): status "thinking" (fraction 0.25), artifact ``answer`` streamed as
  ``Hello, `` + ``world``, status "done writing", completed;
- ``data``: one artifact with a data part ``{"answer": 42}``, completed;
- ``fail`` / ``reject``: failed (status message "boom", metadata from ``fail_metadata``) /
  rejected;
- ``slow``: working, then waits until cancelled (``cancelled`` records CancelTask);
- ``input``: input required ("which city?"); the reply (a message on the same task)
  completes with ``{"city": <reply input city>}``;
- ``cut``: chunks ``a``, ``b``; the stream is cut by the handler after the first artifact
  update; ``c`` is streamed once a client re-subscribed; completed;
- ``reset``: as ``cut``, but the stream ends with UNAVAILABLE (a connection reset).

:func:`request` and :class:`Recorder` are the calling side's helpers.
``A2AAgent.requests`` records each request context (task id, context id, metadata,
input) seen by the executor.

:func:`serve_a2a_http` serves the same agent on an HTTP binding (``JSONRPC`` or
``HTTP+JSON``: a2a-sdk's Starlette routes under uvicorn, on 127.0.0.1:0), with its agent
card at ``/.well-known/agent-card.json`` listing that interface; ``cut`` ends the event
stream after the first artifact update there too (:class:`CuttingRequestHandler`), and
``A2AAgent.card_reads`` counts the card's reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvicorn
from a2a.compat.v0_3 import a2a_v0_3_pb2, a2a_v0_3_pb2_grpc
from a2a.compat.v0_3.grpc_handler import CompatGrpcHandler
from a2a.helpers.proto_helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.protobuf import json_format, struct_pb2
from starlette.applications import Starlette

from podium.agent.v1 import agent_pb2

Part = a2a_pb2.Part

VERSIONS = ("1.0", "0.3")
"""The A2A versions :func:`serve_a2a` can speak (to parametrize tests over)."""


@dataclass
class Seen:
    """One request as the executor saw it."""

    task_id: str
    context_id: str
    metadata: dict[str, Any]
    input: dict[str, Any]


def request(
    input: dict[str, Any], conversation_id: str | None = None
) -> agent_pb2.ExecuteTaskRequest:
    """A step attempt's request to an A2A agent (a new conversation unless given)."""
    req = agent_pb2.ExecuteTaskRequest(
        task_id=str(uuid.uuid4()),
        run_id=str(uuid.uuid4()),
        step_id="ask",
        attempt=1,
        conversation_id=conversation_id or str(uuid.uuid4()),
        organization_id="default",
    )
    req.input.update(input)
    return req


class Recorder:
    """The progress and output chunks of an attempt, as its callbacks received them."""

    def __init__(self) -> None:
        self.progress: list[tuple[str, float]] = []
        self.chunks: list[str] = []

    def on_progress(self, progress: agent_pb2.Progress) -> None:
        self.progress.append((progress.message, progress.fraction))

    def on_chunk(self, chunk: agent_pb2.OutputChunk) -> None:
        self.chunks.append(chunk.text)


def _input(context: RequestContext) -> dict[str, Any]:
    message = context.message
    if message is None:
        return {}
    for part in message.parts:
        if part.WhichOneof("content") == "data":
            value = json_format.MessageToDict(part.data)
            return value if isinstance(value, dict) else {}
    return {}


def _data(value: dict[str, Any]) -> struct_pb2.Value:
    out = struct_pb2.Value()
    out.struct_value.update(value)
    return out


class ScriptedExecutor(AgentExecutor):
    """See the module docstring."""

    def __init__(self, agent: A2AAgent) -> None:
        self.agent = agent

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = context.task_id or ""
        context_id = context.context_id or ""
        metadata = json_format.MessageToDict(context.message.metadata) if context.message else {}
        data = _input(context)
        self.agent.requests.append(Seen(task_id, context_id, metadata, data))
        updater = TaskUpdater(event_queue, task_id, context_id)
        current = context.current_task
        if current is not None and current.status.state == a2a_pb2.TASK_STATE_INPUT_REQUIRED:
            await updater.add_artifact([Part(data=_data({"city": data.get("city", "")}))])
            await updater.complete()
            return
        mode = data.get("mode", "ok")
        await event_queue.enqueue_event(
            new_task(
                task_id,
                context_id,
                a2a_pb2.TASK_STATE_SUBMITTED,
                history=[context.message] if context.message else [],
            )
        )
        await updater.start_work(
            updater.new_agent_message([Part(text="thinking")], metadata={"fraction": 0.25})
        )
        if mode == "status_fraction":
            # The fraction in the status update's own metadata, not the message's.
            await updater.update_status(
                a2a_pb2.TASK_STATE_WORKING,
                updater.new_agent_message([Part(text="halfway")]),
                metadata={"fraction": 0.5},
            )
            await updater.complete()
        if mode == "ok":
            await updater.add_artifact([Part(text="Hello, ")], artifact_id="answer", name="answer")
            await updater.add_artifact(
                [Part(text="world")], artifact_id="answer", append=True, last_chunk=True
            )
            await updater.update_status(
                a2a_pb2.TASK_STATE_WORKING, updater.new_agent_message([Part(text="done writing")])
            )
            await updater.complete()
        elif mode == "data":
            await updater.add_artifact([Part(data=_data({"answer": 42}))], artifact_id="result")
            await updater.complete()
        elif mode == "fail":
            await updater.failed(
                updater.new_agent_message(
                    [Part(text="boom")], metadata=data.get("fail_metadata") or None
                )
            )
        elif mode == "reject":
            await updater.reject(updater.new_agent_message([Part(text="not my job")]))
        elif mode == "slow":
            self.agent.started.set()
            await asyncio.Event().wait()
        elif mode == "input":
            await updater.requires_input(updater.new_agent_message([Part(text="which city?")]))
        elif mode in ("cut", "reset"):
            await updater.add_artifact([Part(text="a")], artifact_id="answer")
            await updater.add_artifact([Part(text="b")], artifact_id="answer", append=True)
            await self.agent.resubscribed.wait()
            await updater.add_artifact([Part(text="c")], artifact_id="answer", append=True)
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.agent.cancelled.append(context.task_id or "")
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()


async def _cutting(
    agent: A2AAgent,
    mode: str,
    stream: AsyncIterable[Any],
    context: grpc.aio.ServicerContext[Any, Any],
) -> AsyncIterable[Any]:
    """``stream``, ended (as if a proxy closed it) after its first artifact update when
    ``mode`` is ``cut`` (``reset``: with UNAVAILABLE)."""
    async for item in stream:
        yield item
        if mode in ("cut", "reset") and item.WhichOneof("payload") == "artifact_update":
            agent.cuts += 1
            if mode == "reset":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by proxy")
            return


async def _subscribed(agent: A2AAgent, stream: AsyncIterable[Any]) -> AsyncIterable[Any]:
    """``stream`` (a subscription), releasing the executor once its snapshot was sent."""
    agent.subscriptions += 1
    first = True
    async for item in stream:
        yield item
        if first:
            first = False
            agent.resubscribed.set()


class CuttingHandler(GrpcHandler):
    """The SDK's gRPC handler (A2A 1.0), except that a ``cut`` stream ends (as if a
    proxy closed it) after its first artifact update (``reset``: with UNAVAILABLE), and a
    subscription releases the executor once its snapshot was sent."""

    def __init__(self, agent: A2AAgent, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent = agent

    async def SendStreamingMessage(
        self, request: a2a_pb2.SendMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterable[a2a_pb2.StreamResponse]:
        mode = ""
        for part in request.message.parts:
            if part.WhichOneof("content") == "data":
                fields = part.data.struct_value.fields
                mode = fields["mode"].string_value if "mode" in fields else ""
        stream = super().SendStreamingMessage(request, context)
        async for item in _cutting(self.agent, mode, stream, context):
            yield item

    async def SubscribeToTask(
        self, request: a2a_pb2.SubscribeToTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterable[a2a_pb2.StreamResponse]:
        async for item in _subscribed(self.agent, super().SubscribeToTask(request, context)):
            yield item


class CuttingCompatHandler(CompatGrpcHandler):
    """:class:`CuttingHandler` for A2A 0.3: the SDK's ``CompatGrpcHandler``
    (``a2a.v1.A2AService``) with the same ``cut`` / ``reset`` behaviour."""

    def __init__(self, agent: A2AAgent, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent = agent

    async def SendStreamingMessage(
        self,
        request: a2a_v0_3_pb2.SendMessageRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterable[a2a_v0_3_pb2.StreamResponse]:
        mode = ""
        for part in request.request.content:
            if part.WhichOneof("part") == "data":
                fields = part.data.data.fields
                mode = fields["mode"].string_value if "mode" in fields else ""
        stream = super().SendStreamingMessage(request, context)
        async for item in _cutting(self.agent, mode, stream, context):
            yield item

    async def TaskSubscription(
        self,
        request: a2a_v0_3_pb2.TaskSubscriptionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterable[a2a_v0_3_pb2.StreamResponse]:
        async for item in _subscribed(self.agent, super().TaskSubscription(request, context)):
            yield item


def _mode(message: a2a_pb2.Message) -> str:
    for part in message.parts:
        if part.WhichOneof("content") == "data":
            fields = part.data.struct_value.fields
            return fields["mode"].string_value if "mode" in fields else ""
    return ""


class CuttingRequestHandler(DefaultRequestHandler):
    """The SDK's request handler under the HTTP routes, with :class:`CuttingHandler`'s
    ``cut`` behaviour: the event stream ends after its first artifact update, and a
    subscription releases the executor once its first event was sent."""

    def __init__(self, agent: A2AAgent, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent = agent

    async def on_message_send_stream(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Any]:
        mode = _mode(params.message)
        async for event in super().on_message_send_stream(params, context):
            yield event
            if mode == "cut" and isinstance(event, a2a_pb2.TaskArtifactUpdateEvent):
                self.agent.cuts += 1
                return

    async def on_subscribe_to_task(
        self, params: a2a_pb2.SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Any]:
        self.agent.subscriptions += 1
        first = True
        async for event in super().on_subscribe_to_task(params, context):
            yield event
            if first:
                first = False
                self.agent.resubscribed.set()


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers (the test process keeps its own)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class A2AAgent:
    """A running test A2A agent."""

    server: grpc.aio.Server | None = None
    port: int = 0
    version: str = "1.0"
    binding: str = "GRPC"
    http: _Uvicorn | None = None
    http_task: asyncio.Task[None] | None = None
    card_reads: int = 0
    card_port: int = 0
    requests: list[Seen] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    resubscribed: asyncio.Event = field(default_factory=asyncio.Event)
    cuts: int = 0
    subscriptions: int = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.card_port or self.port}"

    @property
    def card_url(self) -> str:
        return f"{self.base_url}/.well-known/agent-card.json"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
        if self.http is not None and self.http_task is not None:
            self.http.should_exit = True
            self.http.force_exit = True
            await self.http_task


def agent_card(
    version: str = "1.0", binding: str = "GRPC", url: str = "127.0.0.1"
) -> a2a_pb2.AgentCard:
    return a2a_pb2.AgentCard(
        name="scripted",
        description="a scripted A2A test agent",
        version="1.0.0",
        supported_interfaces=[
            a2a_pb2.AgentInterface(url=url, protocol_binding=binding, protocol_version=version)
        ],
        capabilities=a2a_pb2.AgentCapabilities(streaming=True),
        default_input_modes=["application/json"],
        default_output_modes=["text/plain"],
        skills=[
            a2a_pb2.AgentSkill(id="scripted", name="scripted", description="tests", tags=["test"])
        ],
    )


async def serve_a2a(*, version: str = "1.0") -> A2AAgent:
    """Start the test agent speaking A2A ``version`` (one of :data:`VERSIONS`; ``0.3``
    serves only ``a2a.v1.A2AService``)."""
    agent = A2AAgent(version=version)
    handler = DefaultRequestHandler(
        agent_executor=ScriptedExecutor(agent),
        task_store=InMemoryTaskStore(),
        agent_card=agent_card(version),
    )
    server = grpc.aio.server()
    if version == "0.3":
        a2a_v0_3_pb2_grpc.add_A2AServiceServicer_to_server(  # type: ignore[no-untyped-call]
            CuttingCompatHandler(agent, handler), server
        )
    else:
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(  # type: ignore[no-untyped-call]
            CuttingHandler(agent, handler), server
        )
    agent.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    agent.server = server
    return agent


HTTP_BINDINGS = ("JSONRPC", "HTTP+JSON")
"""The HTTP bindings :func:`serve_a2a_http` serves (to parametrize tests over)."""


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _serve_http(
    agent: A2AAgent, sock: socket.socket, card: a2a_pb2.AgentCard, routes: list[Any]
) -> None:
    """Serve ``routes`` and ``card`` (counting its reads) under uvicorn on ``sock``."""

    async def count_card(served: a2a_pb2.AgentCard) -> a2a_pb2.AgentCard:
        agent.card_reads += 1
        return served

    app = Starlette(routes=[*create_agent_card_routes(card, card_modifier=count_card), *routes])
    server = _Uvicorn(uvicorn.Config(app, log_level="warning", lifespan="off"))
    agent.http = server
    agent.http_task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if agent.http_task.done():
            await agent.http_task
        await asyncio.sleep(0.01)


async def serve_a2a_http(
    binding: str, *, version: str = "1.0", card_binding: str | None = None
) -> A2AAgent:
    """Start the test agent on the HTTP ``binding`` (one of :data:`HTTP_BINDINGS`) under
    uvicorn on 127.0.0.1:0, its card at ``/.well-known/agent-card.json``, its interface
    listed as A2A ``version`` (``0.3``: the SDK's 0.3 compatibility routes answer too).
    ``card_binding`` lists another binding on the card instead (a card naming one
    Podium cannot call)."""
    sock = _bound_socket()
    port = sock.getsockname()[1]
    agent = A2AAgent(version=version, binding=binding, port=port)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/a2a" if binding == "JSONRPC" else f"{base}/rest"
    card = agent_card(version, card_binding or binding, url)
    handler = CuttingRequestHandler(
        agent,
        agent_executor=ScriptedExecutor(agent),
        task_store=InMemoryTaskStore(),
        agent_card=card,
    )
    legacy = version == "0.3"
    routes = (
        create_jsonrpc_routes(handler, "/a2a", enable_v0_3_compat=legacy)
        if binding == "JSONRPC"
        else create_rest_routes(handler, path_prefix="/rest", enable_v0_3_compat=legacy)
    )
    await _serve_http(agent, sock, card, list(routes))
    return agent


async def serve_a2a_card(version: str = "1.0") -> A2AAgent:
    """The gRPC test agent of :func:`serve_a2a`, with its card also served over HTTP
    (``base_url``), listing its gRPC interface."""
    agent = await serve_a2a(version=version)
    sock = _bound_socket()
    agent.card_port = sock.getsockname()[1]
    await _serve_http(agent, sock, agent_card(version, "GRPC", agent.endpoint), [])
    return agent
