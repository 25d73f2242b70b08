"""The HTTP side of webhook delivery: one POST per try through httpcore, connected only
to addresses the SSRF guard approved.

httpcore (the engine under httpx) writes the request and parses the answer (h11). Its
public network-backend hook is where the guard sits:
:class:`~podium.server.outbound_http.GuardedBackend` (shared with A2A agents over HTTP)
resolves the URL's host once, checks every address
(:func:`~podium.server.events.ssrf.resolve_checked`) and opens the TCP connection to a
checked address, never to the name. The URL keeps the host name, so the ``Host``
header, the TLS server name (SNI) and the certificate check are the host's. A name that
re-binds to a private address after StartRun's check is refused at delivery time.

httpx's own transports do not take a network backend, hence httpcore directly; httpx
would add nothing here: redirects are never followed (3xx is a failed try), nothing is
read from the environment (no proxies), connections are never reused (each try
resolves and checks again), and only the status line is kept (the body is never read).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import httpcore

from podium.server.events.ssrf import WebhookTarget, resolve_checked
from podium.server.outbound_http import GuardedBackend

__all__ = ["HttpAnswer", "WebhookSender", "describe_failure", "post_webhook"]

_USER_AGENT = "Podium-Webhooks/1"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """The status line of a receiver's answer."""

    status: int
    reason: str


class WebhookSender:
    """POSTs webhook bodies; one per dispatcher (at most ``max_connections`` tries at
    once, never a kept-alive connection)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout_seconds: float,
        max_connections: int = 16,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout = timeout_seconds
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(),
            max_connections=max_connections,
            max_keepalive_connections=0,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(
                functools.partial(resolve_checked, allow_private=allow_private)
            ),
        )

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def post(
        self, target: WebhookTarget, body: bytes, headers: Mapping[str, str]
    ) -> HttpAnswer:
        """POST ``body`` (JSON) to ``target`` and return the status line of the answer.

        ``timeout_seconds`` bounds the whole try (resolution, connection, TLS, answer)
        and each phase. Raises WebhookRefused (the host does not resolve, or to a
        refused address), TimeoutError, or an ``httpcore`` error: ConnectError (its
        cause is the OSError or ssl.SSLError), ConnectTimeout / ReadTimeout /
        WriteTimeout, RemoteProtocolError (the answer is not HTTP/1.x),
        LocalProtocolError (e.g. a header value with a line break), ReadError /
        WriteError.
        """
        url = httpcore.URL(
            scheme=target.scheme, host=target.host, port=target.port, target=target.target
        )
        request_headers = [
            ("Host", target.host_header),
            ("User-Agent", _USER_AGENT),
            ("Content-Type", "application/json"),
            ("Connection", "close"),
            *headers.items(),
        ]
        phase = self._timeout
        timeouts = {"connect": phase, "read": phase, "write": phase, "pool": phase}
        async with asyncio.timeout(self._timeout):
            async with self._pool.stream(
                "POST",
                url,
                headers=request_headers,
                content=body,
                extensions={"timeout": timeouts},
            ) as response:
                reason = response.extensions.get("reason_phrase", b"")
                return HttpAnswer(
                    status=response.status,
                    reason=reason.decode("latin-1").strip() if isinstance(reason, bytes) else "",
                )


async def post_webhook(
    target: WebhookTarget,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool,
    timeout_seconds: float,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpAnswer:
    """One :meth:`WebhookSender.post` with a sender of its own."""
    async with WebhookSender(
        allow_private=allow_private,
        timeout_seconds=timeout_seconds,
        max_connections=1,
        ssl_context=ssl_context,
    ) as sender:
        return await sender.post(target, body, headers)


def describe_failure(exc: BaseException, timeout_seconds: float) -> str | None:
    """The recorded error of a try that raised ``exc`` while sending, or None when
    ``exc`` is not a sending failure (a bug)."""
    if isinstance(exc, TimeoutError | httpcore.TimeoutException):
        return f"timed out after {timeout_seconds:g}s"
    if isinstance(exc, httpcore.LocalProtocolError):
        return f"cannot send the request: {exc}"
    if isinstance(exc, httpcore.ProtocolError):
        return f"bad HTTP answer: {exc}"
    cause = _os_cause(exc)
    if isinstance(cause, ssl.SSLError):
        return f"TLS error: {cause.reason or cause}"
    if isinstance(cause, OSError):
        return f"connection failed: {cause.strerror or cause}"
    if isinstance(exc, httpcore.NetworkError):
        return f"connection failed: {exc}"
    return None


def _os_cause(exc: BaseException) -> OSError | None:
    """The innermost OSError ``exc`` was raised from or during (httpcore raises
    ConnectError while handling the socket's or TLS's own error, which anyio may itself
    wrap), or None."""
    found: OSError | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            found = current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return found
