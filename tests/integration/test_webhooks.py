"""Webhooks and retention against a real PostgreSQL and a real local HTTP receiver.

The receiver (stdlib ``http.server`` in a thread) verifies every request's Standard
Webhooks signature with its own code, so a wrong signature fails the tests even if
the signer and a verifier written alongside it agreed. The dispatcher and retention
run in the test next to the server (``WebhookService``), as the engine runs them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import grpc
import pytest

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.config import ConfigError, SecretValue, Settings
from podium.server.engine.errors import FailedPrecondition, InvalidArgument
from podium.server.engine.webhooks import WebhookService, check_webhook_configuration
from podium.server.events.retention import EventRetention, RetentionConfig, RetentionResult
from podium.server.storage.database import Database
from podium.server.storage.webhooks import WebhooksRepository
from tests.integration.conftest import StartServer, static_agents
from tests.integration.rpc import violations
from tests.integration.runs_helpers import (
    all_events,
    event_type,
    plain,
    plan,
    wait_for_run,
    wait_until,
)

SECRET = "whsec_" + base64.b64encode(b"podium webhook test secret, 32 b").decode()
ORG = "default"
Delivery = pb.WebhookDelivery

# --------------------------------------------------------------------------- receiver


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    webhook_id: str
    timestamp: str
    signature_ok: bool
    body: dict[str, Any]
    path: str
    host: str
    answered: int


def verify_standard_webhook(secret: str, headers: Any, raw: bytes) -> bool:
    """An independent Standard Webhooks verifier: any ``v1,`` signature of the
    space-separated list matches HMAC-SHA256(base64-decoded secret,
    "{id}.{timestamp}.{body}"), and the timestamp is within five minutes."""
    key = base64.b64decode(secret.split("_", 1)[1])
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > 300:
        return False
    expected = base64.b64encode(
        hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + raw, hashlib.sha256).digest()
    ).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a timed-out try) is expected here."""


class Receiver:
    """A webhook receiver on 127.0.0.1: records each request on arrival and answers
    ``status`` except for the first ``fail_first`` requests of each webhook-id (500),
    optionally after ``hold`` seconds (released early by :meth:`release`)."""

    def __init__(
        self, secret: str = SECRET, *, status: int = 200, fail_first: int = 0, hold: float = 0
    ) -> None:
        self.secret = secret
        self.status = status
        self.fail_first = fail_first
        self.hold = hold
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    tries = sum(
                        1 for r in receiver.requests if r.webhook_id == self.headers["webhook-id"]
                    )
                    status = 500 if tries < receiver.fail_first else receiver.status
                    receiver.requests.append(
                        Received(
                            webhook_id=self.headers["webhook-id"],
                            timestamp=self.headers["webhook-timestamp"],
                            signature_ok=verify_standard_webhook(
                                receiver.secret, self.headers, raw
                            ),
                            body=json.loads(raw),
                            path=self.path,
                            host=self.headers["Host"],
                            answered=status,
                        )
                    )
                assert self.headers["Content-Type"] == "application/json"
                if receiver.hold:  # recorded on arrival, answered later
                    receiver._released.wait(receiver.hold)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/podium?team=a"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Factory of receivers, all closed after the test."""
    made: list[Receiver] = []

    def make(**options: Any) -> Receiver:
        made.append(Receiver(**options))
        return made[-1]

    yield make
    for r in made:
        r.close()


# --------------------------------------------------------------------------- services

MakeService = Callable[..., Awaitable[WebhookService]]

FAST = {
    "webhook_secret": SecretValue(SECRET),
    "allow_private_webhooks": True,
    "webhook_backoff_initial_seconds": 0.05,
    "webhook_backoff_max_seconds": 0.1,
    "webhook_timeout_seconds": 5.0,
    "poll_interval_seconds": 0.2,
}


def settings(database_url: str, **overrides: Any) -> Settings:
    return Settings.from_env(
        {}, database_url=database_url, agent_allowed_networks="loopback", **{**FAST, **overrides}
    )


