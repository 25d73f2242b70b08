"""The ``GET /metrics`` HTTP endpoint, served on the event loop.

A minimal HTTP/1.1 server (``asyncio.start_server``) rather than prometheus-client's
threaded one: collection then runs on the loop thread, so callback gauges read engine
state (watchers, steps in flight) without racing the loop, and stopping it is an
ordinary ``await``. One request per connection; anything but ``GET /metrics`` (or
``HEAD``) is answered 404/405. Request heads are bounded (8 KiB, 10 s). With a token
(``PODIUM_METRICS_TOKEN``) a scrape must send ``Authorization: Bearer <token>``, else
401 (compared in constant time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["MetricsServer"]

log = logging.getLogger("podium.metrics")

_MAX_HEAD_BYTES = 8 * 1024
_READ_TIMEOUT_SECONDS = 10.0


class MetricsServer:
    """Serves ``registry`` at ``http://HOST:PORT/metrics``; ``port`` is the bound port."""

    def __init__(
        self, registry: CollectorRegistry, address: str, *, token: str | None = None
    ) -> None:
        self._registry = registry
        self._expected = f"Bearer {token}".encode() if token else None
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def address(self) -> str:
        """HOST:PORT actually bound (the real port when 0 was asked for)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, limit=_MAX_HEAD_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting and close open connections."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            try:
                async with asyncio.timeout(_READ_TIMEOUT_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            except asyncio.LimitOverrunError:
                await self._answer(writer, 431, b"request header too large\n")
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                await self._answer(writer, 400, b"bad request\n")
                return
            method, target, _version = parts
            path = target.split("?", 1)[0]
            if path != "/metrics":
                await self._answer(writer, 404, b"not found: try /metrics\n")
                return
            if method not in ("GET", "HEAD"):
                await self._answer(writer, 405, b"method not allowed\n")
                return
            accept = ""
            authorization = ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
                elif name.strip().lower() == "authorization":
                    authorization = value.strip()
            if self._expected is not None and not hmac.compare_digest(
                authorization.encode("latin-1"), self._expected
            ):
                await self._answer(writer, 401, b"unauthorized: send Authorization: Bearer\n")
                return
            encoder, content_type = choose_encoder(accept)
            body = encoder(self._registry)
            await self._answer(writer, 200, body, content_type, send_body=method == "GET")
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _answer(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        send_body: bool = True,
    ) -> None:
        reason = {
            200: "OK",
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
            405: "Method Not Allowed",
            431: "Request Header Fields Too Large",
        }[status]
        challenge = 'WWW-Authenticate: Bearer realm="metrics"\r\n' if status == 401 else ""
        head = (
            f"HTTP/1.1 {status} {reason}\r\n{challenge}Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        writer.write(head + body if send_body else head)
        await writer.drain()
