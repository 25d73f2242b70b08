"""A2A agents registered by their agent card's URL: the card, the binding chosen from it,
and the calls of the HTTP bindings (JSON-RPC and HTTP+JSON).

An A2A agent's endpoint may be an ``http://`` or ``https://`` URL: the card itself
(``https://host/.well-known/agent-card.json``) or the agent's base URL (the well-known
path is then appended). :class:`A2ACards` fetches the card (at most
:data:`MAX_CARD_BYTES`, parsed by a2a-sdk's ``parse_agent_card``, which also reads 0.3
cards), keeps it, and reads it again when a call finds it older than the refresh
interval (a failed re-read keeps the last card). :func:`choose_binding` picks the
interface to call: the first of the card's ``supported_interfaces`` (the agent's order
of preference) whose binding Podium speaks (``GRPC``, ``JSONRPC``, ``HTTP+JSON``), and
among that binding's interfaces version 1.0, else another 1.x, else 0.3, else one
without a version.

- A ``GRPC`` interface is called like an agent registered by ``HOST:PORT``
  (:class:`~podium.server.agents.a2a.A2AClient` over the channel pool).
- ``JSONRPC`` and ``HTTP+JSON`` interfaces are called through a2a-sdk's ``Client``,
  made by its ``ClientFactory`` for that one interface (the factory picks the 0.3
  transports for a 0.3 interface). :class:`HttpApi` gives that client the call shape of
  the ``lf.a2a.v1`` gRPC stub, so the attempt loop
  (:class:`~podium.server.agents.a2a_attempt.AttemptCalls`) is the same on every
  binding: failures become the gRPC status the A2A specification maps them to
  (a2a-sdk's ``A2A_ERROR_MAPPING``: ``TaskNotFoundError`` -> ``NOT_FOUND``, ...), with
  the details ``<A2A error name>: <message>``, so an A2A error is told from a broken
  connection (``UNAVAILABLE``) as on gRPC; a missed deadline is ``DEADLINE_EXCEEDED``; a
  reply that cannot be read is an ``A2AConversionError``.

Every HTTP connection (card, calls) goes through one ``httpx.AsyncClient`` whose
connections are opened by :class:`podium.server.outbound_http.GuardedBackend` with the
agents' outbound guard (:meth:`EndpointGuard.addresses
<podium.server.agents.endpoints.EndpointGuard.addresses>`): only to checked addresses,
never following redirects, reading nothing from the environment (no proxies).
``https://`` agents are verified against ``PODIUM_AGENT_TLS_CA_FILE`` when set, else
the system's roots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, NoReturn, TypeVar, cast

import grpc
import httpcore
import httpx
from a2a.client import ClientCallContext, ClientConfig, ClientFactory
from a2a.client.card_resolver import parse_agent_card
from a2a.client.client import Client
from a2a.client.errors import A2AClientError, A2AClientTimeoutError
from a2a.compat.v0_3.versions import is_legacy_version
from a2a.types import a2a_pb2
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, TransportProtocol
from a2a.utils.errors import A2A_ERROR_MAPPING, A2AError
from google.protobuf.json_format import ParseError

from podium.server.agents.a2a_v03 import A2AConversionError
from podium.server.agents.endpoints import EndpointGuard, EndpointRefused
from podium.server.outbound_http import GuardedBackend, UrlRefused, parse_http_url

__all__ = [
    "DEFAULT_CARD_REFRESH_SECONDS",
    "MAX_CARD_BYTES",
    "SUPPORTED_BINDINGS",
    "A2ACards",
    "Binding",
    "CardUnavailable",
    "HttpApi",
    "card_location",
    "choose_binding",
    "is_card_url",
]

log = logging.getLogger("podium.agents.a2a")
T = TypeVar("T")

SUPPORTED_BINDINGS = (
    TransportProtocol.GRPC,
    TransportProtocol.JSONRPC,
    TransportProtocol.HTTP_JSON,
)
"""The A2A protocol bindings Podium calls."""
MAX_CARD_BYTES = 1024 * 1024
"""The largest agent card Podium reads."""
DEFAULT_CARD_REFRESH_SECONDS = 300.0
_CARD_TIMEOUT_SECONDS = 10.0
_HTTP_SCHEMES = ("http://", "https://")


class CardUnavailable(Exception):
    """The agent card could not be fetched or read, or lists no binding Podium speaks.

    ``transient`` is True when fetching it may work later (the agent is down, answered
    5xx, timed out), False when the card itself is unusable.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def is_card_url(endpoint: str) -> bool:
    """Whether an A2A agent's endpoint is its card's URL (http:// or https://)."""
    return endpoint.lower().startswith(_HTTP_SCHEMES)


