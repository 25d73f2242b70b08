"""The web console: static files and the session cookie.

The console is ``static/index.html`` with ``common.js`` (DOM, API and event-stream
helpers), ``graph.js`` (the DAG in SVG), ``pages.js``, ``usage.js`` and ``console.js`` (routing
and the pages) and ``console.css`` (no build step, no CDN, no library): every page path
(``/``, ``/runs/ID``, ``/definitions/NAME``, ...) answers the same HTML and the script
draws the page from the address, so deep links survive a reload. It reads everything through the
gateway's own ``/v1/`` endpoints.

Signing in (``POST /console/session`` with ``{"key": "..."}``) checks the API key with
one ListDefinitions call carrying it, then keeps it in an HttpOnly, SameSite=Strict
cookie (EventSource cannot send an ``Authorization`` header; the gateway turns the
cookie into ``authorization: Bearer <key>`` metadata). A refused key is answered
with the server's status (401/403) and no cookie. ``DELETE /console/session`` signs
out. With authentication off, every page works without signing in.
"""

from __future__ import annotations

import json
from pathlib import Path

from google.rpc import code_pb2
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.gateway.rpc import (
    SESSION_COOKIE,
    BodyError,
    error_response,
    gateway_error,
    read_body,
)
from podium.server.gateway.upstream import Upstream, UpstreamError

__all__ = ["STATIC_DIR", "delete_session", "page", "create_session", "static_file"]

STATIC_DIR = Path(__file__).parent / "static"
MAX_KEY_CHARS = 512
_STATIC_FILES = {
    "common.js": "text/javascript",
    "pages.js": "text/javascript",
    "usage.js": "text/javascript",
    "console.js": "text/javascript",
    "graph.js": "text/javascript",
    "console.css": "text/css",
}

SECURITY_HEADERS = {
    # Only this origin's own script and style; nothing inline, no frames.
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


async def page(request: Request) -> Response:
    """Any console page: the one HTML document (the script reads the path)."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "cache-control": "no-cache"},
    )


async def static_file(request: Request) -> Response:
    """``/static/<name>``: the console's scripts and style sheet, nothing else."""
    name = request.path_params["name"]
    media_type = _STATIC_FILES.get(name)
    if media_type is None:
        return Response("not found\n", status_code=404, media_type="text/plain")
    return FileResponse(
        STATIC_DIR / name,
        media_type=f"{media_type}; charset=utf-8",
        headers={**SECURITY_HEADERS, "cache-control": "no-cache"},
    )


def _invalid_key(description: str) -> Response:
    return error_response(
        gateway_error(
            code_pb2.INVALID_ARGUMENT,
            f"invalid key: {description}",
            "INVALID_KEY",
            [("key", description)],
        )
    )


async def create_session(request: Request, upstream: Upstream) -> Response:
    """Check an API key against the server and keep it in the session cookie."""
    try:
        body = await read_body(request, 4 * MAX_KEY_CHARS)
    except BodyError as exc:
        return error_response(exc.status, exc.http_status)
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        return _invalid_key('expected a JSON object {"key": "..."}')
    key = document.get("key") if isinstance(document, dict) else None
    if not isinstance(key, str) or not key:
        return _invalid_key("required")
    if len(key) > MAX_KEY_CHARS or not all(33 <= ord(ch) < 127 and ch not in ';,"\\' for ch in key):
        return _invalid_key(
            f"expected at most {MAX_KEY_CHARS} printable ASCII characters without spaces"
        )
    try:
        await upstream.call(
            "ListDefinitions",
            pb.ListDefinitionsRequest(page_size=1),
            [("authorization", f"Bearer {key}")],
        )
    except UpstreamError as exc:
        return error_response(exc.status)
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    response.set_cookie(
        SESSION_COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def delete_session(request: Request) -> Response:
    """Sign out: forget the session cookie."""
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
