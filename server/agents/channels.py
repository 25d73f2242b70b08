"""The gRPC channels Podium opens to agents: one ``grpc.aio`` channel per endpoint.

:class:`AgentChannels` is the one pool both agent clients share: the ``podium.agent.v1``
client (:class:`~podium.server.agents.client.AgentClient`) and the A2A client
(:class:`~podium.server.agents.a2a.A2AClient`). A channel is opened on the first call to
an endpoint, reused by every later call of either client, and closed by
:meth:`AgentChannels.discard` (that endpoint) or :meth:`AgentChannels.close` (all of
them, at shutdown). Channels are never closed for being idle: an idle ``grpc.aio``
channel holds at most one connection and sends no keepalive pings (see below).

Every channel has the same options: the largest message sent or received, keepalive
pings while calls are active (so a dead agent host is noticed during a long, silent
task) and a short reconnection backoff (gRPC's default, up to 120 s, would fail calls
long after an agent is back).

What a client builds on a channel (its stubs, the A2A protocol version it detected) is
kept by the client itself (:class:`PooledClient`, the base of both clients), keyed by
endpoint and rebuilt when the pool's channel for that endpoint was replaced.

With an :class:`~podium.server.agents.endpoints.EndpointGuard` (the server always has
one), :meth:`AgentChannels.connect` runs before every call: it resolves the endpoint,
checks every address, and keeps (or opens) a channel to one checked address: the
channel's target is that IP (``ipv4:1.2.3.4:50061``), with the endpoint's host name as
its ``:authority``, so gRPC never resolves the name itself and a name re-bound after the
check (DNS rebinding) cannot redirect the call. A channel whose address no longer
resolves is replaced; the old one is closed once its calls in flight finished (or after
``retire_grace_seconds``).

An endpoint ``grpcs://HOST:PORT`` gets a TLS channel: it still connects to the checked
address, and verifies that the agent's certificate names HOST
(``grpc.ssl_target_name_override``), chaining to ``tls_ca`` (``PODIUM_AGENT_TLS_CA_FILE``,
else the system's roots); with ``tls_client`` (``PODIUM_AGENT_TLS_CERT_FILE``) Podium
presents that certificate (mTLS). A failed handshake fails the call with
``UNAVAILABLE`` (the attempt's ``AGENT_UNAVAILABLE``), like an agent that is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc

from podium.server.agents.endpoints import (
    EndpointGuard,
    EndpointRefused,
    connect_target,
    parse_endpoint,
)
from podium.server.tls import KeyPair, channel_credentials

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "AgentChannels", "PooledClient"]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""gRPC's own default limit of a received message."""

T = TypeVar("T")


