"""HTTP(S) URLs Podium connects to, and the connection hook that pins each connection to
addresses a guard checked.

Shared by the two outbound HTTP clients of the server: webhook deliveries
(:mod:`podium.server.events.webhook_http`, checked by the SSRF guard
:mod:`podium.server.events.ssrf`) and A2A agents reached over HTTP
(:mod:`podium.server.agents.a2a_http`, checked by the agents' outbound guard
:mod:`podium.server.agents.endpoints`). What differs is only which addresses are
admitted, so the guard is a function given to :class:`GuardedBackend`.

- :func:`parse_http_url` checks the form of a URL (no DNS): http(s), a host, no user
  information, ASCII path and query, a port other than 0.
- :class:`GuardedBackend` is httpcore's public network-backend hook: its ``connect_tcp``
  resolves the host once through the guard and opens the TCP connection to a checked
  address, never to the name. The URL keeps the host name, so the ``Host`` header, the
  TLS server name (SNI) and the certificate check are the host's, and a name that
  re-binds to a refused address after an earlier check is refused when it connects.

A neutral module: it imports nothing of Podium.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore

__all__ = [
    "MAX_URL_LENGTH",
    "AddressGuard",
    "GuardedBackend",
    "HttpTarget",
    "UrlRefused",
    "parse_http_url",
]

MAX_URL_LENGTH = 2048

AddressGuard = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``: resolves ``host`` and returns the addresses a connection
may go to (every one checked), or raises (a ``ValueError`` naming the refusal)."""


class UrlRefused(ValueError):
    """The form of the URL is not one Podium connects to."""


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """A parsed http(s) URL.

    Attributes:
        host: the host name or IP literal (IDNA-encoded, no brackets).
        host_header: the ``Host`` header (``host[:port]``, IPv6 in brackets).
        target: the request target (path and query; fragments are not sent).
    """

    url: str
    scheme: str
    host: str
    port: int
    host_header: str
    target: str


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def parse_http_url(url: str) -> HttpTarget:
    """Parse and check the form of an http(s) URL (no DNS). Raises UrlRefused."""
    if not url:
        raise UrlRefused("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise UrlRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"the URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("only http:// and https:// URLs are allowed")
    if "@" in parts.netloc:
        raise UrlRefused("the URL must not contain user information (user:password@)")
    host = parts.hostname or ""
    if not host:
        raise UrlRefused("the URL has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UrlRefused("the URL's host name is not a valid name") from None
    if port == 0:
        raise UrlRefused("the URL's port must not be 0")
    if not (parts.path + parts.query).isascii():
        raise UrlRefused("the URL's path and query must be ASCII (percent-encode the rest)")
    default_port = 443 if scheme == "https" else 80
    shown = f"[{host}]" if _is_ipv6(host) else host
    host_header = shown if port is None or port == default_port else f"{shown}:{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return HttpTarget(
        url=url,
        scheme=scheme,
        host=host,
        port=port or default_port,
        host_header=host_header,
        target=target,
    )


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the addresses ``guard`` returns for a host, in its order: the first
    that accepts a connection is used. TLS is started by httpcore on the returned
    stream, with the URL's host name. Unix sockets are refused."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._tcp = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._guard(host, port)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._tcp.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        if failure is None:
            raise httpcore.ConnectError(f"{host} has no address to connect to")
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("Podium never connects over a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._tcp.sleep(seconds)
