"""WatchRun and WatchRuns as Server-Sent Events.

``GET /v1/runs/{run_id}/events`` calls WatchRun with ``after_sequence`` taken from the
``Last-Event-ID`` header (what a browser's ``EventSource`` sends when it reconnects) or
the ``after_sequence`` query parameter, so a reconnecting client resumes exactly after
the last event it saw, from the same durable log. Each event is one SSE message: ``id``
the event's sequence, ``data`` the ``RunEvent`` in the protobuf JSON mapping. Before
the stream starts the run is read with GetRun, so an unknown run, a refused key or a
malformed id is an ordinary JSON error with its HTTP status; a failure after that is
an ``event: error`` message whose data is the ``google.rpc.Status`` JSON, then the
stream ends. After the run's terminal event (WatchRun's end) comes an ``event: end``
message: a client stops there instead of reconnecting. When the server stops, the
stream ends and the browser reconnects after ``retry`` milliseconds, with
``Last-Event-ID``.

``GET /v1/events`` is WatchRuns (an organization's live events) with filters
``definition_name``, ``state`` (repeatable, e.g. ``STATE_RUNNING`` or ``RUNNING``) and
``label`` (repeatable, ``key=value``); its messages carry no ``id`` (WatchRuns has no
cursor to resume from). A comment line every :data:`KEEPALIVE_SECONDS` keeps proxies
from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format
from google.rpc import code_pb2
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import run_pb2
from podium.server.gateway.rpc import error_response, gateway_error, metadata_of, status_json
from podium.server.gateway.upstream import Upstream, UpstreamError

__all__ = ["run_events", "runs_events"]

KEEPALIVE_SECONDS = 15.0
RECONNECT_MILLISECONDS = 1000
MAX_SEQUENCE = 2**63 - 1
MAX_FILTERS = 50


def _frame(data: str, *, event_id: int | None = None, event: str | None = None) -> bytes:
    lines = []
    if event is not None:
        lines.append(f"event: {event}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


async def _frames(
    responses: AsyncIterator[Any], stopping: asyncio.Event, *, with_id: bool
) -> AsyncIterator[bytes]:
    """SSE frames of a watch stream, with keep-alive comments while it is idle; ends
    when ``stopping`` is set (the gateway stops: clients reconnect elsewhere or later)."""
    yield f"retry: {RECONNECT_MILLISECONDS}\n\n".encode()
    iterator = aiter(responses)
    pending: asyncio.Future[Any] | None = None
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait(
                {pending, stop}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if stop in done:
                return
            if not done:
                yield b": keepalive\n\n"
                continue
            try:
                response = pending.result()
            except StopAsyncIteration:
                # WatchRun ends after the run's terminal event: say so, or a browser's
                # EventSource would reconnect (and end) every second forever.
                yield _frame("{}", event="end")
                return
            except UpstreamError as exc:
                yield _frame(status_json(exc.status), event="error")
                return
            finally:
                pending = None
            event = response.event
            data = json.dumps(json_format.MessageToDict(event), separators=(",", ":"))
            yield _frame(data, event_id=event.sequence if with_id else None)
    finally:
        stop.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        close = getattr(iterator, "aclose", None)
        if close is not None:
            with contextlib.suppress(BaseException):
                await close()


def _stream(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


def _bad_parameter(field: str, description: str) -> Response:
    return error_response(
        gateway_error(
            code_pb2.INVALID_ARGUMENT,
            f"invalid {field}: {description}",
            "INVALID_PARAMETER",
            [(field, description)],
        )
    )


async def run_events(request: Request, upstream: Upstream, stopping: asyncio.Event) -> Response:
    """``GET /v1/runs/{run_id}/events``: WatchRun as SSE, resumable by Last-Event-ID."""
    run_id = request.path_params["run_id"]
    field = "Last-Event-ID"
    raw = request.headers.get("last-event-id")
    if raw is None:
        field, raw = "after_sequence", request.query_params.get("after_sequence", "0")
    raw = raw.strip() or "0"
    if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_SEQUENCE:
        return _bad_parameter(field, "expected an event sequence number (an integer >= 0)")
    metadata = metadata_of(request)
    try:
        # The same checks as any gRPC client gets (id, existence, the caller's key),
        # answered as JSON before the event stream starts.
        await upstream.call("GetRun", pb.GetRunRequest(run_id=run_id), metadata)
    except UpstreamError as exc:
        return error_response(exc.status)
    watch = upstream.watch_run(pb.WatchRunRequest(run_id=run_id, after_sequence=int(raw)), metadata)
    return _stream(_frames(watch, stopping, with_id=True))


def _state(raw: str) -> int | None:
    name = raw.strip().upper()
    if not name.startswith("STATE_"):
        name = f"STATE_{name}"
    try:
        return run_pb2.Run.State.Value(name)
    except ValueError:
        return None


async def runs_events(request: Request, upstream: Upstream, stopping: asyncio.Event) -> Response:
    """``GET /v1/events``: WatchRuns (live events of the organization's runs) as SSE."""
    params = request.query_params
    watch_request = pb.WatchRunsRequest(definition_name=params.get("definition_name", ""))
    states = params.getlist("state")
    labels = params.getlist("label")
    if len(states) > MAX_FILTERS or len(labels) > MAX_FILTERS:
        return _bad_parameter("state", f"at most {MAX_FILTERS} states and labels")
    for index, raw in enumerate(states):
        state = _state(raw)
        if state is None:
            return _bad_parameter(f"state[{index}]", "expected a Run.State such as STATE_RUNNING")
        watch_request.states.append(state)  # type: ignore[arg-type]
    for index, raw in enumerate(labels):
        key, sep, value = raw.partition("=")
        if not sep or not key:
            return _bad_parameter(f"label[{index}]", "expected key=value")
        watch_request.labels[key] = value
    watch = upstream.watch_runs(watch_request, metadata_of(request))
    return _stream(_frames(watch, stopping, with_id=False))
