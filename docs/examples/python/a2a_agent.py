"""An A2A agent built with a2a-sdk, served on one A2A binding, for Podium to call as a
step (docs/a2a.md, "Calling A2A agents as steps").

    pip install "a2a-sdk[grpc,http-server]" uvicorn
    python a2a_agent.py jsonrpc 127.0.0.1 50080     # or: rest, grpc

Serves its agent card at ``http://HOST:PORT/.well-known/agent-card.json``, listing one
interface: JSON-RPC at ``http://HOST:PORT/a2a``, HTTP+JSON under
``http://HOST:PORT/rest``, or gRPC at ``HOST:PORT+1``. Prints ``{"card_url": ...}`` once
serving, then serves until Ctrl-C or SIGTERM.

Its one skill, ``shout``, streams a progress line (with a fraction) and the answer as an
artifact. Without ``text`` in the input it asks for it (``INPUT_REQUIRED``): Podium
parks the step until the run is continued with the answer, sent on the same task.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import grpc
import uvicorn
from a2a.helpers.proto_helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.protobuf import json_format
from starlette.applications import Starlette

BINDINGS = {"jsonrpc": "JSONRPC", "rest": "HTTP+JSON", "grpc": "GRPC"}


def _text(message: a2a_pb2.Message | None) -> str:
    """The ``text`` of the message's data part (Podium sends the step input as one)."""
    for part in message.parts if message else []:
        if part.WhichOneof("content") == "data":
            value = json_format.MessageToDict(part.data)
            if isinstance(value, dict) and isinstance(value.get("text"), str):
                return value["text"]
        if part.WhichOneof("content") == "text":
            return part.text
    return ""


class Shouter(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id or "", context.context_id or ""
        updater = TaskUpdater(event_queue, task_id, context_id)
        if context.current_task is None:
            await event_queue.enqueue_event(
                new_task(task_id, context_id, a2a_pb2.TASK_STATE_SUBMITTED)
            )
        text = _text(context.message)
        if not text:
            # Podium parks the step; ContinueRun's input is the reply, on this task.
            question = a2a_pb2.Part(text="what should I shout?")
            await updater.requires_input(updater.new_agent_message([question]))
            return
        # Progress: the status message's text, its fraction in the update's metadata.
        await updater.update_status(
            a2a_pb2.TASK_STATE_WORKING,
            updater.new_agent_message([a2a_pb2.Part(text="shouting")]),
            metadata={"fraction": 0.5},
        )
        await updater.add_artifact([a2a_pb2.Part(text=text.upper() + "!")], name="answer")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, context.task_id or "", context.context_id or "").cancel()


def card(binding: str, url: str) -> a2a_pb2.AgentCard:
    return a2a_pb2.AgentCard(
        name="shouter",
        description="Shouts its input back",
        version="1.0.0",
        supported_interfaces=[
            a2a_pb2.AgentInterface(url=url, protocol_binding=binding, protocol_version="1.0")
        ],
        capabilities=a2a_pb2.AgentCapabilities(streaming=True),
        default_input_modes=["application/json"],
        default_output_modes=["text/plain"],
        skills=[
            a2a_pb2.AgentSkill(id="shout", name="Shout", description="upper case!", tags=["demo"])
        ],
    )


async def main(kind: str, host: str, port: int) -> None:
    binding = BINDINGS[kind]
    base = f"http://{host}:{port}"
    url = {"JSONRPC": f"{base}/a2a", "HTTP+JSON": f"{base}/rest", "GRPC": f"{host}:{port + 1}"}
    agent_card = card(binding, url[binding])
    handler = DefaultRequestHandler(
        agent_executor=Shouter(), task_store=InMemoryTaskStore(), agent_card=agent_card
    )
    routes = list(create_agent_card_routes(agent_card))
    grpc_server = None
    if binding == "JSONRPC":
        routes += create_jsonrpc_routes(handler, "/a2a")
    elif binding == "HTTP+JSON":
        routes += create_rest_routes(handler, path_prefix="/rest")
    else:
        grpc_server = grpc.aio.server()
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(GrpcHandler(handler), grpc_server)
        grpc_server.add_insecure_port(url["GRPC"])
        await grpc_server.start()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=routes), log_level="warning"))
    # Listening before uvicorn starts: a client told the URL now is queued, not refused.
    sock = socket.create_server((host, port))
    print(json.dumps({"card_url": f"{base}/.well-known/agent-card.json"}), flush=True)
    await server.serve(sockets=[sock])
    if grpc_server is not None:
        await grpc_server.stop(1)


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "jsonrpc"
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 50080
    asyncio.run(main(kind, host, port))
