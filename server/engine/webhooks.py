"""Webhooks: the configured target, the per-run URL check, the dispatcher's life cycle
and ListWebhookDeliveries.

- **Secret**: deliveries are always signed (``PODIUM_WEBHOOK_SECRET``). Without a
  secret there is no dispatcher; a configured ``ORCHESTRATION_PROGRESS_WEBHOOK_URL``
  is then a start-up error and StartRun refuses a ``webhook_url``
  (FAILED_PRECONDITION), so no event is silently kept from a receiver that was asked
  for.
- **Global target**: at start the configured URL is checked like a per-run one (a
  refused URL stops the server with the reason) and becomes the organization's only
  ``config`` target in ``webhook_targets`` (upsert, stale ones deleted, one
  transaction under an advisory lock, so replicas starting together agree; the last
  one started wins if their settings differ).
- **Per-run URL**: :meth:`WebhookService.check_url` is the StartRun check (SSRF guard,
  then INVALID_ARGUMENT on ``webhook_url`` with the reason).
"""

from __future__ import annotations

import logging
from typing import Any

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.config import ConfigError, SecretValue, Settings, redact_url
from podium.server.engine.errors import FailedPrecondition, FieldViolation, InvalidArgument
from podium.server.engine.paging import bounded_keyset_page, decode_keyset, page_size
from podium.server.engine.requests import parse_run_id
from podium.server.engine.sizes import DEFAULT_MAX_RESPONSE_BYTES
from podium.server.engine.storage_errors import storage_errors
from podium.server.events.retention import EventRetention, RetentionConfig
from podium.server.events.ssrf import WebhookRefused, check_webhook_url_async
from podium.server.events.webhooks import DispatcherConfig, WebhookDispatcher, WebhookSigner
from podium.server.storage.database import Database
from podium.server.storage.retention import RunRetentionRepository
from podium.server.storage.webhooks import DeliveryRow, WebhooksRepository

__all__ = ["WebhookService", "check_webhook_configuration", "delivery_to_proto"]

log = logging.getLogger("podium.webhooks")

WebhookDelivery = pb.WebhookDelivery

_STATES = {
    "pending": WebhookDelivery.STATE_PENDING,
    "delivered": WebhookDelivery.STATE_DELIVERED,
    "dead": WebhookDelivery.STATE_DEAD,
}
_STATE_NAMES = {v: k for k, v in _STATES.items()}


def delivery_to_proto(row: DeliveryRow) -> pb.WebhookDelivery:
    """The API form of a stored delivery (``payload`` is the body sent)."""
    out = WebhookDelivery(
        id=str(row.id),
        url=row.url,
        run_id=str(row.run_id) if row.run_id else "",
        sequence=row.sequence or 0,
        state=_STATES.get(row.state, WebhookDelivery.STATE_UNSPECIFIED),
        attempts=row.attempts,
        last_error=row.last_error or "",
    )
    if row.state == "pending":
        out.next_attempt_time.FromDatetime(row.next_attempt_at)
    if isinstance(row.payload, dict):
        out.payload.update(row.payload)
    return out


def _secret_text(secret: SecretValue | str | None) -> str | None:
    if secret is None:
        return None
    return secret.value if isinstance(secret, SecretValue) else secret


def _signing_secret(settings: Settings) -> str | None:
    """The webhook secret; raises ConfigError when a target is configured without one."""
    secret = _secret_text(settings.webhook_secret)
    if settings.progress_webhook_url and secret is None:
        raise ConfigError(
            "ORCHESTRATION_PROGRESS_WEBHOOK_URL is set but PODIUM_WEBHOOK_SECRET is not: "
            "webhooks are always signed (Standard Webhooks); set PODIUM_WEBHOOK_SECRET to "
            "whsec_<base64 of 32 random bytes> and give it to the receiver"
        )
    return secret


async def check_webhook_configuration(settings: Settings) -> None:
    """Check the configured target (its secret, then the URL like a per-run one) without
    touching the database. Raises ConfigError when it is refused."""
    _signing_secret(settings)
    url = settings.progress_webhook_url
    if url:
        try:
            await check_webhook_url_async(url, allow_private=settings.allow_private_webhooks)
        except WebhookRefused as exc:
            raise ConfigError(
                f"ORCHESTRATION_PROGRESS_WEBHOOK_URL={redact_url(url)!r} is refused: {exc}"
            ) from None


