"""A real gRPC proxy that demands ``authorization: Bearer <key>`` before forwarding.

Podium itself has no API keys yet; this stands in for the authentication interceptor
in front of a real server, so the gateway's forwarding of the ``Authorization`` header
and of the console's cookie, and its answers to UNAUTHENTICATED, are tested end to
end: gateway -> this proxy (checks the key) -> a real PodiumServer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

REFUSAL = "invalid API key"


class AuthProxy:
    """Forwards every call to ``target`` when its metadata carries ``Bearer <key>``,
    else answers UNAUTHENTICATED; ``calls`` records each call's authorization value."""

    def __init__(self, target: str, key: str) -> None:
        self._target = target
        self._expected = f"Bearer {key}"
        self._server = grpc.aio.server()
        self._channel: grpc.aio.Channel | None = None
        self.calls: list[tuple[str, str | None]] = []
        self.address = ""

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self._target)
        self._server.add_generic_rpc_handlers((_Handler(self),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(0)
        if self._channel is not None:
            await self._channel.close(None)

    async def check(self, method: str, context: Any) -> grpc.aio.Channel:
        metadata = dict(context.invocation_metadata())
        authorization = metadata.get("authorization")
        self.calls.append((method.rsplit("/", 1)[-1], authorization))
        if authorization != self._expected:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)
        assert self._channel is not None
        return self._channel


class _Handler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, proxy: AuthProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method: str = details.method
        proxy = self._proxy
        if method.endswith("/WatchRun") or method.endswith("/WatchRuns"):

            async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
                channel = await proxy.check(method, context)
                async for response in channel.unary_stream(method, None, None)(request):
                    yield response

            return grpc.unary_stream_rpc_method_handler(stream)

        async def unary(request: bytes, context: Any) -> bytes:
            channel = await proxy.check(method, context)
            try:
                response: bytes = await channel.unary_unary(method, None, None)(request)
            except grpc.aio.AioRpcError as exc:  # the server's status, details included
                await context.abort(
                    exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ())
                )
            return response

        return grpc.unary_unary_rpc_method_handler(unary)
