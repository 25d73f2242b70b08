"""Webhooks: Standard Webhooks signing, the SSRF guard, a minimal HTTP/1.1 client and
the dispatcher of one replica.

**Outbox.** Every event appended to ``orchestration_events`` writes one
``webhook_deliveries`` row per target (the run's ``webhook_url`` and the
organization's configured targets) in the same transaction, through the trigger
``podium_enqueue_webhooks`` (``server/storage/functions/20_webhooks.sql``), which also sends
``NOTIFY podium_webhooks``. An event is therefore delivered if and only if it
committed.

**Dispatcher** (:class:`WebhookDispatcher`, one per replica): wakes on ``LISTEN
podium_webhooks`` or its fallback timer (never a busy poll; with nothing due the timer
costs one index probe), claims due deliveries with ``FOR UPDATE SKIP LOCKED`` (the
claim counts the try and leases the row by moving ``next_attempt_at`` past the try's
deadline, so no other replica takes it meanwhile and a replica that dies mid-try
leaves it due again), POSTs at most ``concurrency`` at once, and records outcomes in
batches, fenced by the try number: 2xx is ``delivered``; anything else (status,
timeout, refused address, connection error) schedules the next try after an
exponential backoff with jitter (``initial * 4^(try-1)``, capped, times a random
factor in [0.5, 1]), and after the last try the delivery is ``dead``.

Delivery is **at least once** (a receiver that answers after the lease, or a replica
that stops between the POST and recording it, causes a second POST with the same
``webhook-id``: receivers deduplicate on it) and **unordered** (tries of different
events, even of one run to one target, run concurrently and retry independently;
the body carries the run's ``sequence`` for receivers that need order).

**Signing** (https://www.standardwebhooks.com/): ``webhook-id`` (the delivery id, the
same on every try), ``webhook-timestamp`` (unix seconds of this try) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` where
the key is the base64 part of ``whsec_<base64>`` (``PODIUM_WEBHOOK_SECRET``). Nothing
is ever sent unsigned: without a secret there is no dispatcher.

**SSRF guard**: :func:`check_webhook_url` accepts http(s) URLs without user
information whose host resolves only to public unicast addresses (unless private
targets are allowed). Each try resolves the host again, checks every address and
connects to a checked address (never to the name), sending the original ``Host``
header and TLS server name (SNI, certificate check) - so a name that re-binds to a
private address after the check is refused at delivery time. Redirects are never
followed (3xx is a failed try), and only the status line of a response is read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from podium.server.config import redact_url
from podium.server.storage.database import DirectConnection, connect_direct
from podium.server.storage.errors import StorageError
from podium.server.storage.webhooks import ClaimedDelivery, DeliveryOutcome, WebhooksRepository

__all__ = [
    "CHANNEL",
    "DispatcherConfig",
    "HttpAnswer",
    "WebhookDispatcher",
    "WebhookRefused",
    "WebhookSigner",
    "WebhookTarget",
    "address_problem",
    "check_webhook_url",
    "check_webhook_url_async",
    "parse_webhook_url",
    "post_webhook",
    "retry_delay",
    "webhook_key",
]

log = logging.getLogger("podium.webhooks")

CHANNEL = "podium_webhooks"
"""The channel the outbox trigger notifies when it wrote deliveries."""

MAX_URL_LENGTH = 2048
_MAX_STATUS_LINE = 8192
_MAX_ERROR_LENGTH = 300
_USER_AGENT = "Podium-Webhooks/1"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# -- signing ---------------------------------------------------------------------------


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: the base64 after an optional
    ``whsec_`` prefix. Raises ValueError when it is not base64 of at least 16 bytes."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes")
    return key


class WebhookSigner:
    """Signs webhook bodies per Standard Webhooks (module docstring)."""

    def __init__(self, secret: str) -> None:
        self._key = webhook_key(secret)

    def __repr__(self) -> str:
        return "WebhookSigner(***)"

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>``."""
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()

    def headers(
        self, message_id: str, body: bytes, *, timestamp: int | None = None
    ) -> dict[str, str]:
        """The three Standard Webhooks headers of one try (timestamp: now)."""
        ts = int(time.time()) if timestamp is None else timestamp
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": self.sign(message_id, ts, body),
        }


# -- SSRF guard ------------------------------------------------------------------------


class WebhookRefused(ValueError):
    """The URL or an address its host resolves to is not an allowed webhook target."""


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A parsed webhook URL.

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