@pytest.fixture
async def webhooks(db: Database, database_url: str) -> AsyncIterator[MakeService]:
    """Factory: ``await webhooks(**settings)`` builds and starts a WebhookService (the
    dispatcher and retention of one replica) on the test database; stopped after."""
    started: list[WebhookService] = []

    async def make(**overrides: Any) -> WebhookService:
        service = WebhookService(db, database_url, settings(database_url, **overrides))
        await service.start()
        started.append(service)
        return service

    yield make
    for service in reversed(started):
        await service.stop()


async def make_run(db: Database, *, webhook_url: str | None = None) -> uuid.UUID:
    """A running run (no steps) straight in the database."""
    async with db.connection() as conn:
        run_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO orchestration_runs (organization_id, plan, state, webhook_url) "
            "VALUES ($1, '{}', 'running', $2) RETURNING id",
            ORG,
            webhook_url,
        )
    return run_id


async def emit(db: Database, run_id: uuid.UUID, *types: str) -> None:
    """Append events with podium_emit_event (one statement each, like the engine)."""
    async with db.connection() as conn:
        for t in types:
            await conn.fetchval(
                "SELECT podium_emit_event($1, $2, NULL, NULL, NULL, $3)", run_id, t, {"n": 1}
            )


async def deliveries(
    service: WebhookService,
    run_id: uuid.UUID | str | None = None,
    *states: Delivery.State.ValueType,
) -> list[Delivery]:
    request = pb.ListWebhookDeliveriesRequest(
        run_id=str(run_id or ""), states=list(states), page_size=500
    )
    found, _ = await service.list_deliveries(ORG, request)
    return found


async def settled(
    service: WebhookService, run_id: uuid.UUID | str, count: int, *, within: float = 20
) -> list[Delivery]:
    """Wait until ``count`` deliveries of the run exist and none is pending."""

    async def done() -> bool:
        found = await deliveries(service, run_id)
        return len(found) == count and all(d.state != Delivery.STATE_PENDING for d in found)

    await wait_until(done, f"{count} settled deliveries", within=within)
    return await deliveries(service, run_id)


# --------------------------------------------------------------------------- end to end


async def test_a_run_webhook_receives_every_event_of_the_run_signed(
    start_server: StartServer,
    example_agents: ExampleAgents,
    webhooks: MakeService,
    receiver: Callable[..., Receiver],
) -> None:
    """A run started with webhook_url: the receiver gets each event of ListRunEvents
    exactly once, as {type, timestamp, data}, signed (independent verifier), with
    webhook-id = the delivery id, the URL's path/query and Host header."""
    hook = receiver()
    service = await webhooks()
    # The server's own sender runs too (same secret): deliveries are claimed with SKIP
    # LOCKED, so each is sent once whichever sender takes it.
    server = await start_server(agents=static_agents(example_agents, "echo"), **FAST)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        started = await stub.StartRun(
            pb.StartRunRequest(
                plan=plan(
                    [
                        {"id": "a", "agent": "echo", "input": {"x": 1}},
                        {"id": "b", "agent": "echo", "depends_on": ["a"]},
                    ]
                ),
                webhook_url=hook.url,
                start=True,
            )
        )
        run_id = started.run.id
        await wait_for_run(stub, run_id)
        events = await all_events(stub, run_id)

    found = await settled(service, run_id, len(events))
    assert all(d.state == Delivery.STATE_DELIVERED and d.attempts == 1 for d in found), found
    assert [d.sequence for d in found] == [e.sequence for e in reversed(events)]  # newest first
    got = hook.received()
    assert len(got) == len(events)
    assert all(r.signature_ok for r in got)
    assert {r.webhook_id for r in got} == {d.id for d in found}
    assert {r.path for r in got} == {"/hooks/podium?team=a"}
    assert {r.host for r in got} == {f"127.0.0.1:{hook.port}"}
    by_sequence = {r.body["data"]["sequence"]: r.body for r in got}
    assert sorted(by_sequence) == [e.sequence for e in events]
    for event in events:
        body = by_sequence[event.sequence]
        assert body["type"] == event_type(event)
        assert body["timestamp"].endswith("Z")
        assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")) == (
            event.time.ToDatetime(tzinfo=UTC)
        )
        data = body["data"]
        assert data["run_id"] == run_id and data["organization_id"] == ORG
        assert data["step_id"] == (event.step_id or None)
        assert (data["attempt"] or 0) == event.attempt
    completed = [b for b in by_sequence.values() if b["type"] == "step.completed"]
    assert {b["data"]["step_id"] for b in completed} == {"a", "b"}
    assert by_sequence[max(by_sequence)]["type"] == "run.completed"
    assert by_sequence[max(by_sequence)]["data"]["run_state"] == "succeeded"
    # Each delivery shows the body it carries.
    assert all(plain(d.payload)["data"]["run_id"] == run_id for d in found)