class WebhookService:
    """Webhook use cases and the background work of one replica: the dispatcher and
    retention (``server/events/``)."""

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    """What one page may take (``sizes.response_budget``; the engine sets it)."""

    def __init__(self, db: Database, dsn: str, settings: Settings) -> None:
        self._settings = settings
        self._repository = WebhooksRepository(db)
        secret = _signing_secret(settings)
        self.dispatcher: WebhookDispatcher | None = None
        if secret is not None:
            self.dispatcher = WebhookDispatcher(
                dsn,
                self._repository,
                WebhookSigner(secret),
                DispatcherConfig(
                    allow_private=settings.allow_private_webhooks,
                    max_attempts=settings.webhook_max_attempts,
                    backoff_initial_seconds=settings.webhook_backoff_initial_seconds,
                    backoff_max_seconds=settings.webhook_backoff_max_seconds,
                    timeout_seconds=settings.webhook_timeout_seconds,
                    concurrency=settings.webhook_concurrency,
                    poll_interval_seconds=settings.poll_interval_seconds,
                ),
            )
        self.retention = EventRetention(
            self._repository,
            RetentionConfig(
                retention_hours=settings.event_retention_hours,
                interval_seconds=settings.retention_interval_seconds,
                run_retention_days=settings.run_retention_days,
                run_batch_size=settings.run_retention_batch_size,
            ),
            RunRetentionRepository(db),
        )

    @property
    def enabled(self) -> bool:
        """Whether webhooks can be delivered (a secret is configured)."""
        return self.dispatcher is not None

    async def start(self) -> None:
        """Store the configured target (checked by :func:`check_webhook_configuration`
        before the server touched the database), then start the dispatcher and
        retention."""
        url = self._settings.progress_webhook_url
        sync = await self._repository.replace_configured_targets(
            self._settings.organization_id, [url] if url else []
        )
        if sync.added or sync.removed:
            log.info(
                "webhook targets updated",
                extra={
                    "added": [redact_url(u) for u in sync.added],
                    "removed": [redact_url(u) for u in sync.removed],
                },
            )
        if self.dispatcher is not None:
            await self.dispatcher.start()
        else:
            log.info("webhooks disabled: PODIUM_WEBHOOK_SECRET is not set")
        await self.retention.start()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop retention and the dispatcher (tries in flight get ``grace`` seconds)."""
        await self.retention.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop(grace)

    async def check_url(self, url: str, *, field: str = "webhook_url") -> None:
        """The StartRun check of a run's webhook URL (nothing to check when empty).

        Raises FailedPrecondition when webhooks are disabled (no secret), and
        InvalidArgument (one violation on ``field``) when the URL is refused.
        """
        violations = await self.url_violations(url, field=field)
        if violations:
            raise InvalidArgument(
                f"{field} is refused: {violations[0].description}",
                reason="WEBHOOK_URL_REFUSED",
                violations=violations,
            )

    async def url_violations(self, url: str, *, field: str = "webhook_url") -> list[FieldViolation]:
        """:meth:`check_url` for callers that report every problem of a request at once:
        the refusal as a violation on ``field`` (empty when the URL is empty or fine).
        Raises FailedPrecondition when webhooks are disabled."""
        if not url:
            return []
        if not self.enabled:
            raise FailedPrecondition(
                "webhooks are disabled on this server (PODIUM_WEBHOOK_SECRET is not set); "
                "start the run without webhook_url",
                reason="WEBHOOKS_DISABLED",
            )
        try:
            await check_webhook_url_async(url, allow_private=self._settings.allow_private_webhooks)
        except WebhookRefused as exc:
            return [FieldViolation(field=field, description=str(exc))]
        return []

    async def list_deliveries(
        self, organization_id: str, request: pb.ListWebhookDeliveriesRequest
    ) -> tuple[list[pb.WebhookDelivery], str]:
        """A page of deliveries, newest first, filtered by run and states."""
        size = page_size(request.page_size)
        run_id = parse_run_id(request.run_id) if request.run_id else None
        states: list[str] = []
        for i, state in enumerate(request.states):
            if state not in _STATE_NAMES:
                raise InvalidArgument(
                    "unknown webhook delivery state",
                    violations=[
                        FieldViolation(field=f"states[{i}]", description="unknown delivery state")
                    ],
                )
            states.append(_STATE_NAMES[state])
        states = sorted(set(states))
        filters: dict[str, Any] = {"run_id": request.run_id, "states": states}
        after = decode_keyset(request.page_token, filters)
        async with storage_errors():
            rows = await self._repository.list_deliveries(
                organization_id, run_id=run_id, states=states, after=after, limit=size + 1
            )
        return bounded_keyset_page(rows, size, filters, delivery_to_proto, self.max_response_bytes)