def parse_webhook_url(url: str) -> WebhookTarget:
    """Parse and check the form of a webhook URL (no DNS). Raises WebhookRefused."""
    if not url:
        raise WebhookRefused("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise WebhookRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"the URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookRefused("only http:// and https:// URLs are allowed")
    if "@" in parts.netloc:
        raise WebhookRefused("the URL must not contain user information (user:password@)")
    host = parts.hostname or ""
    if not host:
        raise WebhookRefused("the URL has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise WebhookRefused("the URL's host name is not a valid name") from None
    if port == 0:
        raise WebhookRefused("the URL's port must not be 0")
    if not (parts.path + parts.query).isascii():
        raise WebhookRefused("the URL's path and query must be ASCII (percent-encode the rest)")
    default_port = 443 if scheme == "https" else 80
    literal = _ip_literal(host)
    shown = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
    host_header = shown if port is None or port == default_port else f"{shown}:{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return WebhookTarget(
        url=url,
        scheme=scheme,
        host=host,
        port=port or default_port,
        host_header=host_header,
        target=target,
    )


def _ip_literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_problem(address: Address) -> str | None:
    """Why ``address`` is not a public unicast address (e.g. ``"loopback"``), or None.

    IPv6 addresses that embed an IPv4 one (IPv4-mapped, 6to4, Teredo, NAT64) are
    judged by the embedded address too.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(embedded)
            if problem is not None:
                return f"{problem} (embedded in {address})"
        if address.is_site_local:
            return "site-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def _check_addresses(target: WebhookTarget, addresses: Sequence[str]) -> list[Address]:
    """The addresses as ip_address objects; WebhookRefused if any is not public."""
    parsed: list[Address] = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        problem = address_problem(address)
        if problem is not None:
            where = (
                f"{target.host} is"
                if _ip_literal(target.host) is not None
                else f"{target.host} resolves to {address},"
            )
            raise WebhookRefused(
                f"{where} a {problem} address; webhook targets must be public "
                "(ORCHESTRATION_ALLOW_PRIVATE_WEBHOOKS=true allows private ones)"
            )
        parsed.append(address)
    return parsed


def _addresses(infos: Sequence[tuple[Any, ...]]) -> list[str]:
    """Distinct addresses of getaddrinfo results, in their order."""
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


def _resolve_error(target: WebhookTarget, exc: OSError) -> WebhookRefused:
    reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
    return WebhookRefused(f"cannot resolve {target.host}: {reason}")


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Refuse (ValueError, a :class:`WebhookRefused`, with a message naming the
    problem) a URL that is not http(s), carries user information, does not resolve,
    or resolves to any non-public address (loopback, link-local, private, unique-local,
    multicast, unspecified, reserved...) unless ``allow_private``.

    Blocking (DNS): from async code use :func:`check_webhook_url_async`.
    """
    target = parse_webhook_url(url)
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _resolve_error(target, exc) from None
    if not allow_private:
        _check_addresses(target, _addresses(infos))


async def check_webhook_url_async(url: str, *, allow_private: bool) -> None:
    """:func:`check_webhook_url` resolving without blocking the event loop."""
    target = parse_webhook_url(url)
    addresses = await _resolve(target)
    if not allow_private:
        _check_addresses(target, addresses)


async def _resolve(target: WebhookTarget) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _resolve_error(target, exc) from None
    if not infos:
        raise WebhookRefused(f"cannot resolve {target.host}: no address")
    return _addresses(infos)


# -- HTTP ------------------------------------------------------------------------------


class _ProtocolError(Exception):
    """The receiver's answer is not HTTP/1.x."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """The status line of a receiver's answer."""

    status: int
    reason: str


async def post_webhook(
    target: WebhookTarget,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool,
    timeout_seconds: float,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpAnswer:
    """POST ``body`` (JSON) to ``target`` with one HTTP/1.1 request and return the
    status line of the answer.

    The host is resolved now and every address checked (unless ``allow_private``);
    the connection goes to a checked address with the original ``Host`` header and TLS
    server name. ``timeout_seconds`` bounds everything (resolution, connection, answer).
    Raises WebhookRefused, TimeoutError, OSError (including ssl errors) or
    ``_ProtocolError``.
    """
    request = _request_bytes(target, body, headers)
    async with asyncio.timeout(timeout_seconds):
        addresses = await _resolve(target)
        if not allow_private:
            _check_addresses(target, addresses)
        tls = None
        if target.scheme == "https":
            tls = ssl_context or ssl.create_default_context()
        reader, writer = await _connect(target, addresses, tls)
        try:
            writer.write(request)
            await writer.drain()
            try:
                line = await reader.readline()
            except ValueError:  # longer than the stream's limit
                raise _ProtocolError("the receiver's status line is too long") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
    return _status_line(line)


async def _connect(
    target: WebhookTarget, addresses: Sequence[str], tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first address that accepts one (checked addresses only)."""
    failure: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.open_connection(
                address,
                target.port,
                ssl=tls,
                server_hostname=target.host if tls is not None else None,
                limit=_MAX_STATUS_LINE,
            )
        except ssl.SSLError:
            raise  # the server answered: another address would not do better
        except OSError as exc:
            failure = exc
    assert failure is not None
    raise failure


def _request_bytes(target: WebhookTarget, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [
        f"POST {target.target} HTTP/1.1",
        f"Host: {target.host_header}",
        f"User-Agent: {_USER_AGENT}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    for name, value in headers.items():
        if any(ch in name + value for ch in "\r\n"):
            raise ValueError("header names and values must not contain line breaks")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _status_line(line: bytes) -> HttpAnswer:
    if not line:
        raise _ProtocolError("the receiver closed the connection without answering")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _ProtocolError("the receiver's answer is not HTTP/1.x")
    return HttpAnswer(status=int(parts[1]), reason=parts[2].strip() if len(parts) > 2 else "")


# -- dispatcher ------------------------------------------------------------------------


def retry_delay(
    attempts: int, *, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds before the try after try number ``attempts``: ``initial * 4^(attempts-1)``
    capped at ``maximum``, times a random factor in [0.5, 1] (so receivers coming back
    from an outage are not hit by every delivery at once)."""
    ceiling = min(maximum, initial * 4.0 ** min(attempts - 1, 64))
    return ceiling * (rng or random).uniform(0.5, 1.0)


@dataclass(frozen=True)
class DispatcherConfig:
    """Tunables of one replica's webhook dispatcher (see the ``PODIUM_WEBHOOK_*``
    settings)."""

    allow_private: bool = False
    max_attempts: int = 8
    backoff_initial_seconds: float = 5.0
    backoff_max_seconds: float = 3600.0
    timeout_seconds: float = 10.0
    concurrency: int = 16
    poll_interval_seconds: float = 1.0
    record_batch_size: int = 256

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery is kept from other replicas: the try's deadline,
        with room to record its outcome."""
        return 2 * self.timeout_seconds + 10.0


def _clean_error(text: str) -> str:
    printable = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return printable[:_MAX_ERROR_LENGTH] or "error"


class WebhookDispatcher:
    """Sends the outbox of one replica. See the module docstring."""

    def __init__(
        self,
        dsn: str,
        repository: WebhooksRepository,
        signer: WebhookSigner,
        config: DispatcherConfig,
    ) -> None:
        self._dsn = dsn
        self._repository = repository
        self._signer = signer
        self.config = config
        self._ssl = ssl.create_default_context()
        self._rng = random.Random()
        self._wake = asyncio.Event()
        self._saturated = False
        self._stopping = False
        self._inflight: dict[asyncio.Task[None], ClaimedDelivery] = {}
        self._interrupted: list[tuple[uuid.UUID, int]] = []
        self._outcomes: asyncio.Queue[DeliveryOutcome] = asyncio.Queue()
        self._loops: list[asyncio.Task[None]] = []
        self._listener: DirectConnection | None = None
        self._listen_retry_at = 0.0
        self._listen_backoff = 1.0
        self.claimed_total = 0
        """Tries started by this replica."""
        self.delivered_total = 0
        """Tries answered 2xx."""
        self.failed_total = 0
        """Tries that failed (each schedules a retry or kills the delivery)."""
        self.dead_total = 0
        """Deliveries this replica marked dead."""

    @property
    def active(self) -> int:
        """Tries in flight now."""
        return len(self._inflight)

    def wake(self) -> None:
        """Look for due deliveries now (tests, or after writing deliveries here)."""
        self._wake.set()

    async def start(self) -> None:
        """LISTEN for new deliveries, then start the loops."""
        await self._listen()
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name="podium-webhooks"),
            asyncio.create_task(self._record_loop(), name="podium-webhooks-record"),
        ]
        self._wake.set()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop claiming; give tries in flight ``grace`` seconds, interrupt the rest
        (given back, due at once for any replica), record what finished."""
        self._stopping = True
        self._wake.set()
        if self._loops:
            # The claim loop ends after its current round, so every claimed delivery
            # has its task (and is either finished or given back below).
            claim_loop = self._loops[0]
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(claim_loop), timeout=30)
            claim_loop.cancel()
        tasks = list(self._inflight)
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for task in list(self._inflight):
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._interrupted:
            with contextlib.suppress(StorageError):
                await self._repository.release(self._interrupted)
            self._interrupted.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outcomes.join(), timeout=5)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    # -- LISTEN ----------------------------------------------------------------------

    async def _listen(self) -> None:
        conn: DirectConnection | None = None
        try:
            conn = await connect_direct(self._dsn)
            await conn.add_listener(CHANNEL, self._on_notify)
            conn.add_termination_listener(self._on_listener_lost)
        except Exception as exc:
            log.warning("cannot LISTEN for webhook deliveries (polling instead): %s", exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            self._listen_retry_at = time.monotonic() + self._listen_backoff
            self._listen_backoff = min(self._listen_backoff * 2, 30.0)
            return
        self._listen_backoff = 1.0
        self._listener = conn

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    def _on_listener_lost(self, _conn: object) -> None:
        if self._stopping:
            return
        log.warning("webhook LISTEN connection lost; polling until it is re-established")
        self._listener = None
        self._listen_retry_at = time.monotonic() + self._listen_backoff

    # -- claim -----------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        backoff = 0.1
        while not self._stopping:
            self._wake.clear()
            if self._listener is None and time.monotonic() >= self._listen_retry_at:
                await self._listen()
                if self._listener is not None:
                    self._wake.set()  # notifications were missed meanwhile
            free = self.config.concurrency - len(self._inflight)
            claimed: list[ClaimedDelivery] = []
            if free > 0:
                try:
                    claimed = await self._repository.claim(free, self.config.lease_seconds)
                except StorageError as exc:
                    log.warning("webhook claim failed: %s", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                for delivery in claimed:
                    task = asyncio.create_task(self._send(delivery), name=f"webhook {delivery.id}")
                    self._inflight[task] = delivery
                self.claimed_total += len(claimed)
            # All slots taken: more may be due, so a finished try wakes the loop.
            self._saturated = len(claimed) >= free
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_seconds)

    # -- send ------------------------------------------------------------------------

    async def _send(self, delivery: ClaimedDelivery) -> None:
        task = asyncio.current_task()
        try:
            outcome = await self._try(delivery)
        except asyncio.CancelledError:
            self._interrupted.append((delivery.id, delivery.attempts))
            raise
        finally:
            if task is not None:
                self._inflight.pop(task, None)
            if self._saturated:
                self._wake.set()
        self._outcomes.put_nowait(outcome)

    async def _try(self, delivery: ClaimedDelivery) -> DeliveryOutcome:
        """One POST of one delivery, and what to record about it."""
        error: str
        try:
            target = parse_webhook_url(delivery.url)
            body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
            headers = self._signer.headers(str(delivery.id), body)
            answer = await post_webhook(
                target,
                body,
                headers,
                allow_private=self.config.allow_private,
                timeout_seconds=self.config.timeout_seconds,
                ssl_context=self._ssl,
            )
        except WebhookRefused as exc:
            error = f"refused: {exc}"
        except TimeoutError:
            error = f"timed out after {self.config.timeout_seconds:g}s"
        except ssl.SSLError as exc:
            error = f"TLS error: {exc.reason or exc}"
        except OSError as exc:
            error = f"connection failed: {exc.strerror or exc}"
        except _ProtocolError as exc:
            error = str(exc)
        except Exception as exc:  # never leave a delivery leased by a bug: record it
            log.exception("webhook try %s failed unexpectedly", delivery.id)
            error = f"internal error: {type(exc).__name__}"
        else:
            if 200 <= answer.status < 300:
                self.delivered_total += 1
                return DeliveryOutcome(delivery.id, delivery.attempts, delivered=True)
            error = f"HTTP {answer.status}"
            if answer.reason:
                error += f" {answer.reason}"
            if 300 <= answer.status < 400:
                error += " (redirects are not followed)"
        self.failed_total += 1
        error = _clean_error(error)
        if delivery.attempts >= self.config.max_attempts:
            self.dead_total += 1
            log.warning(
                "webhook delivery dead after %d tries: %s",
                delivery.attempts,
                error,
                extra={
                    "delivery_id": str(delivery.id),
                    "run_id": str(delivery.run_id),
                    "sequence": delivery.sequence,
                    "url": redact_url(delivery.url),
                },
            )
            return DeliveryOutcome(delivery.id, delivery.attempts, delivered=False, error=error)
        delay = retry_delay(
            delivery.attempts,
            initial=self.config.backoff_initial_seconds,
            maximum=self.config.backoff_max_seconds,
            rng=self._rng,
        )
        return DeliveryOutcome(
            delivery.id, delivery.attempts, delivered=False, error=error, retry_in=delay
        )

    # -- record ----------------------------------------------------------------------

    async def _record_loop(self) -> None:
        while True:
            batch = [await self._outcomes.get()]
            while len(batch) < self.config.record_batch_size and not self._outcomes.empty():
                batch.append(self._outcomes.get_nowait())
            try:
                await self._record(batch)
            finally:
                for _ in batch:
                    self._outcomes.task_done()

    async def _record(self, batch: list[DeliveryOutcome]) -> None:
        """Record a batch, retrying while the database is away up to the lease; after
        that the tries are due again anyway (and are sent again: at least once)."""
        delay = 0.1
        deadline = time.monotonic() + self.config.lease_seconds
        while True:
            try:
                await self._repository.finish(batch)
                return
            except StorageError as exc:
                if time.monotonic() + delay > deadline:
                    log.warning(
                        "cannot record %d webhook outcomes (they will be retried): %s",
                        len(batch),
                        exc,
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