class AgentChannels:
    """One reused ``grpc.aio`` channel per agent endpoint.

    Args:
        max_message_bytes: largest message sent or received (requests with big inputs,
            results with big outputs or inline artifacts).
        keepalive_time_seconds: ping interval while calls are active, so a dead agent
            host is noticed during a long, silent task. Agents' servers accept it by
            default (gRPC clients send at most two pings without data in between).
        keepalive_timeout_seconds: how long a ping may go unanswered before the
            connection is closed (calls on it then fail with ``UNAVAILABLE``).
        max_reconnect_backoff_seconds: upper bound of the reconnection backoff after an
            agent went away (gRPC's default, 120 s, would fail calls long after it is back).
        options: extra channel arguments, appended to (and overriding) the above.
        guard: checks endpoints before calls (:meth:`connect`); None (agent clients used
            on their own, in tests) connects to endpoints as they are.
        retire_grace_seconds: how long a replaced channel's calls in flight may go on.
        tls_ca: PEM CA bundle trusted for ``grpcs://`` agents (None: the system's roots).
        tls_client: the client certificate presented to ``grpcs://`` agents (mTLS).
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_time_seconds: float = 30.0,
        keepalive_timeout_seconds: float = 10.0,
        max_reconnect_backoff_seconds: float = 5.0,
        options: Sequence[tuple[str, Any]] = (),
        guard: EndpointGuard | None = None,
        retire_grace_seconds: float = 3600.0,
        tls_ca: bytes | None = None,
        tls_client: KeyPair | None = None,
    ) -> None:
        self.options: tuple[tuple[str, Any], ...] = (
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", int(keepalive_time_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout_seconds * 1000)),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", int(max_reconnect_backoff_seconds * 1000)),
            *options,
        )
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closed = False
        self.guard = guard
        self._retire_grace = retire_grace_seconds
        self._addresses: dict[str, str] = {}  # endpoint -> the checked address connected
        self._retiring: set[asyncio.Task[None]] = set()
        self._tls_ca = tls_ca
        self._tls_client = tls_client
        self._tls_credentials: grpc.ChannelCredentials | None = None

    def _credentials(self) -> grpc.ChannelCredentials:
        if self._tls_credentials is None:
            self._tls_credentials = channel_credentials(self._tls_ca, self._tls_client)
        return self._tls_credentials

    def get(self, endpoint: str) -> grpc.aio.Channel:
        """The channel to ``endpoint`` (created on first use, then reused; with a guard,
        the one :meth:`connect` opened).

        Raises:
            RuntimeError: the pool is closed.
            EndpointRefused: with a guard, :meth:`connect` did not check the endpoint.
        """
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._closed:
                raise RuntimeError("the agent channels are closed")
            if self.guard is not None:
                raise EndpointRefused(f"{endpoint} was not checked before the call", transient=True)
            if endpoint.lower().startswith(("grpc://", "grpcs://")):
                target = parse_endpoint(endpoint)
                host = f"[{target.host}]" if ":" in target.host else target.host
                address = f"{host}:{target.port}"
                channel = (
                    grpc.aio.secure_channel(address, self._credentials(), options=self.options)
                    if target.tls
                    else grpc.aio.insecure_channel(address, options=self.options)
                )
            else:
                channel = grpc.aio.insecure_channel(endpoint, options=self.options)
            self._channels[endpoint] = channel
        return channel

    async def connect(self, endpoint: str) -> grpc.aio.Channel:
        """Check ``endpoint`` with the guard (resolving its name now) and return a channel
        to one of its checked addresses: the current one when its address still
        resolves, else a new one. Without a guard, :meth:`get`.

        Raises:
            EndpointRefused: the endpoint or one of its addresses is refused, or its name
                does not resolve (``transient``).
            RuntimeError: the pool is closed.
        """
        if self.guard is None:
            return self.get(endpoint)
        target, addresses = await self.guard.resolve(endpoint)
        if self._closed:
            raise RuntimeError("the agent channels are closed")
        channel = self._channels.get(endpoint)
        if channel is not None and self._addresses.get(endpoint) in addresses:
            return channel
        address = addresses[0]
        host = f"[{target.host}]" if ":" in target.host else target.host
        options = (*self.options, ("grpc.default_authority", f"{host}:{target.port}"))
        connect = connect_target(address, target.port)
        if target.tls:
            # Connect to the checked address; verify the certificate against the name.
            options = (*options, ("grpc.ssl_target_name_override", target.host))
            fresh = grpc.aio.secure_channel(connect, self._credentials(), options=options)
        else:
            fresh = grpc.aio.insecure_channel(connect, options=options)
        self._channels[endpoint] = fresh
        self._addresses[endpoint] = address
        if channel is not None:
            self._retire(channel)
        return fresh

    def _retire(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.create_task(channel.close(self._retire_grace))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @property
    def endpoints(self) -> list[str]:
        """Endpoints with an open channel."""
        return list(self._channels)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def discard(self, endpoint: str) -> None:
        """Close the channel to ``endpoint`` (e.g. after the agent was deregistered);
        calls in flight on it are cancelled, and the next call opens a new channel.
        Unknown endpoints are ignored."""
        channel = self._channels.pop(endpoint, None)
        self._addresses.pop(endpoint, None)
        if channel is not None:
            await channel.close(None)

    async def close(self) -> None:
        """Close every channel (calls in flight are cancelled). Idempotent; no channel
        can be opened afterwards."""
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        self._addresses.clear()
        for channel in channels:
            await channel.close(None)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)


class PooledClient(Generic[T]):
    """The channel side of an agent client: the pool it calls through, and what it
    builds on each endpoint's channel (its stubs; for A2A also the detected protocol
    version), built on first use and rebuilt when the pool's channel for that endpoint
    was replaced (discarded, then reopened).

    Args:
        channels: the pool to use (shared by
            :class:`~podium.server.agents.dispatch.AgentDispatcher`, which closes it); by
            default the client opens its own, and :meth:`close` closes it.
        build: makes the client's value for a channel.
        max_message_bytes: largest message sent or received (own pool only).
        options: extra channel arguments (own pool only).
    """

    def __init__(
        self,
        channels: AgentChannels | None,
        build: Callable[[grpc.aio.Channel], T],
        *,
        max_message_bytes: int,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self._owns_channels = channels is None
        self._channels = (
            channels
            if channels is not None
            else AgentChannels(max_message_bytes=max_message_bytes, options=options)
        )
        self._build = build
        self._built: dict[str, tuple[grpc.aio.Channel, T]] = {}
        self._closed = False

    def _endpoint(self, endpoint: str) -> T:
        """What the client built on the current channel to ``endpoint`` (opening it if
        need be).

        Raises:
            RuntimeError: the client (or its pool) is closed.
        """
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        channel = self._channels.get(endpoint)
        entry = self._built.get(endpoint)
        if entry is None or entry[0] is not channel:
            entry = (channel, self._build(channel))
            self._built[endpoint] = entry
        return entry[1]

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        """The channel to ``endpoint`` (created on first use, then reused)."""
        return self._channels.get(endpoint)

    @property
    def endpoints(self) -> list[str]:
        """Endpoints with an open channel in the pool."""
        return self._channels.endpoints

    async def discard(self, endpoint: str) -> None:
        """Close the channel to ``endpoint`` (e.g. after the agent was deregistered) and
        drop what was built on it (for A2A, the detected protocol version too); calls in
        flight on it end with a retryable ``CANCELLED`` failure. Unknown endpoints are
        ignored."""
        self._built.pop(endpoint, None)
        await self._channels.discard(endpoint)

    async def close(self) -> None:
        """Close every channel of the client's own pool (calls in flight end with a
        retryable ``CANCELLED`` failure; a shared pool is closed by its owner).
        Idempotent; the client cannot be used afterwards."""
        self._closed = True
        self._built.clear()
        if self._owns_channels:
            await self._channels.close()
