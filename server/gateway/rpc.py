"""``POST /v1/<RPC>``: a unary RPC over HTTP with JSON bodies.

The body is the request message in the protobuf JSON mapping (``{}`` or no body for an
empty request), the answer the response message in the same mapping (field names in
lowerCamelCase, enums by name, ``int64`` as strings). Nothing is checked here beyond
what HTTP needs (size, media type, UTF-8 JSON of the right message): the server
validates the request as it does for any gRPC client.

A failure is the server's ``google.rpc.Status`` as JSON, ``{"code": 3, "message":
"...", "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
"fieldViolations": [...]}, ...]}``, with the HTTP status of its code (:data:`HTTP_STATUS`,
the mapping of ``google/rpc/code.proto``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from podium.server.gateway.upstream import METHODS, Upstream, UpstreamError

__all__ = ["HTTP_STATUS", "BodyError", "error_response", "forward", "metadata_of"]

SESSION_COOKIE = "podium_session"
"""The console's HttpOnly cookie holding the API key (EventSource cannot set headers)."""

HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}
"""HTTP status of each gRPC code (google/rpc/code.proto's mapping)."""

ERROR_DOMAIN = "podium.gateway"
MAX_DESCRIPTION_CHARS = 300
JSON_HEADERS = {"cache-control": "no-store"}


class BodyError(Exception):
    """The HTTP request cannot become a request message; ``status`` says why."""

    def __init__(self, status: status_pb2.Status, http_status: int | None = None) -> None:
        super().__init__(status.message)
        self.status = status
        self.http_status = http_status


def status_json(status: status_pb2.Status) -> str:
    """``status`` in the protobuf JSON mapping (details with their ``@type``)."""
    return json.dumps(json_format.MessageToDict(status), separators=(",", ":"))


def error_response(status: status_pb2.Status, http_status: int | None = None) -> Response:
    """The JSON error answer of ``status``."""
    return Response(
        status_json(status),
        status_code=http_status or HTTP_STATUS.get(status.code, 500),
        media_type="application/json",
        headers=JSON_HEADERS,
    )


def gateway_error(
    code: int, message: str, reason: str, violations: Sequence[tuple[str, str]] = ()
) -> status_pb2.Status:
    """A status made by the gateway itself (HTTP-level problems only), shaped like the
    server's: ``ErrorInfo`` with a stable reason, ``BadRequest`` for violations."""
    details: list[Message] = [error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)]
    if violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=field, description=description[:MAX_DESCRIPTION_CHARS]
                    )
                    for field, description in violations
                ]
            )
        )
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=code, message=message, details=packed)


def metadata_of(request: Request) -> list[tuple[str, str]]:
    """The gRPC metadata of an HTTP request: its ``Authorization`` header, else the
    console's session cookie as ``Bearer <key>``."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        key = request.cookies.get(SESSION_COOKIE)
        if key:
            authorization = f"Bearer {key}"
    return [("authorization", authorization)] if authorization else []


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 past that, read no further)."""
    too_large = BodyError(
        gateway_error(
            code_pb2.RESOURCE_EXHAUSTED,
            f"the request body is larger than {limit} bytes",
            "BODY_TOO_LARGE",
        ),
        http_status=413,
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:
        raise BodyError(
            gateway_error(code_pb2.CANCELLED, "the client went away", "CLIENT_DISCONNECTED")
        ) from None
    return bytes(body)


_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')
_AT_PATH = re.compile(r'\bat "?[A-Za-z_][\w]*((?:\.\w+(?:\[\d+\])*)*)"?')
_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field")


def _json_violation_field(message: str) -> str:
    """The field a ``json_format.ParseError`` names, as a path from the request
    (``definition.steps``, ``states[0]``), else ``body``."""
    at = _AT_PATH.search(message)
    path = at.group(1).lstrip(".") if at else ""
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        return f"{path}.{unknown.group(1)}" if path else unknown.group(1)
    if path:
        return path
    # Scalars: "Failed to parse steps field: Failed to parse id field: ..." (protobuf
    # names the nested fields, without indexes).
    named = _PARSE_FIELD.findall(message)
    return ".".join(named) if named else "body"


def parse_request(body: bytes, message: Message, content_type: str | None) -> None:
    """Fill ``message`` from a JSON body; raises :class:`BodyError` with a field violation."""
    if body.strip() and (content_type or "").split(";")[0].strip().lower() != "application/json":
        # Also keeps cross-site HTML forms (which cannot send JSON) from posting here.
        raise BodyError(
            gateway_error(
                code_pb2.INVALID_ARGUMENT,
                "the request body must be JSON (Content-Type: application/json)",
                "UNSUPPORTED_MEDIA_TYPE",
                [("Content-Type", "expected application/json")],
            ),
            http_status=415,
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError(
            gateway_error(
                code_pb2.INVALID_ARGUMENT,
                "the request body is not UTF-8",
                "INVALID_JSON",
                [("body", "not valid UTF-8")],
            )
        ) from None
    if not text.strip():
        return
    name = message.DESCRIPTOR.name
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise BodyError(
            gateway_error(
                code_pb2.INVALID_ARGUMENT,
                "the request body is not JSON",
                "INVALID_JSON",
                [("body", str(exc))],
            )
        ) from None
    if not isinstance(document, dict):
        raise BodyError(
            gateway_error(
                code_pb2.INVALID_ARGUMENT,
                f"the body must be a JSON object (a {name})",
                "INVALID_JSON",
                [("body", f"expected a JSON object, got {type(document).__name__}")],
            )
        )
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as exc:
        description = str(exc)
        raise BodyError(
            gateway_error(
                code_pb2.INVALID_ARGUMENT,
                f"the body is not a valid {name} in JSON",
                "INVALID_JSON",
                [(_json_violation_field(description), description)],
            )
        ) from None


def message_response(message: Message) -> Response:
    """A response message as JSON (protobuf JSON mapping)."""
    return Response(
        json.dumps(json_format.MessageToDict(message), separators=(",", ":")),
        media_type="application/json",
        headers=JSON_HEADERS,
    )


async def forward(request: Request, upstream: Upstream, max_body_bytes: int) -> Response:
    """Handle ``POST /v1/{method}``: parse, call the server, answer."""
    name = request.path_params["method"]
    method = METHODS.get(name)
    if method is None:
        return error_response(
            gateway_error(
                code_pb2.NOT_FOUND,
                f"no unary RPC named {name[:100]!r} (WatchRun and WatchRuns are "
                "GET /v1/runs/{run_id}/events and GET /v1/events)",
                "UNKNOWN_METHOD",
            )
        )
    message = method.request()
    try:
        body = await read_body(request, max_body_bytes)
        parse_request(body, message, request.headers.get("content-type"))
    except BodyError as exc:
        return error_response(exc.status, exc.http_status)
    try:
        response = await upstream.call(name, message, metadata_of(request))
    except UpstreamError as exc:
        return error_response(exc.status)
    return message_response(response)
