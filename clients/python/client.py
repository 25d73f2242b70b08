"""The Podium client: :class:`PodiumClient` (asyncio) and :class:`SyncPodiumClient`.

Both speak ``podium.orchestration.v1.OrchestrationService`` over one gRPC channel and
return the generated protobuf messages (``Run``, ``RunEvent``, ``Definition``...):

- every call has a deadline (``timeout``, 30 s unless told otherwise), except the
  streams, which last as long as the run;
- idempotent calls are retried on UNAVAILABLE with exponential backoff by gRPC itself
  (a service config on the channel, :class:`RetryPolicy`); ``StartRun``, ``ForkRun`` and
  ``DecideApproval`` are made idempotent by a ``request_id`` the client generates when
  the caller gives none, so a retry never creates a second run;
- failures raise the typed errors of :mod:`podium.client.errors` (``ValidationError``
  with every field violation, ``NotFoundError``...);
- :meth:`PodiumClient.watch_run` is an async iterator over a run's events that
  reconnects after a lost stream or a server restart and resumes after the last
  sequence it yielded: every event exactly once, in order, until the terminal event.

Example::

    async with PodiumClient("127.0.0.1:50051") as podium:
        run = await podium.start_run("research-brief", input={"topic": "tea"})
        async for event in podium.watch_run(run.id):
            print(event.sequence, RunEvent.Type.Name(event.type))
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from podium.client.client_payloads import PayloadMethods
from podium.client.client_policy import PolicyMethods
from podium.client.client_schedules import ScheduleMethods
from podium.client.common import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT_SECONDS,
    TERMINAL_EVENT_TYPES,
    TERMINAL_RUN_STATES,
    DefinitionSource,
    EventPage,
    Page,
    RetryPolicy,
    WatchPolicy,
    definition_message,
    enum_value,
    struct_or_none,
    to_dict,
)
from podium.client.errors import PodiumError, UnavailableError, from_rpc_error, from_status
from podium.orchestration.v1 import (
    agent_pb2,
    approval_pb2,
    definition_pb2,
    event_pb2,
    run_pb2,
)
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

# The public names of the client, re-exported here for ``podium.client.client`` users;
# SyncPodiumClient lives in ``podium.client.sync_client``.
__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT_SECONDS",
    "TERMINAL_EVENT_TYPES",
    "TERMINAL_RUN_STATES",
    "DefinitionSource",
    "EventPage",
    "Page",
    "PodiumClient",
    "RetryPolicy",
    "WatchPolicy",
    "to_dict",
]

T = TypeVar("T")


API_KEY_ENV = "PODIUM_API_KEY"
"""The environment variable clients read an API key from when none is given."""


def auth_metadata(api_key: str | None = None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying ``api_key`` (``PODIUM_API_KEY`` when None; nothing
    when neither is set). Metadata rather than call credentials: gRPC refuses call
    credentials on a plaintext channel."""
    key = os.environ.get(API_KEY_ENV, "") if api_key is None else api_key
    key = key.strip()
    return (("authorization", f"Bearer {key}"),) if key else ()