# --------------------------------------------------------------------------- outbox


async def test_deliveries_are_written_with_the_event_or_not_at_all(
    db: Database, webhooks: MakeService, receiver: Callable[..., Receiver]
) -> None:
    """A rolled-back event leaves no delivery; a run without URL (and no configured
    target) gets none; the same URL as run URL and global target is sent once."""
    hook = receiver()
    service = await webhooks()
    run_id = await make_run(db, webhook_url=hook.url)
    async with db.connection() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.fetchval(
            "SELECT podium_emit_event($1, 'run.started', NULL, NULL, NULL, '{}')", run_id
        )
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 1
        await tx.rollback()
    assert await deliveries(service) == []

    quiet = await make_run(db)
    await emit(db, quiet, "run.started", "run.completed")
    assert await deliveries(service) == []

    await service.stop()
    both = await webhooks(progress_webhook_url=hook.url)
    await emit(db, run_id, "run.started")
    found = await settled(both, run_id, 1)
    assert [d.url for d in found] == [hook.url]


async def test_a_failing_receiver_sees_retries_until_it_accepts(
    db: Database, webhooks: MakeService, receiver: Callable[..., Receiver]
) -> None:
    """500 for the first two tries of each message: third try delivered, same
    webhook-id on each try, each try signed, attempts = 3, last error kept."""
    hook = receiver(fail_first=2)
    service = await webhooks()
    run_id = await make_run(db, webhook_url=hook.url)
    await emit(db, run_id, "run.started", "run.completed")

    found = await settled(service, run_id, 2)
    assert [(d.state, d.attempts) for d in found] == [(Delivery.STATE_DELIVERED, 3)] * 2
    assert all(d.last_error.startswith("HTTP 500") for d in found)
    assert not any(d.HasField("next_attempt_time") for d in found)
    got = hook.received()
    assert len(got) == 6 and all(r.signature_ok for r in got)
    for d in found:
        assert [r.answered for r in got if r.webhook_id == d.id] == [500, 500, 200]


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, "HTTP 500 Internal Server Error"), (302, "HTTP 302 Found (redirects are not followed)")],
)
async def test_a_delivery_is_dead_after_the_last_try(
    db: Database,
    webhooks: MakeService,
    receiver: Callable[..., Receiver],
    status: int,
    error: str,
) -> None:
    """Always failing (5xx, or a redirect, which is never followed): dead after
    PODIUM_WEBHOOK_MAX_ATTEMPTS tries, with the last error; no try more."""
    hook = receiver(status=status)
    service = await webhooks(webhook_max_attempts=3)
    run_id = await make_run(db, webhook_url=hook.url)
    await emit(db, run_id, "run.started")

    [dead] = await settled(service, run_id, 1)
    assert (dead.state, dead.attempts, dead.last_error) == (Delivery.STATE_DEAD, 3, error)
    assert service.dispatcher is not None and service.dispatcher.dead_total == 1
    # A later delivery goes through: the dispatcher claimed again since, and the only
    # claims it ever made were the 3 tries and that delivery.
    later = await make_run(db, webhook_url=receiver().url)
    await emit(db, later, "run.started")
    assert [d.state for d in await settled(service, later, 1)] == [Delivery.STATE_DELIVERED]
    assert service.dispatcher.claimed_total == 4
    assert [r.answered for r in hook.received()] == [status] * 3
    assert len(await deliveries(service, run_id, Delivery.STATE_DEAD)) == 1
    assert await deliveries(service, run_id, Delivery.STATE_PENDING) == []


