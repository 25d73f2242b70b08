"""The outbound guard of agent endpoints: which hosts Podium may open a gRPC channel to.

An agent endpoint is ``HOST:PORT`` (a DNS name, an IPv4 address or a bracketed IPv6
address) or one of the gRPC targets ``dns:///HOST:PORT``, ``ipv4:ADDR:PORT`` and
``ipv6:[ADDR]:PORT`` (:func:`parse_endpoint`), all in plaintext; ``grpcs://HOST:PORT``
is reached over TLS (the certificate must name HOST; ``PODIUM_AGENT_TLS_CA_FILE``),
``grpc://HOST:PORT`` is plaintext, said explicitly. Other targets are refused: ``unix:``
and ``unix-abstract:`` sockets, ``vsock:``, ``xds:``, a ``dns://`` target naming its own
DNS server, lists of addresses, and numeric hosts that are not a dotted quad
(``2130706433``, ``0x7f000001``, ``0177.0.0.1``: resolvers read them as addresses).

:class:`EndpointGuard` resolves the host and checks every address: loopback,
link-local (the cloud metadata address), private, unique-local, unspecified, multicast
and reserved addresses are refused (:func:`podium.server.addresses.address_problem`,
IPv4-mapped and other embedded IPv4 addresses included), as are the names of metadata
services, unless the operator's allow-list (``PODIUM_AGENT_ALLOWED_NETWORKS``) admits
the address or the host name. It runs at registration (RegisterAgent), at start for
static agents (``PODIUM_AGENTS``) and before every call (an endpoint whose host is an
IP literal is checked once: its check needs no DNS): the agent channel pool
(:mod:`.channels`) connects to the address just checked, never to the name, so a name
re-bound to another address after the check (DNS rebinding) cannot redirect a call.

A name's admitted addresses are kept ``cache_seconds`` (``PODIUM_AGENT_DNS_CACHE_SECONDS``)
instead of resolving it before every call: a lookup is a round trip to the resolver
(a thread of the event loop's pool and, for a name the hosts file does not hold, the DNS
server) that every step of an agent named by host name paid before its call. Only
admitted answers are kept (a refusal or a failed lookup is asked again on the next
call), concurrent misses of one name share one lookup, and a call that found nothing
listening drops its name's entry (:meth:`EndpointGuard.forget`), so an agent that moved
is looked up again at once. Keeping an answer cannot admit an address: calls connect
only to addresses checked when they were resolved, and the allow-list does not change
while the server runs; a name re-bound elsewhere is seen when its entry expires.

A2A agents may also be reached over HTTP (their agent card's URL, then the JSON-RPC or
HTTP+JSON interface it lists): :meth:`EndpointGuard.resolve_url` checks such a URL's
form with :func:`podium.server.outbound_http.parse_http_url` (the webhooks' rules) and
its host as above, and :meth:`EndpointGuard.addresses` is the guard of every HTTP
connection (:class:`podium.server.outbound_http.GuardedBackend`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from podium.server.addresses import (
    METADATA_HOSTS,
    Address,
    AllowList,
    address_problem,
)
from podium.server.outbound_http import HttpTarget, UrlRefused, parse_http_url

__all__ = [
    "EndpointGuard",
    "EndpointRefused",
    "HostPort",
    "Resolver",
    "connect_target",
    "endpoint_form_problem",
    "parse_endpoint",
]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses`` (text, without IPv6 zone); raises OSError."""

_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?):(\d+)")
_REFUSED_SCHEMES = ("unix:", "unix-abstract:", "vsock:", "xds:")
_NUMERIC_HOST = re.compile(r"(0[xX][0-9A-Fa-f]*|[0-9]+)(\.(0[xX][0-9A-Fa-f]*|[0-9]+))*\.?")


