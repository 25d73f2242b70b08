""":class:`Gateway`: the routes, served by uvicorn in the current event loop.

Routes:

- ``POST /v1/{method}``: a unary RPC (:mod:`.rpc`);
- ``GET /v1/runs/{run_id}/events``: WatchRun as Server-Sent Events; ``GET /v1/events``:
  WatchRuns (:mod:`.sse`);
- ``POST``/``DELETE /console/session``: sign in and out (:mod:`.console`);
- ``/static/...`` and every console page (``/``, ``/runs``, ``/runs/{id}``, ...).

uvicorn runs as a task of the server's loop on a socket bound here (so port 0 works
and a bind error surfaces at start), without its signal handlers (``podium serve``
owns SIGTERM/SIGINT), access log or lifespan. Limits: the request body
(``PODIUM_CONSOLE_MAX_BODY_BYTES``), request heads (h11's 16 KiB), open connections
(:data:`MAX_CONNECTIONS`, 503 past that) and idle keep-alive (5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn
from google.rpc import code_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from podium.server.gateway import console, rpc, sse
from podium.server.gateway.upstream import Upstream

__all__ = ["Gateway"]

log = logging.getLogger("podium.gateway")

MAX_CONNECTIONS = 1000
SHUTDOWN_GRACE_SECONDS = 1
"""How long open requests get at stop; event streams end at once (browsers reconnect)."""

CONSOLE_PAGES = (
    "/",
    "/login",
    "/runs",
    "/runs/{run_id}",
    "/definitions",
    "/definitions/{name}",
    "/approvals",
    "/agents",
    "/usage",
)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods: a status JSON under /v1/ (like every API answer),
    plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/v1/"):
        return Response(f"{exc.detail}\n", status_code=exc.status_code, media_type="text/plain")
    code = code_pb2.NOT_FOUND if exc.status_code == 404 else code_pb2.UNIMPLEMENTED
    reason = "NOT_FOUND" if exc.status_code == 404 else "METHOD_NOT_ALLOWED"
    message = (
        f"no such endpoint: {request.method} {request.url.path[:200]} (unary RPCs are "
        "POST /v1/<RPC>; events are GET /v1/runs/<run_id>/events and GET /v1/events)"
    )
    return rpc.error_response(rpc.gateway_error(code, message, reason), exc.status_code)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process's owner handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    """The HTTP/JSON gateway and console on ``address``, forwarding to ``target``."""

    def __init__(
        self,
        address: str,
        target: str,
        *,
        max_body_bytes: int,
        max_message_bytes: int,
        routes: Callable[[Gateway, Upstream], list[Route]] | None = None,
    ) -> None:
        """``routes``: serve these routes instead of the console's and the HTTP/JSON
        mapping (the A2A JSON-RPC binding, ``gateway/a2a.py``, on its own address)."""
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._target = target
        self._max_body_bytes = max_body_bytes
        self._max_message_bytes = max_message_bytes
        self._routes = routes
        self._upstream: Upstream | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.port = 0

    @property
    def address(self) -> str:
        """HOST:PORT actually bound (the real port when 0 was asked for)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The console's URL (a wildcard host shown as the loopback address)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self._host, self._host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def _app(self, upstream: Upstream) -> Starlette:
        if self._routes is not None:
            return Starlette(routes=self._routes(self, upstream))
        limit = self._max_body_bytes

        async def forward(request: Request) -> Response:
            return await rpc.forward(request, upstream, limit)

        async def run_events(request: Request) -> Response:
            return await sse.run_events(request, upstream, self._stopping)

        async def runs_events(request: Request) -> Response:
            return await sse.runs_events(request, upstream, self._stopping)

        async def create_session(request: Request) -> Response:
            return await console.create_session(request, upstream)

        routes = [
            Route("/v1/runs/{run_id}/events", run_events, methods=["GET"]),
            Route("/v1/events", runs_events, methods=["GET"]),
            Route("/v1/{method}", forward, methods=["POST"]),
            Route("/console/session", create_session, methods=["POST"]),
            Route("/console/session", console.delete_session, methods=["DELETE"]),
            Route("/static/{name}", console.static_file, methods=["GET", "HEAD"]),
            *(Route(path, console.page, methods=["GET", "HEAD"]) for path in CONSOLE_PAGES),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._upstream = Upstream(self._target, max_message_bytes=self._max_message_bytes)
        config = uvicorn.Config(
            self._app(self._upstream),
            lifespan="off",
            access_log=False,
            # Our logging (JSON lines) as configured; only uvicorn's warnings and errors
            # (its "Started server process" lines would mislead next to ours).
            log_config=None,
            log_level="warning",
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
            ws="none",
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="podium-gateway")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"the console did not start on {self.address}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, give open requests a moment, then close the gRPC channel."""
        self._stopping.set()  # ends the event streams, so connections close cleanly
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await self._task
            except Exception:  # pragma: no cover - logged, the stop goes on
                log.exception("the console stopped with an error")
        if self._upstream is not None:
            await self._upstream.close()