class PodiumClient(ScheduleMethods, PayloadMethods, PolicyMethods):
    """Asyncio client of Podium's OrchestrationService.

    Use as ``async with PodiumClient(address) as client: ...`` or call :meth:`close`.
    Methods raise :class:`~podium.client.errors.PodiumError` subclasses on failure.

    Args:
        address: ``HOST:PORT`` of a Podium server.
        timeout: Default deadline of unary calls in seconds (``None``: no deadline).
        retry: Retries of idempotent calls on UNAVAILABLE (``None``: no retries).
        watch: Reconnection of :meth:`watch_run`.
        credentials: TLS credentials; ``None`` uses a plaintext channel.
        metadata: Sent with every call.
        api_key: A Podium API key, sent with every call as ``authorization: Bearer
            <key>``; ``None`` reads ``PODIUM_API_KEY`` from the environment (unset: no
            key, for servers with authentication off).
        options: Extra gRPC channel arguments, applied after the client's own.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        retry: RetryPolicy | None = RetryPolicy(),
        watch: WatchPolicy = WatchPolicy(),
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Iterable[tuple[str, str]] = (),
        api_key: str | None = None,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.watch_policy = watch
        self._metadata = tuple(metadata) + auth_metadata(api_key)
        channel_options: list[tuple[str, Any]] = [
            # A restarted server is found again within a few seconds, not minutes.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 3_000),
            # Notice half-open connections of long WatchRun streams (the server allows
            # pings every 10 s).
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 1 if retry is not None else 0),
        ]
        if retry is not None:
            channel_options.append(("grpc.service_config", json.dumps(retry.service_config())))
        channel_options.extend(options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options=channel_options)
        self._stub: pb_grpc.OrchestrationServiceAsyncStub = pb_grpc.OrchestrationServiceStub(
            self._channel
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def connected(self) -> bool:
        """Whether the channel is connected to the server now (READY)."""
        return self._channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close(None)

    async def _unary(
        self, method: Callable[..., Any], request: Message, timeout: float | None
    ) -> Any:
        try:
            return await method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    # -- Definitions ---------------------------------------------------------------

    async def create_definition(
        self,
        definition: DefinitionSource,
        *,
        force_new_version: bool = False,
        timeout: float | None = None,
    ) -> definition_pb2.Definition:
        """Store a new version of a named definition; returns it with its version.

        Idempotent: when the latest version has the same content, it is returned and
        nothing is stored (``force_new_version`` stores a new version anyway);
        :meth:`apply_definition` also tells which happened.

        Raises:
            ValidationError: The definition is invalid (one violation per problem).
            FailedPreconditionError: The definition is archived.
        """
        stored, _ = await self.apply_definition(
            definition, force_new_version=force_new_version, timeout=timeout
        )
        return stored

    async def apply_definition(
        self,
        definition: DefinitionSource,
        *,
        force_new_version: bool = False,
        timeout: float | None = None,
    ) -> tuple[definition_pb2.Definition, bool]:
        """:meth:`create_definition`, returning also whether a new version was stored
        (``False``: the latest version had the same content and is returned)."""
        request = pb.CreateDefinitionRequest(
            definition=definition_message(definition), force_new_version=force_new_version
        )
        response = await self._unary(self._stub.CreateDefinition, request, timeout)
        return response.definition, not response.existing

    async def validate_definition(
        self, definition: DefinitionSource, *, timeout: float | None = None
    ) -> definition_pb2.Definition:
        """Check a definition without storing it; returns it normalized.

        Raises:
            ValidationError: The definition is invalid (one violation per problem).
        """
        request = pb.ValidateDefinitionRequest(definition=definition_message(definition))
        response = await self._unary(self._stub.ValidateDefinition, request, timeout)
        return response.definition  # type: ignore[no-any-return]

    async def get_definition(
        self, name: str, *, version: int = 0, timeout: float | None = None
    ) -> definition_pb2.Definition:
        """A definition's latest version, or ``version``."""
        request = pb.GetDefinitionRequest(name=name, version=version)
        response = await self._unary(self._stub.GetDefinition, request, timeout)
        return response.definition  # type: ignore[no-any-return]

    async def list_definitions(
        self,
        *,
        name_prefix: str = "",
        include_archived: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[definition_pb2.Definition]:
        """One page of definitions (latest version of each), ordered by name."""
        request = pb.ListDefinitionsRequest(
            name_prefix=name_prefix,
            include_archived=include_archived,
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._unary(self._stub.ListDefinitions, request, timeout)
        return Page(list(response.definitions), response.next_page_token)

    async def iter_definitions(
        self, *, name_prefix: str = "", include_archived: bool = False
    ) -> AsyncIterator[definition_pb2.Definition]:
        """Every definition (latest versions), fetching pages as needed."""
        token = ""
        while True:
            page = await self.list_definitions(
                name_prefix=name_prefix,
                include_archived=include_archived,
                page_size=500,
                page_token=token,
            )
            for definition in page.items:
                yield definition
            token = page.next_page_token
            if not token:
                return

    async def archive_definition(
        self, name: str, *, timeout: float | None = None
    ) -> definition_pb2.Definition:
        """Archive every version of a definition (new runs are refused); returns the
        latest version."""
        request = pb.ArchiveDefinitionRequest(name=name)
        response = await self._unary(self._stub.ArchiveDefinition, request, timeout)
        return response.definition  # type: ignore[no-any-return]

    # -- Runs ----------------------------------------------------------------------

    async def start_run(
        self,
        definition: str | None = None,
        *,
        version: int = 0,
        plan: DefinitionSource | None = None,
        input: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        start: bool = True,
        bypass_cache: bool = False,
        webhook_url: str = "",
        start_time: datetime | None = None,
        priority: int | None = None,
        timeout: float | None = None,
    ) -> run_pb2.Run:
        """Create a run of a saved definition (``definition``, ``version``) or of an
        inline ``plan``, and start it unless ``start`` is false (it then waits for
        :meth:`continue_run`). ``start_time`` (aware) delays the start: the run is
        created now and started then by the server, also across restarts. ``priority``
        (0-9, higher claimed first; None: the definition's) orders the claim.

        ``request_id`` makes the call idempotent (a repeat returns the same run); one is
        generated when omitted, so the client's own retries never start a second run.

        Raises:
            ValueError: Neither or both of ``definition`` and ``plan`` were given.
            ValidationError: The plan or the input is invalid.
            NotFoundError: The definition does not exist.
        """
        if (definition is None) == (plan is None):
            raise ValueError("give exactly one of definition (a name) and plan")
        request = pb.StartRunRequest(
            input=struct_or_none(input),
            metadata=struct_or_none(metadata),
            labels=dict(labels or {}),
            request_id=request_id or str(uuid.uuid4()),
            start=start,
            bypass_cache=bypass_cache,
            webhook_url=webhook_url,
        )
        if plan is not None:
            request.plan.CopyFrom(definition_message(plan))
        elif definition is not None:
            request.definition.CopyFrom(pb.DefinitionRef(name=definition, version=version))
        if start_time is not None:
            request.start_time.FromDatetime(start_time)
        if priority is not None:
            request.priority = priority
        response = await self._unary(self._stub.StartRun, request, timeout)
        return response.run  # type: ignore[no-any-return]

    async def get_run(
        self,
        run_id: str,
        *,
        view: run_pb2.RunView.ValueType | str = run_pb2.RUN_VIEW_UNSPECIFIED,
        fill_omitted: bool = False,
        timeout: float | None = None,
    ) -> run_pb2.Run:
        """A run with its steps. ``view``: ``"basic"`` (no inputs, outputs, metadata or
        plan) or ``"full"`` (the default). A full run larger than the server's message
        limit comes without its largest payloads, listed in ``omitted``;
        ``fill_omitted`` reads them back (:meth:`fill_omitted`).

        Raises:
            ValueError: An unknown view name.
        """
        request = pb.GetRunRequest(
            run_id=run_id, view=enum_value(run_pb2.RunView, "RUN_VIEW_", view)
        )
        response = await self._unary(self._stub.GetRun, request, timeout)
        run: run_pb2.Run = response.run
        return await self.fill_omitted(run, timeout=timeout) if fill_omitted else run

    async def list_runs(
        self,
        *,
        states: Iterable[run_pb2.Run.State.ValueType | str] = (),
        definition_name: str = "",
        labels: Mapping[str, str] | None = None,
        parent_run_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        view: run_pb2.RunView.ValueType | str = run_pb2.RUN_VIEW_UNSPECIFIED,
        timeout: float | None = None,
    ) -> Page[run_pb2.Run]:
        """One page of runs (without their steps), newest first; ``view`` ``"basic"``
        (the default: no input, output, metadata or plan) or ``"full"``. A page may hold
        fewer than ``page_size`` runs (it stops before the server's message limit).

        ``states`` are ``Run.State`` values or names (``"failed"``, ``"STATE_FAILED"``).

        Raises:
            ValueError: An unknown state name.
        """
        request = pb.ListRunsRequest(
            states=[enum_value(run_pb2.Run.State, "STATE_", state) for state in states],
            definition_name=definition_name,
            labels=dict(labels or {}),
            parent_run_id=parent_run_id,
            page_size=page_size,
            page_token=page_token,
            view=enum_value(run_pb2.RunView, "RUN_VIEW_", view),
        )
        response = await self._unary(self._stub.ListRuns, request, timeout)
        return Page(list(response.runs), response.next_page_token)

    async def cancel_run(
        self, run_id: str, *, reason: str = "", timeout: float | None = None
    ) -> run_pb2.Run:
        """Cancel a run: its agent calls are cancelled, no step starts afterwards."""
        request = pb.CancelRunRequest(run_id=run_id, reason=reason)
        response = await self._unary(self._stub.CancelRun, request, timeout)
        return response.run  # type: ignore[no-any-return]

    async def continue_run(
        self,
        run_id: str,
        *,
        input: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> run_pb2.Run:
        """Start a run created with ``start=False``, merging ``input`` over its input."""
        request = pb.ContinueRunRequest(run_id=run_id, input=struct_or_none(input))
        response = await self._unary(self._stub.ContinueRun, request, timeout)
        return response.run  # type: ignore[no-any-return]

    async def resume_run(self, run_id: str, *, timeout: float | None = None) -> run_pb2.Run:
        """Re-execute the failed, cancelled and skipped steps of a finished run, keeping
        the outputs of succeeded ones, as a new run attempt.

        Raises:
            FailedPreconditionError: The run has not finished.
        """
        request = pb.ResumeRunRequest(run_id=run_id)
        response = await self._unary(self._stub.ResumeRun, request, timeout)
        return response.run  # type: ignore[no-any-return]

    async def fork_run(
        self,
        run_id: str,
        step_ids: Iterable[str] = (),
        *,
        input: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> run_pb2.Run:
        """A new run of a finished run's plan ("rerun from here") that re-executes
        ``step_ids``, every step whose input the new ``input`` changes, and their
        dependents, and copies the other outputs."""
        request = pb.ForkRunRequest(
            run_id=run_id,
            step_ids=list(step_ids),
            input=struct_or_none(input),
            request_id=request_id or str(uuid.uuid4()),
        )
        response = await self._unary(self._stub.ForkRun, request, timeout)
        return response.run  # type: ignore[no-any-return]

    async def list_run_events(
        self,
        run_id: str,
        *,
        after_sequence: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> EventPage:
        """One page of a run's event log after ``after_sequence`` (or after the
        ``next_page_token`` of the previous page), in sequence order. The page's
        ``next_after_sequence`` is 0 (its token empty) when the log was read to its end.
        """
        if page_token:
            after_sequence = int(page_token)
        request = pb.ListRunEventsRequest(
            run_id=run_id, after_sequence=after_sequence, page_size=page_size
        )
        response = await self._unary(self._stub.ListRunEvents, request, timeout)
        following = int(response.next_after_sequence)
        return EventPage(list(response.events), str(following) if following else "", following)

    async def watch_run(
        self, run_id: str, *, after_sequence: int = 0
    ) -> AsyncIterator[event_pb2.RunEvent]:
        """The run's events after ``after_sequence``: the log so far, then live events,
        ending after the terminal event (run completed, failed or cancelled) that closes
        the log. A run resumed after it ended (ResumeRun) has more events after a
        terminal one: the iterator follows them to the end of the latest run attempt.

        A stream lost to UNAVAILABLE (network, server restart, replica shutdown) is
        re-opened after the last sequence yielded, with backoff (:class:`WatchPolicy`):
        the iterator yields every event exactly once, in sequence order.

        Raises:
            NotFoundError: The run does not exist.
            UnavailableError: No stream could be re-established within
                ``WatchPolicy.give_up_after_seconds``.
        """
        policy = self.watch_policy
        last = after_sequence
        backoff = policy.initial_backoff_seconds
        failing_since: float | None = None
        while True:
            call = self._stub.WatchRun(
                pb.WatchRunRequest(run_id=run_id, after_sequence=last), metadata=self._metadata
            )
            ended = False  # by itself or at a terminal event, not by an error
            failure: PodiumError | None = None
            try:
                async for response in call:
                    event = response.event
                    if event.sequence <= last:
                        continue  # never repeat an event, whatever the server sends
                    last = event.sequence
                    failing_since = None
                    backoff = policy.initial_backoff_seconds
                    yield event
                    if event.type in TERMINAL_EVENT_TYPES:
                        break
                ended = True
            except grpc.aio.AioRpcError as error:
                failure = from_rpc_error(error)
                if not isinstance(failure, UnavailableError):
                    raise failure from None
            finally:
                call.cancel()
            if ended:
                # The server ends a stream at a terminal event; the log goes on only
                # when the run was resumed since. One small read tells.
                try:
                    more = await self.list_run_events(run_id, after_sequence=last, page_size=1)
                except UnavailableError as error:
                    failure = error
                else:
                    if not more.items:
                        return
                    continue
            assert failure is not None
            now = time.monotonic()
            failing_since = now if failing_since is None else failing_since
            limit = policy.give_up_after_seconds
            if limit is not None and now - failing_since >= limit:
                raise failure
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, policy.max_backoff_seconds)

    async def wait_run(self, run_id: str, *, timeout: float | None = None) -> run_pb2.Run:
        """Wait until the run ends (watching its events, through a ResumeRun that happens
        meanwhile) and return it with its steps.

        Args:
            timeout: Seconds to wait in all (``None``: as long as it takes).

        Raises:
            DeadlineExceededError: The run had not ended within ``timeout``.
        """
        try:
            async with asyncio.timeout(timeout):
                async for _ in self.watch_run(run_id):
                    pass
        except TimeoutError:
            raise from_status(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"run {run_id} did not end within {timeout} s",
                None,
            ) from None
        return await self.get_run(run_id)

    async def watch_runs(
        self,
        *,
        definition_name: str = "",
        states: Iterable[run_pb2.Run.State.ValueType | str] = (),
        labels: Mapping[str, str] | None = None,
        start_time: float | None = None,
    ) -> AsyncIterator[event_pb2.RunEvent]:
        """Events of the organization's runs as they happen (dashboards), filtered by
        definition, run state after the event, and labels; from ``start_time`` (a POSIX
        timestamp) when given. The stream does not end on its own and is not resumed
        after a disconnect (it raises the error).
        """
        request = pb.WatchRunsRequest(
            definition_name=definition_name,
            states=[enum_value(run_pb2.Run.State, "STATE_", state) for state in states],
            labels=dict(labels or {}),
        )
        if start_time is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromNanoseconds(int(start_time * 1e9))
            request.start_time.CopyFrom(stamp)
        call = self._stub.WatchRuns(request, metadata=self._metadata)
        try:
            async for response in call:
                yield response.event
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()

    async def list_deliverables(
        self,
        run_id: str,
        *,
        step_id: str = "",
        include_data: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[run_pb2.Deliverable]:
        """One page of the artifacts a run's steps produced (their bytes only with
        ``include_data``)."""
        request = pb.ListDeliverablesRequest(
            run_id=run_id,
            step_id=step_id,
            include_data=include_data,
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._unary(self._stub.ListDeliverables, request, timeout)
        return Page(list(response.deliverables), response.next_page_token)

    async def list_webhook_deliveries(
        self,
        *,
        run_id: str = "",
        states: Iterable[pb.WebhookDelivery.State.ValueType | str] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[pb.WebhookDelivery]:
        """One page of webhook deliveries (newest first) and their status."""
        request = pb.ListWebhookDeliveriesRequest(
            run_id=run_id,
            states=[enum_value(pb.WebhookDelivery.State, "STATE_", state) for state in states],
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._unary(self._stub.ListWebhookDeliveries, request, timeout)
        return Page(list(response.deliveries), response.next_page_token)

    async def invalidate_cache(
        self, definition_name: str, *, definition_version: int = 0, timeout: float | None = None
    ) -> int:
        """Delete the step-cache entries of a definition (of one version, or all when
        0); returns how many were deleted."""
        request = pb.InvalidateCacheRequest(
            definition_name=definition_name, definition_version=definition_version
        )
        response = await self._unary(self._stub.InvalidateCache, request, timeout)
        return int(response.deleted)

    # -- External events -----------------------------------------------------------

    async def send_event(
        self,
        name: str,
        *,
        event_id: str,
        key: str = "",
        payload: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> pb.SendEventResponse:
        """Send an external event: every ``wait_for_event`` step waiting for ``name`` and
        ``key`` receives it, and steps that start waiting within the server's retention
        window too. Idempotent by ``event_id`` (a resend answers ``duplicate`` and
        delivers nothing), so a retry is safe.

        Raises:
            ValidationError: A field is invalid (one violation per problem).
        """
        request = pb.SendEventRequest(
            event_id=event_id, name=name, key=key, payload=struct_or_none(payload)
        )
        response: pb.SendEventResponse = await self._unary(self._stub.SendEvent, request, timeout)
        return response

    # -- Approvals -----------------------------------------------------------------

    async def list_approvals(
        self,
        *,
        run_id: str = "",
        states: Iterable[approval_pb2.Approval.State.ValueType | str] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[approval_pb2.Approval]:
        """One page of approvals, oldest first; pending ones unless ``states`` says
        otherwise (``"pending"``, ``"decided"``, ``"expired"``, ``"cancelled"``)."""
        request = pb.ListApprovalsRequest(
            run_id=run_id,
            states=[enum_value(approval_pb2.Approval.State, "STATE_", state) for state in states],
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._unary(self._stub.ListApprovals, request, timeout)
        return Page(list(response.approvals), response.next_page_token)

    async def get_approval(
        self, approval_id: str, *, timeout: float | None = None
    ) -> approval_pb2.Approval:
        """One approval."""
        request = pb.GetApprovalRequest(approval_id=approval_id)
        response = await self._unary(self._stub.GetApproval, request, timeout)
        return response.approval  # type: ignore[no-any-return]

    async def decide_approval(
        self,
        approval_id: str,
        decision: approval_pb2.Decision.ValueType | str,
        *,
        comment: str = "",
        actor: str = "",
        input: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        budget_max_tokens: int | None = None,
        budget_max_cost_usd: float | None = None,
        timeout: float | None = None,
    ) -> approval_pb2.Approval:
        """Record a decision: ``approve``/``reject`` (checkpoints) or ``retry``/``skip``/
        ``fail`` (failure reviews), as a ``Decision`` value or name. ``input`` is extra
        step input (checkpoint before) or a replacement output (after).
        ``budget_max_tokens`` / ``budget_max_cost_usd``: approving a budget approval, the
        budget's new limits (None keeps a limit).

        ``request_id`` makes the call idempotent: the same decision repeated with the same
        ``request_id`` returns the decided approval (one is generated when omitted, so
        the client's own retries are safe).

        Raises:
            FailedPreconditionError: The approval was decided already (reason
                ``APPROVAL_NOT_PENDING``), by another request or another decision.
        """
        request = pb.DecideApprovalRequest(
            approval_id=approval_id,
            decision=enum_value(approval_pb2.Decision, "DECISION_", decision),
            comment=comment,
            actor=actor,
            input=struct_or_none(input),
            request_id=request_id or str(uuid.uuid4()),
        )
        if budget_max_tokens is not None:
            request.budget_max_tokens = budget_max_tokens
        if budget_max_cost_usd is not None:
            request.budget_max_cost_usd = budget_max_cost_usd
        response = await self._unary(self._stub.DecideApproval, request, timeout)
        return response.approval  # type: ignore[no-any-return]

    async def get_usage(
        self,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        definition_name: str = "",
        agent: str = "",
        model: str = "",
        group_by: Sequence[str] = (),
        timeout: float | None = None,
    ) -> list[pb.UsageRow]:
        """The organization's model usage (GetUsage): attempts started in
        [start_time, end_time) (default: the last 30 days), filtered, grouped by
        ``group_by`` (``day``, ``definition``, ``agent``, ``model``)."""
        request = pb.GetUsageRequest(
            definition_name=definition_name,
            agent=agent,
            model=model,
            group_by=[enum_value(pb.GetUsageRequest.Dimension, "DIMENSION_", g) for g in group_by],
        )
        if start_time is not None:
            request.start_time.FromDatetime(start_time)
        if end_time is not None:
            request.end_time.FromDatetime(end_time)
        response = await self._unary(self._stub.GetUsage, request, timeout)
        return list(response.rows)

    async def approve(
        self,
        approval_id: str,
        *,
        comment: str = "",
        actor: str = "",
        input: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> approval_pb2.Approval:
        """Approve a checkpoint (:meth:`decide_approval` with ``approve``)."""
        return await self.decide_approval(
            approval_id,
            "approve",
            comment=comment,
            actor=actor,
            input=input,
            request_id=request_id,
            timeout=timeout,
        )

    async def reject(
        self,
        approval_id: str,
        *,
        comment: str = "",
        actor: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> approval_pb2.Approval:
        """Reject a checkpoint (:meth:`decide_approval` with ``reject``)."""
        return await self.decide_approval(
            approval_id,
            "reject",
            comment=comment,
            actor=actor,
            request_id=request_id,
            timeout=timeout,
        )

    # -- Agents --------------------------------------------------------------------

    async def register_agent(
        self,
        name: str,
        endpoint: str,
        *,
        skills: Iterable[str] = (),
        max_concurrency: int = 0,
        default_timeout_seconds: float = 0.0,
        labels: Mapping[str, str] | None = None,
        protocol: agent_pb2.Agent.Protocol.ValueType | str = agent_pb2.Agent.PROTOCOL_UNSPECIFIED,
        rate_limit: agent_pb2.AgentRateLimit | None = None,
        lazy: bool = False,
        timeout: float | None = None,
    ) -> agent_pb2.Agent:
        """Register (or update) an agent at ``endpoint``: a ``podium.agent.v1`` server,
        or an A2A agent with ``protocol="a2a"`` (an ``Agent.Protocol`` value or name).
        ``rate_limit``: requests and/or tokens per period (none when omitted). A
        ``podium.agent.v1`` agent must answer: what is not given comes from its card;
        ``lazy`` registers one that does not answer yet (its card is read when it does).

        Raises:
            ValueError: An unknown protocol name.
        """
        agent = agent_pb2.Agent(
            name=name,
            endpoint=endpoint,
            skills=list(skills),
            max_concurrency=max_concurrency,
            default_timeout_seconds=default_timeout_seconds,
            labels=dict(labels or {}),
            protocol=enum_value(agent_pb2.Agent.Protocol, "PROTOCOL_", protocol),
        )
        if rate_limit is not None:
            agent.rate_limit.CopyFrom(rate_limit)
        request = pb.RegisterAgentRequest(agent=agent, lazy=lazy)
        response = await self._unary(self._stub.RegisterAgent, request, timeout)
        return response.agent  # type: ignore[no-any-return]

    async def get_agent(self, name: str, *, timeout: float | None = None) -> agent_pb2.Agent:
        """The agent ``name``, with its health as the answering replica sees it."""
        request = pb.GetAgentRequest(name=name)
        response = await self._unary(self._stub.GetAgent, request, timeout)
        return response.agent  # type: ignore[no-any-return]

    async def list_agents(
        self,
        *,
        skill: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[agent_pb2.Agent]:
        """One page of agents (static and registered), optionally offering ``skill``."""
        request = pb.ListAgentsRequest(skill=skill, page_size=page_size, page_token=page_token)
        response = await self._unary(self._stub.ListAgents, request, timeout)
        return Page(list(response.agents), response.next_page_token)

    async def deregister_agent(self, name: str, *, timeout: float | None = None) -> None:
        """Remove a registered agent."""
        await self._unary(self._stub.DeregisterAgent, pb.DeregisterAgentRequest(name=name), timeout)


# -- The blocking facade ---------------------------------------------------------------