def card_location(url: str) -> str:
    """The URL the card of the agent at ``url`` is read from: ``url`` itself, or with
    the well-known path appended when ``url`` has no path. Raises UrlRefused."""
    target = parse_http_url(url)
    if target.target in ("/", ""):
        return url.rstrip("/") + AGENT_CARD_WELL_KNOWN_PATH
    return url


@dataclasses.dataclass(frozen=True, slots=True)
class Binding:
    """The interface of an agent card Podium calls.

    Attributes:
        protocol: ``GRPC``, ``JSONRPC`` or ``HTTP+JSON``.
        url: the interface's URL (a gRPC target for ``GRPC``).
        version: its A2A protocol version (``1.0``, ``0.3``; "" when the card gives none).
    """

    protocol: str
    url: str
    version: str

    @property
    def legacy(self) -> bool:
        """Whether the interface speaks A2A 0.3."""
        return is_legacy_version(self.version)

    @property
    def grpc(self) -> bool:
        """Whether the interface is the gRPC binding."""
        return self.protocol == TransportProtocol.GRPC


def _major_minor(version: str) -> tuple[int, int] | None:
    head = version.split(".")
    try:
        return int(head[0]), int(head[1]) if len(head) > 1 else 0
    except ValueError:
        return None


def _rank(interface: a2a_pb2.AgentInterface) -> int | None:
    """Preference among one binding's interfaces (lower first; None: unsupported)."""
    if not interface.protocol_version:
        return 3
    version = _major_minor(interface.protocol_version)
    if version == (1, 0):
        return 0
    if version is not None and version[0] == 1:
        return 1
    if is_legacy_version(interface.protocol_version):
        return 2
    return None


def choose_binding(card: a2a_pb2.AgentCard) -> Binding:
    """The interface of ``card`` Podium calls (see the module docstring).

    Raises:
        CardUnavailable: no interface has a binding and version Podium speaks.
    """
    interfaces = list(card.supported_interfaces)
    for first in interfaces:
        protocol = first.protocol_binding.upper()
        if protocol not in SUPPORTED_BINDINGS:
            continue
        ranked = [
            (rank, index, interface)
            for index, interface in enumerate(interfaces)
            if interface.protocol_binding.upper() == protocol
            and interface.url
            and (rank := _rank(interface)) is not None
        ]
        if ranked:
            _, _, best = min(ranked, key=lambda item: (item[0], item[1]))
            return Binding(protocol=protocol, url=best.url, version=best.protocol_version)
    listed = ", ".join(
        f"{i.protocol_binding or '?'} {i.protocol_version or ''}".strip() for i in interfaces
    )
    raise CardUnavailable(
        "the agent card lists no interface Podium can call (bindings GRPC, JSONRPC, "
        f"HTTP+JSON; A2A 1.x or 0.3); it lists: {listed or 'none'}",
        transient=False,
    )


# --------------------------------------------------------------------------- HTTP client


_HTTPCORE_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _httpx_error(exc: Exception) -> Exception:
    """The httpx error of an httpcore one (what a2a-sdk's transports handle)."""
    for source, target in _HTTPCORE_ERRORS:
        if isinstance(exc, source):
            return target(str(exc))
    return exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as exc:
            mapped = _httpx_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


class _GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool whose connections go only to addresses
    the agents' guard admitted (:class:`GuardedBackend`)."""

    def __init__(self, guard: EndpointGuard, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=30.0,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(guard.addresses),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=cast(Any, request.stream),
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core)
        except Exception as exc:
            mapped = _httpx_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _ssl_context(tls_ca: bytes | None) -> ssl.SSLContext:
    if tls_ca is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cadata=tls_ca.decode("ascii"))