class EndpointRefused(ValueError):
    """Podium may not connect to this agent endpoint; the message says why.

    ``transient`` is True when the host could not be resolved (it may resolve later),
    False when the endpoint or one of its addresses is refused.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class HostPort:
    """A parsed endpoint: ``host`` is a name or an IP literal (no brackets)."""

    host: str
    port: int
    tls: bool = False
    """Reached over TLS (``grpcs://``), verifying that the certificate names ``host``."""

    @property
    def literal(self) -> Address | None:
        """The host as an IP address, None for a name."""
        try:
            return ipaddress.ip_address(self.host.split("%", 1)[0])
        except ValueError:
            return None


def parse_endpoint(endpoint: str) -> HostPort:
    """The host and port of an agent endpoint, or EndpointRefused (see the module)."""
    lowered = endpoint.lower()
    if lowered.startswith(_REFUSED_SCHEMES):
        scheme = lowered.split(":", 1)[0]
        raise EndpointRefused(
            f"{scheme}: targets are not allowed: agents are reached over TCP (HOST:PORT)"
        )
    rest = endpoint
    tls = lowered.startswith("grpcs://")
    if tls or lowered.startswith("grpc://"):
        rest = endpoint.partition("://")[2]
        if rest.endswith("/"):
            rest = rest[:-1]
    elif lowered.startswith("dns:"):
        rest = endpoint[4:]
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if authority or not slash:
                raise EndpointRefused(
                    "dns: targets naming their own DNS server are not allowed; use "
                    "dns:///HOST:PORT or HOST:PORT"
                )
    elif lowered.startswith(("ipv4:", "ipv6:")):
        rest = endpoint[5:]
        if "," in rest:
            raise EndpointRefused("lists of addresses are not allowed: give one HOST:PORT")
    match = _HOST_PORT.fullmatch(rest)
    if match is None:
        raise EndpointRefused(
            "expected HOST:PORT (e.g. agents.example.com:50061), dns:///HOST:PORT, "
            "ipv4:ADDR:PORT, ipv6:[ADDR]:PORT, or grpcs://HOST:PORT for TLS"
        )
    host, port = match.group(1), int(match.group(3))
    if not 1 <= port <= 65535:
        raise EndpointRefused(f"the port must be between 1 and 65535; got {port}")
    if host.startswith("["):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise EndpointRefused(f"[{host}] is not an IPv6 address") from None
    elif _NUMERIC_HOST.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise EndpointRefused(
                f"{host!r} is a numeric host that is not a dotted-quad IPv4 address "
                "(resolvers would read it as an address): write the address as a.b.c.d"
            ) from None
    return HostPort(host=host, port=port, tls=tls)


def endpoint_form_problem(endpoint: str) -> str | None:
    """Why the form of ``endpoint`` is refused (no DNS), or None."""
    try:
        parse_endpoint(endpoint)
    except EndpointRefused as exc:
        return str(exc)
    return None


def connect_target(address: str, port: int) -> str:
    """The gRPC target of one checked address (``ipv4:1.2.3.4:80``, ``ipv6:[::1]:80``):
    gRPC connects to it without resolving anything."""
    if ":" in address:
        return f"ipv6:[{address}]:{port}"
    return f"ipv4:{address}:{port}"


async def _getaddrinfo(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]).split("%", 1)[0], None)
    return list(seen)


_MAX_LITERALS = 4096
"""Bound of :class:`EndpointGuard`'s cache of IP-literal endpoints."""

_MAX_NAMES = 4096
"""Bound of :class:`EndpointGuard`'s cache of resolved names (expired entries are dropped
first when it is full, then the oldest)."""


def _name_key(target: HostPort) -> tuple[str, int]:
    """The key of ``target`` in :class:`EndpointGuard`'s cache of names: one entry per
    name however it is written (case, a trailing dot) and port."""
    return target.host.lower().rstrip("."), target.port