async def test_a_receiver_that_does_not_answer_times_out(
    db: Database, webhooks: MakeService, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(hold=10)
    service = await webhooks(webhook_timeout_seconds=0.3, webhook_max_attempts=1)
    run_id = await make_run(db, webhook_url=hook.url)
    await emit(db, run_id, "run.started")
    [dead] = await settled(service, run_id, 1)
    assert (dead.state, dead.last_error) == (Delivery.STATE_DEAD, "timed out after 0.3s")


async def test_an_unreachable_receiver_is_a_connection_error(
    db: Database, webhooks: MakeService
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = await webhooks(webhook_max_attempts=2)
    run_id = await make_run(db, webhook_url=f"http://127.0.0.1:{port}/")
    await emit(db, run_id, "run.started")
    [dead] = await settled(service, run_id, 1)
    assert dead.state == Delivery.STATE_DEAD and dead.attempts == 2
    assert dead.last_error.startswith("connection failed"), dead.last_error


async def test_a_name_rebound_to_loopback_is_refused_at_delivery(
    db: Database,
    webhooks: MakeService,
    receiver: Callable[..., Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the URL's name resolves to 127.0.0.1 when the try is made, so
    the try is refused (private targets not allowed) and nothing is sent."""
    hook = receiver()
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "rebind.test" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    service = await webhooks(allow_private_webhooks=False, webhook_max_attempts=1)
    run_id = await make_run(db, webhook_url=f"http://rebind.test:{hook.port}/hook")
    await emit(db, run_id, "run.started")
    [dead] = await settled(service, run_id, 1)
    assert dead.state == Delivery.STATE_DEAD
    assert dead.last_error.startswith(
        "refused: rebind.test resolves to 127.0.0.1, a loopback address"
    ), dead.last_error
    assert hook.received() == []


async def test_two_dispatchers_share_the_outbox_without_double_sends(
    db: Database, webhooks: MakeService, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver()
    first = await webhooks(webhook_concurrency=2)
    await webhooks(webhook_concurrency=2)
    run_id = await make_run(db, webhook_url=hook.url)
    await emit(db, run_id, *(["step.progress"] * 40))
    found = await settled(first, run_id, 40)
    assert all(d.state == Delivery.STATE_DELIVERED and d.attempts == 1 for d in found)
    ids = [r.webhook_id for r in hook.received()]
    assert sorted(ids) == sorted(d.id for d in found)


async def test_stopping_gives_interrupted_tries_back(
    db: Database, webhooks: MakeService, receiver: Callable[..., Receiver]
) -> None:
    """A try in flight when the replica stops is given back: not counted, due at once
    (another replica sends it; at least once)."""
    hook = receiver(hold=10)
    service = await webhooks()
    run_id = await make_run(db, webhook_url=hook.url)
    await emit(db, run_id, "run.started")
    await wait_until(lambda: len(hook.received()) == 1, "the first try")
    await service.stop(0)
    async with db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT state, attempts, next_attempt_at <= now() AS due FROM webhook_deliveries"
        )
    assert row is not None and dict(row) == {"state": "pending", "attempts": 0, "due": True}
    hook.release()


# --------------------------------------------------------------------------- targets, checks


async def test_the_configured_url_becomes_the_organization_target(
    db: Database, webhooks: MakeService, receiver: Callable[..., Receiver]
) -> None:
    """ORCHESTRATION_PROGRESS_WEBHOOK_URL is stored as the organization's target at
    start (replacing a stale one, removed when unset) and receives every run's events."""
    old, new = receiver(), receiver()
    repo = WebhooksRepository(db)
    service = await webhooks(progress_webhook_url=old.url)
    assert await repo.list_targets(ORG) == [old.url]
    await service.stop()

    service = await webhooks(progress_webhook_url=new.url)
    assert await repo.list_targets(ORG) == [new.url]
    run_id = await make_run(db)  # no URL of its own
    await emit(db, run_id, "run.started", "run.completed")
    found = await settled(service, run_id, 2)
    assert {d.url for d in found} == {new.url}
    assert len(new.received()) == 2 and old.received() == []
    await service.stop()

    await webhooks(progress_webhook_url=None)
    assert await repo.list_targets(ORG) == []


async def test_a_bad_configured_url_is_a_startup_error(db: Database, database_url: str) -> None:
    with pytest.raises(ConfigError, match="PODIUM_WEBHOOK_SECRET is not"):
        WebhookService(
            db,
            database_url,
            settings(database_url, webhook_secret=None, progress_webhook_url="http://8.8.8.8/"),
        )
    refused = settings(
        database_url, allow_private_webhooks=False, progress_webhook_url="http://127.0.0.1/x"
    )
    with pytest.raises(ConfigError, match=r"PROGRESS_WEBHOOK_URL=.*127\.0\.0\.1.*loopback"):
        await check_webhook_configuration(refused)


async def test_check_url_is_the_start_run_check(db: Database, database_url: str) -> None:
    """No secret: FAILED_PRECONDITION; a refused URL: INVALID_ARGUMENT on webhook_url
    with the reason; allowed private targets pass; an empty URL is not checked."""
    disabled = WebhookService(db, database_url, settings(database_url, webhook_secret=None))
    with pytest.raises(FailedPrecondition) as no_secret:
        await disabled.check_url("http://8.8.8.8/")
    assert no_secret.value.reason == "WEBHOOKS_DISABLED"
    await disabled.check_url("")

    strict = WebhookService(db, database_url, settings(database_url, allow_private_webhooks=False))
    for url, reason in [
        ("http://127.0.0.1:8080/x", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/", "loopback"),
        ("ftp://example.com/", "only http:// and https://"),
        ("http://user:pw@example.com/", "user information"),
    ]:
        with pytest.raises(InvalidArgument) as refused:
            await strict.check_url(url)
        assert refused.value.reason == "WEBHOOK_URL_REFUSED"
        [violation] = refused.value.violations
        assert violation.field == "webhook_url" and reason in violation.description, url
    await strict.check_url("http://8.8.8.8/hook")

    relaxed = WebhookService(db, database_url, settings(database_url))
    await relaxed.check_url("http://127.0.0.1:8080/x")


async def test_list_deliveries_pages_and_filters(
    db: Database, webhooks: MakeService, receiver: Callable[..., Receiver]
) -> None:
    ok, failing = receiver(), receiver(status=500)
    service = await webhooks(webhook_max_attempts=1)
    good, bad = await make_run(db, webhook_url=ok.url), await make_run(db, webhook_url=failing.url)
    await emit(db, good, "run.started", "run.completed")
    await emit(db, bad, "run.started", "step.queued", "run.failed")
    await settled(service, good, 2)
    await settled(service, bad, 3)

    pages: list[list[Delivery]] = []
    token = ""
    while True:
        found, token = await service.list_deliveries(
            ORG, pb.ListWebhookDeliveriesRequest(page_size=2, page_token=token)
        )
        pages.append(found)
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [d for p in pages for d in p]
    assert len({d.id for d in listed}) == 5
    assert [d.sequence for d in listed if d.run_id == str(bad)] == [3, 2, 1]  # newest first

    assert {d.run_id for d in await deliveries(service, None, Delivery.STATE_DEAD)} == {str(bad)}
    assert len(await deliveries(service, good, Delivery.STATE_DELIVERED)) == 2
    assert await deliveries(service, good, Delivery.STATE_DEAD) == []

    _, first_token = await service.list_deliveries(
        ORG, pb.ListWebhookDeliveriesRequest(page_size=1)
    )
    other_filters = pb.ListWebhookDeliveriesRequest(page_token=first_token, run_id=str(good))
    with pytest.raises(InvalidArgument, match="other filters"):
        await service.list_deliveries(ORG, other_filters)
    with pytest.raises(InvalidArgument, match="run id"):
        await service.list_deliveries(ORG, pb.ListWebhookDeliveriesRequest(run_id="nope"))
    with pytest.raises(InvalidArgument, match="state"):
        await service.list_deliveries(
            ORG, pb.ListWebhookDeliveriesRequest(states=[Delivery.State.ValueType(42)])
        )


# --------------------------------------------------------------------------- retention


async def _backdate_run(db: Database, run_id: uuid.UUID, *, state: str, age: timedelta) -> None:
    """Make a run and its events (and deliveries) look ``age`` old."""
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE orchestration_runs SET state = $2, "
            "ended_at = CASE WHEN $2 IN ('succeeded', 'failed', 'cancelled') "
            "THEN now() - $3::interval END WHERE id = $1",
            run_id,
            state,
            age,
        )
        await conn.execute(
            "UPDATE orchestration_events SET created_at = now() - $2::interval - "
            "make_interval(secs => 1000 - sequence) WHERE run_id = $1",
            run_id,
            age,
        )


async def _event_counts(db: Database) -> dict[uuid.UUID, int]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT run_id, count(*) AS n FROM orchestration_events GROUP BY run_id"
        )
    return {r["run_id"]: r["n"] for r in rows}


@pytest.mark.parametrize("batch_size", [10_000, 3])
async def test_retention_deletes_old_events_of_ended_runs_only(
    db: Database, batch_size: int
) -> None:
    """Runs ended 10 days ago lose their whole log; a run still running with events
    as old keeps them, and so does a run that ended an hour ago. Works the same in
    small batches (the scan walks past kept events)."""
    old_done, old_failed, live, recent = [await make_run(db) for _ in range(4)]
    for run_id in (old_done, old_failed, live, recent):
        await emit(db, run_id, *(["step.progress"] * 5))
    age = timedelta(days=10)
    await _backdate_run(db, live, state="running", age=age)
    await _backdate_run(db, old_done, state="succeeded", age=age)
    await _backdate_run(db, old_failed, state="cancelled", age=age)
    await _backdate_run(db, recent, state="failed", age=timedelta(hours=1))
    async with db.connection() as conn:  # the recent run's events are old, itself not
        await conn.execute(
            "UPDATE orchestration_events SET created_at = now() - interval '9 days' "
            "WHERE run_id = $1",
            recent,
        )

    retention = EventRetention(
        WebhooksRepository(db), RetentionConfig(retention_hours=24 * 7, batch_size=batch_size)
    )
    result = await retention.run_once()
    assert (result.events, result.skipped) == (10, False)
    assert await _event_counts(db) == {live: 5, recent: 5}
    assert (await retention.run_once()).events == 0


async def test_retention_deletes_finished_deliveries_and_keeps_pending_ones(
    db: Database,
) -> None:
    run_id = await make_run(db, webhook_url="http://192.0.2.1/")
    await emit(db, run_id, "run.started", "step.queued", "run.completed")
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE webhook_deliveries SET created_at = now() - interval '30 days', "
            "state = CASE sequence WHEN 1 THEN 'delivered' WHEN 2 THEN 'dead' ELSE state END"
        )
        await emit(db, run_id, "run.started")  # a recent delivered one stays
        await conn.execute("UPDATE webhook_deliveries SET state = 'delivered' WHERE sequence = 4")
    retention = EventRetention(WebhooksRepository(db), RetentionConfig(retention_hours=24))
    result = await retention.run_once()
    assert result.deliveries == 2
    async with db.connection() as conn:
        left = await conn.fetch("SELECT sequence, state FROM webhook_deliveries ORDER BY sequence")
    assert [(r["sequence"], r["state"]) for r in left] == [(3, "pending"), (4, "delivered")]


async def test_retention_skips_while_another_replica_prunes(
    db: Database, database_url: str
) -> None:
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            assert await other.fetchval("SELECT pg_try_advisory_xact_lock(2003331955, 0)")
            retention = EventRetention(WebhooksRepository(db), RetentionConfig())
            assert (await retention.run_once()).skipped
    finally:
        await other.close()
    assert not (await EventRetention(WebhooksRepository(db), RetentionConfig()).run_once()).skipped
    disabled = EventRetention(WebhooksRepository(db), RetentionConfig(retention_hours=0))
    assert not disabled.config.enabled
    assert await disabled.run_once() == RetentionResult()


async def test_start_run_refuses_a_private_webhook_target(start_server: StartServer) -> None:
    """SSRF guard at the API: a loopback webhook_url is INVALID_ARGUMENT naming the field,
    and no run is created."""
    server = await start_server(**{**FAST, "allow_private_webhooks": False})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.StartRun(
                pb.StartRunRequest(
                    plan=plan([{"id": "a", "agent": "echo"}]),
                    webhook_url="http://127.0.0.1:8080/hook",
                    start=True,
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        found = violations(caught.value)
        assert "webhook_url" in found and "loopback" in found["webhook_url"].lower()
        assert list((await stub.ListRuns(pb.ListRunsRequest())).runs) == []