def http_client(guard: EndpointGuard | None, tls_ca: bytes | None = None) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` of A2A agents over HTTP (see the module docstring);
    without a guard (agent clients used on their own, in tests) connections go where
    names resolve."""
    context = _ssl_context(tls_ca)
    if guard is None:
        return httpx.AsyncClient(trust_env=False, verify=context, timeout=_CARD_TIMEOUT_SECONDS)
    return httpx.AsyncClient(
        transport=_GuardedTransport(guard, context),
        trust_env=False,
        timeout=_CARD_TIMEOUT_SECONDS,
    )


# --------------------------------------------------------------------------- cards


@dataclasses.dataclass
class _Card:
    card: a2a_pb2.AgentCard
    binding: Binding
    read_at: float
    client: Client | None = None


class A2ACards:
    """The cards of A2A agents registered by URL, and one a2a-sdk ``Client`` per card
    whose chosen binding is HTTP (see the module docstring).

    Args:
        guard: the agents' outbound guard (None: connect where names resolve).
        refresh_seconds: a card older than this is read again by the next call.
        tls_ca: PEM CA bundle trusted for ``https://`` agents (None: the system's roots).
    """

    def __init__(
        self,
        guard: EndpointGuard | None = None,
        *,
        refresh_seconds: float = DEFAULT_CARD_REFRESH_SECONDS,
        tls_ca: bytes | None = None,
    ) -> None:
        self.guard = guard
        self.refresh_seconds = refresh_seconds
        self._http = http_client(guard, tls_ca)
        self._cards: dict[str, _Card] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    async def fetch(self, url: str) -> a2a_pb2.AgentCard:
        """Read the card of the agent at ``url`` now (:func:`card_location`).

        Raises:
            EndpointRefused: the URL or an address of its host is refused (``transient``
                when the name does not resolve).
            CardUnavailable: the card could not be read or is not a card.
        """
        try:
            location = card_location(url)
        except UrlRefused as exc:
            raise EndpointRefused(str(exc)) from None
        if self.guard is not None:
            await self.guard.resolve_url(location)
        try:
            async with self._http.stream(
                "GET", location, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise CardUnavailable(
                        f"GET {location} answered HTTP {response.status_code}",
                        transient=response.status_code >= 500 or response.status_code == 429,
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_CARD_BYTES:
                        raise CardUnavailable(
                            f"the agent card at {location} is larger than {MAX_CARD_BYTES} bytes",
                            transient=False,
                        )
        except httpx.HTTPError as exc:
            raise CardUnavailable(
                f"cannot read the agent card at {location}: {type(exc).__name__}: {exc}",
                transient=True,
            ) from None
        try:
            return parse_agent_card(json.loads(body))
        except (ValueError, ParseError, TypeError, KeyError) as exc:
            raise CardUnavailable(
                f"{location} did not answer an A2A agent card: {exc}", transient=False
            ) from None

    async def binding(self, url: str) -> Binding:
        """The interface to call of the agent at ``url``, from its card (read now when
        unknown or older than ``refresh_seconds``; a failed re-read keeps the last card
        and is logged).

        Raises:
            EndpointRefused, CardUnavailable: as :meth:`fetch`, or the card lists no
                binding Podium speaks.
        """
        entry = self._cards.get(url)
        if entry is not None and time.monotonic() - entry.read_at < self.refresh_seconds:
            return entry.binding
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            entry = self._cards.get(url)
            if entry is not None and time.monotonic() - entry.read_at < self.refresh_seconds:
                return entry.binding
            try:
                entry = await self.remember(url, await self.fetch(url))
            except (EndpointRefused, CardUnavailable) as exc:
                if entry is None or not getattr(exc, "transient", False):
                    raise
                log.warning(
                    "A2A agent card could not be read again; keeping the last one",
                    extra={"endpoint": url, "error": str(exc)},
                )
                entry.read_at = time.monotonic()
            return entry.binding

    async def remember(self, url: str, card: a2a_pb2.AgentCard) -> _Card:
        """Keep ``card`` as the card of ``url`` (its binding chosen now); a client made
        for an older card is closed. Raises CardUnavailable (no binding)."""
        binding = choose_binding(card)
        old = self._cards.get(url)
        entry = _Card(card=card, binding=binding, read_at=time.monotonic())
        if old is not None and old.card == card:
            entry.client = old.client
        elif old is not None and old.client is not None:
            await old.client.close()
        self._cards[url] = entry
        return entry

    def client(self, url: str) -> Client:
        """The a2a-sdk client of the HTTP interface chosen for ``url`` (after
        :meth:`binding`), made by a2a-sdk's ``ClientFactory`` for that interface only."""
        entry = self._cards[url]
        if entry.client is None:
            card = a2a_pb2.AgentCard()
            card.CopyFrom(entry.card)
            del card.supported_interfaces[:]
            card.supported_interfaces.add(
                protocol_binding=entry.binding.protocol,
                url=entry.binding.url,
                protocol_version=entry.binding.version,
            )
            config = ClientConfig(
                streaming=True,
                httpx_client=self._http,
                supported_protocol_bindings=[entry.binding.protocol],
            )
            entry.client = ClientFactory(config).create(card)
        return entry.client

    async def close(self) -> None:
        """Close the clients and the HTTP connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for entry in self._cards.values():
            if entry.client is not None:
                await entry.client.close()
                entry.client = None
        await self._http.aclose()


# --------------------------------------------------------------------------- calls


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details, debug_error_string=None
    )


_HTTP_STATUSES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
}


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, kind):
            return current
        current = current.__cause__
    return None


def translate(exc: BaseException) -> BaseException:
    """The error the attempt loop reads for what an HTTP call raised (module docstring):
    an ``AioRpcError``, an ``A2AConversionError``, or ``exc`` itself (cancellation,
    bugs)."""
    if isinstance(exc, grpc.aio.AioRpcError | A2AConversionError):
        return exc
    if isinstance(exc, EndpointRefused):
        return _rpc_error(
            grpc.StatusCode.PERMISSION_DENIED, f"Podium refuses to connect to the agent: {exc}"
        )
    if isinstance(exc, A2AClientTimeoutError | httpx.TimeoutException | TimeoutError):
        return _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "the A2A call timed out")
    if isinstance(exc, A2AError) and type(exc) in A2A_ERROR_MAPPING:
        status = grpc.StatusCode[A2A_ERROR_MAPPING[type(exc)].grpc_status]
        return _rpc_error(status, f"{type(exc).__name__}: {exc.message}")
    if isinstance(exc, A2AClientError):
        refused = _cause(exc, EndpointRefused)
        if refused is not None:
            return translate(refused)
        status_error = _cause(exc, httpx.HTTPStatusError)
        if isinstance(status_error, httpx.HTTPStatusError):
            http = status_error.response.status_code
            code = _HTTP_STATUSES.get(http, grpc.StatusCode.UNAVAILABLE)
            return _rpc_error(code, f"the agent answered HTTP {http}")
        if _cause(exc, httpx.ConnectError) is not None:
            return _rpc_error(grpc.StatusCode.UNAVAILABLE, f"connect failed: {exc.message}")
        if _cause(exc, httpx.RequestError) is not None:
            # The connection broke (e.g. mid-stream): as gRPC's UNAVAILABLE.
            return _rpc_error(grpc.StatusCode.UNAVAILABLE, exc.message)
        return A2AConversionError(f"the A2A agent's answer could not be read: {exc.message}")
    if isinstance(exc, A2AError):
        return _rpc_error(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc.message}")
    if isinstance(exc, ValueError | ParseError | KeyError | TypeError):
        return A2AConversionError(f"the A2A agent's answer could not be read: {exc}")
    if isinstance(exc, httpx.HTTPError):
        return _rpc_error(grpc.StatusCode.UNAVAILABLE, f"{type(exc).__name__}: {exc}")
    return exc


def _raise(exc: BaseException) -> NoReturn:
    translated = translate(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def _context(timeout: float, metadata: Sequence[tuple[str, str]]) -> ClientCallContext:
    return ClientCallContext(timeout=max(timeout, 0.001), service_parameters=dict(metadata))


async def _unary(call: Awaitable[T], timeout: float) -> T:  # noqa: ASYNC109
    """The answer of a unary call within ``timeout``, its errors translated."""
    try:
        async with asyncio.timeout(timeout):
            return await call
    except Exception as exc:
        _raise(exc)


class HttpStream:
    """A stream of an HTTP binding with the part of a grpc.aio stream call the attempt
    loop uses: :meth:`read` returns the next ``StreamResponse`` or None at the end, and
    raises the translated errors (module docstring); the call's deadline bounds every
    read. As :class:`~podium.server.agents.a2a_v03.V03Call`, a cancelled :meth:`read`
    does not end the stream (the next read takes its result); :meth:`cancel` does."""

    __slots__ = ("_closing", "_deadline", "_done", "_events", "_pending")

    def __init__(self, events: AsyncIterator[a2a_pb2.StreamResponse], timeout: float) -> None:
        self._events = events
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._pending: asyncio.Future[Any] | None = None
        self._done = False
        self._closing: asyncio.Task[None] | None = None

    async def _next(self) -> Any:
        try:
            return await anext(self._events)
        except StopAsyncIteration:
            return None
        except Exception as exc:
            _raise(exc)

    async def read(self) -> Any:
        if self._done:
            return None
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._next())
            self._pending.add_done_callback(_retrieve)
        remaining = self._deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                message = await asyncio.shield(self._pending)
        except TimeoutError:
            self.cancel()
            raise _rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the A2A call outlived its deadline"
            ) from None
        except BaseException:
            if self._pending is not None and self._pending.done():
                self._pending = None
            raise
        self._pending = None
        return message

    def cancel(self) -> bool:
        """End the stream (its HTTP response is closed)."""
        if self._done:
            return False
        self._done = True
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        else:
            close = getattr(self._events, "aclose", None)
            if close is not None:
                self._closing = asyncio.ensure_future(close())
                self._closing.add_done_callback(_retrieve)
        return True

    def cancelled(self) -> bool:
        """Never cancelled by a closing channel (there is none)."""
        return False

    async def aclose(self) -> None:
        """:meth:`cancel`, then wait until the stream's response is closed."""
        self.cancel()
        pending = self._pending if self._pending is not None else self._closing
        if pending is not None:
            await asyncio.wait([pending])


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a read nobody awaits any more as seen (no asyncio warning)."""
    if not future.cancelled():
        future.exception()


class HttpApi:
    """The ``lf.a2a.v1`` calls of the attempt loop (``SendStreamingMessage``,
    ``SubscribeToTask``, ``GetTask``, ``CancelTask``, ``ListTasks``, keyword arguments
    ``timeout`` and ``metadata`` as grpc.aio's), made with an a2a-sdk ``Client`` over
    JSON-RPC or HTTP+JSON; ``metadata`` is sent as HTTP headers."""

    __slots__ = ("client", "streams")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.streams: list[HttpStream] = []

    async def close(self) -> None:
        """End the streams still open (their HTTP responses are closed now rather than
        when collected): the attempt has its outcome."""
        for stream in self.streams:
            await stream.aclose()

    def SendStreamingMessage(
        self,
        request: a2a_pb2.SendMessageRequest,
        *,
        timeout: float,
        metadata: Sequence[tuple[str, str]],
    ) -> HttpStream:
        events = self.client.send_message(request, context=_context(timeout, metadata))
        self.streams.append(HttpStream(events, timeout))
        return self.streams[-1]

    def SubscribeToTask(
        self,
        request: a2a_pb2.SubscribeToTaskRequest,
        *,
        timeout: float,
        metadata: Sequence[tuple[str, str]],
    ) -> HttpStream:
        events = self.client.subscribe(request, context=_context(timeout, metadata))
        self.streams.append(HttpStream(events, timeout))
        return self.streams[-1]

    async def GetTask(
        self,
        request: a2a_pb2.GetTaskRequest,
        *,
        timeout: float,  # noqa: ASYNC109
        metadata: Sequence[tuple[str, str]],
    ) -> a2a_pb2.Task:
        return await _unary(
            self.client.get_task(request, context=_context(timeout, metadata)), timeout
        )

    async def CancelTask(
        self,
        request: a2a_pb2.CancelTaskRequest,
        *,
        timeout: float,  # noqa: ASYNC109
        metadata: Sequence[tuple[str, str]],
    ) -> a2a_pb2.Task:
        return await _unary(
            self.client.cancel_task(request, context=_context(timeout, metadata)), timeout
        )

    async def ListTasks(
        self,
        request: a2a_pb2.ListTasksRequest,
        *,
        timeout: float,  # noqa: ASYNC109
        metadata: Sequence[tuple[str, str]],
    ) -> a2a_pb2.ListTasksResponse:
        return await _unary(
            self.client.list_tasks(request, context=_context(timeout, metadata)), timeout
        )