class EndpointGuard:
    """Resolves agent endpoints and admits only allowed addresses (see the module).

    Args:
        allow: the operator's allow-list (``PODIUM_AGENT_ALLOWED_NETWORKS``).
        resolver: ``(host, port) -> addresses``; the system resolver by default (tests
            inject one to re-bind a name).
        cache_seconds: how long a name's admitted addresses are kept
            (``PODIUM_AGENT_DNS_CACHE_SECONDS``); 0 resolves the name before every call.
        clock: seconds, monotonic (tests inject one).
    """

    def __init__(
        self,
        allow: AllowList | None = None,
        resolver: Resolver | None = None,
        *,
        cache_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allow = allow if allow is not None else AllowList()
        self._resolve = resolver or _getaddrinfo
        self.cache_seconds = cache_seconds
        self._clock = clock
        # Admitted endpoints whose host is an IP literal: their check needs no DNS and
        # depends only on the endpoint and the (frozen) allow-list, so it is done once
        # instead of before every call (25 us, ~2.5% of the engine's CPU per step).
        self._literals: dict[str, tuple[HostPort, tuple[str, ...]]] = {}
        # (host, port) -> (expiry by the clock, admitted addresses); see the module.
        self._names: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}
        self._lookups: dict[tuple[str, int], asyncio.Future[tuple[str, ...]]] = {}

    def refusal(self, host: str, address: Address) -> str | None:
        """Why ``address`` (of ``host``) is refused, or None when it is admitted."""
        problem = address_problem(address)
        if problem is None or self.allow.admits_address(address):
            return None
        if self.allow.admits_host(host):
            return None
        where = host if host == str(address) else f"{host} resolves to {address}, which"
        return (
            f"{where} is a {problem} address; agents must be on public addresses unless "
            "PODIUM_AGENT_ALLOWED_NETWORKS admits it"
        )

    def check_host(self, target: HostPort) -> None:
        """The checks that need no DNS: metadata host names, IP literals."""
        name = target.host.lower().rstrip(".")
        if name in METADATA_HOSTS and not self.allow.admits_host(name):
            raise EndpointRefused(
                f"{target.host} is a cloud metadata service; agents may not use it unless "
                "PODIUM_AGENT_ALLOWED_NETWORKS names it"
            )
        literal = target.literal
        if literal is not None:
            problem = self.refusal(target.host, literal)
            if problem is not None:
                raise EndpointRefused(problem)

    async def resolve(self, endpoint: str) -> tuple[HostPort, list[str]]:
        """The endpoint's host and port and its addresses, every one admitted: the only
        addresses a call to this agent may connect to.

        Raises:
            EndpointRefused: the form, the host or an address is refused; or the name
                does not resolve (``transient``).
        """
        known = self._literals.get(endpoint)
        if known is not None:
            return known[0], list(known[1])
        target = parse_endpoint(endpoint)
        addresses = await self.admitted(target)
        if target.literal is not None and len(self._literals) < _MAX_LITERALS:
            self._literals[endpoint] = (target, tuple(addresses))
        return target, addresses

    async def resolve_url(self, url: str) -> tuple[HttpTarget, list[str]]:
        """:meth:`resolve` for an agent reached over HTTP (an A2A agent card or
        interface URL, http:// or https://): the URL's parts and its admitted addresses.

        Raises:
            EndpointRefused: the URL's form (:func:`parse_http_url`), its host or an
                address is refused; or the name does not resolve (``transient``).
        """
        try:
            target = parse_http_url(url)
        except UrlRefused as exc:
            raise EndpointRefused(str(exc)) from None
        return target, await self.admitted(HostPort(host=target.host, port=target.port))

    async def addresses(self, host: str, port: int) -> list[str]:
        """The admitted addresses of ``host`` (an
        :data:`~podium.server.outbound_http.AddressGuard`: what an HTTP connection to an
        agent may connect to). Raises EndpointRefused."""
        literal = host.strip("[]")
        return await self.admitted(HostPort(host=literal, port=port))

    async def admitted(self, target: HostPort) -> list[str]:
        """The addresses of ``target``'s host, every one admitted: kept from an earlier
        lookup for ``cache_seconds`` (module doc). Raises EndpointRefused (``transient``
        when the name does not resolve)."""
        self.check_host(target)
        literal = target.literal
        if literal is not None:
            return [str(literal)]
        if self.cache_seconds <= 0:
            return await self._lookup(target)
        key = _name_key(target)
        cached = self._names.get(key)
        if cached is not None and cached[0] > self._clock():
            return list(cached[1])
        flight = self._lookups.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._lookup_and_keep(key, target))
            self._lookups[key] = flight
            flight.add_done_callback(lambda done: self._flight_done(key, done))
        # Shielded: a caller cancelled meanwhile does not cancel the others' lookup.
        return list(await asyncio.shield(flight))

    def forget(self, endpoint: str) -> None:
        """Drop the kept addresses of ``endpoint``'s host (a call to it found nothing
        listening: the next call looks the name up again)."""
        try:
            target = parse_endpoint(endpoint)
        except EndpointRefused:
            return
        self._names.pop(_name_key(target), None)

    async def _lookup_and_keep(self, key: tuple[str, int], target: HostPort) -> tuple[str, ...]:
        addresses = tuple(await self._lookup(target))
        if len(self._names) >= _MAX_NAMES:
            now = self._clock()
            for name in [k for k, (expiry, _) in self._names.items() if expiry <= now]:
                del self._names[name]
            while len(self._names) >= _MAX_NAMES:
                del self._names[next(iter(self._names))]
        self._names[key] = (self._clock() + self.cache_seconds, addresses)
        return addresses

    def _flight_done(self, key: tuple[str, int], flight: asyncio.Future[tuple[str, ...]]) -> None:
        if self._lookups.get(key) is flight:
            del self._lookups[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: every waiter may have been cancelled

    async def _lookup(self, target: HostPort) -> list[str]:
        """Resolve ``target``'s host now and check every address."""
        try:
            addresses = list(await self._resolve(target.host, target.port))
        except OSError as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else exc
            message = f"cannot resolve {target.host}: {reason}"
            raise EndpointRefused(message, transient=True) from None
        if not addresses:
            raise EndpointRefused(f"cannot resolve {target.host}: no address", transient=True)
        for text in addresses:
            problem = self.refusal(target.host, ipaddress.ip_address(text))
            if problem is not None:
                raise EndpointRefused(problem)
        return addresses
