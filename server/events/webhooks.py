"""Webhooks: Standard Webhooks signing and the dispatcher of one replica (the SSRF guard
is :mod:`podium.server.events.ssrf`, the HTTP sender
:mod:`podium.server.events.webhook_http`).

The outbox (the trigger ``podium_enqueue_webhooks`` in
``server/storage/functions/20_webhooks.sql``), the dispatcher's claim, lease and
batched outcomes are described in docs/ARCHITECTURE.md, section "Webhooks"; what a
receiver gets, the guarantees (at least once, unordered) and the retry schedule in
docs/operations.md, section "Webhooks".

**Signing** (https://www.standardwebhooks.com/): ``webhook-id`` (the delivery id, the
same on every try), ``webhook-timestamp`` (unix seconds of this try) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` where
the key is the base64 part of ``whsec_<base64>`` (``PODIUM_WEBHOOK_SECRET``). The
signature is computed by ``standardwebhooks``, the specification's reference library.
Nothing is ever sent unsigned: without a secret there is no dispatcher.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from podium.server.config import redact_url
from podium.server.events.ssrf import WebhookRefused, parse_webhook_url
from podium.server.events.webhook_http import WebhookSender, describe_failure
from podium.server.storage.database import DirectConnection, connect_direct
from podium.server.storage.errors import StorageError
from podium.server.storage.webhooks import ClaimedDelivery, DeliveryOutcome, WebhooksRepository
from podium.server.waits import wait_set

__all__ = [
    "CHANNEL",
    "DispatcherConfig",
    "WebhookDispatcher",
    "WebhookSigner",
    "retry_delay",
    "webhook_key",
]

log = logging.getLogger("podium.webhooks")

CHANNEL = "podium_webhooks"
"""The channel the outbox trigger notifies when it wrote deliveries."""

_MAX_ERROR_LENGTH = 300

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
        self._webhook = Webhook(webhook_key(secret))

    def __repr__(self) -> str:
        return "WebhookSigner(***)"

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>``."""
        return self._webhook.sign(message_id, datetime.fromtimestamp(timestamp, UTC), body)

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
        self._sender = WebhookSender(
            allow_private=config.allow_private,
            timeout_seconds=config.timeout_seconds,
            max_connections=config.concurrency,
            ssl_context=ssl.create_default_context(),
        )
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
                async with asyncio.timeout(30):
                    await asyncio.shield(claim_loop)
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
            async with asyncio.timeout(5):
                await self._outcomes.join()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        with contextlib.suppress(Exception):
            await self._sender.aclose()
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
            await wait_set(self._wake, self.config.poll_interval_seconds)

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
            answer = await self._sender.post(target, body, headers)
        except WebhookRefused as exc:
            error = f"refused: {exc}"
        except Exception as exc:
            failure = describe_failure(exc, self.config.timeout_seconds)
            if failure is None:  # never leave a delivery leased by a bug: record it
                log.exception("webhook try %s failed unexpectedly", delivery.id)
                failure = f"internal error: {type(exc).__name__}"
            error = failure
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
