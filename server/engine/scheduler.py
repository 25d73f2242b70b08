"""The scheduler and step executor of one replica.

Loops (all in this process, coordinated with other replicas only through Postgres):

- **claim**: leases runnable steps in batches with one call (``podium_claim_steps``),
  while this replica has free slots (``ORCHESTRATION_MAX_CONCURRENCY``, else
  ``PODIUM_WORKER_SLOTS``). It sleeps until woken by ``LISTEN podium_work``, by a
  completion of its own, or by the fallback timer (``PODIUM_POLL_INTERVAL_SECONDS``):
  never a busy poll.
- **execute**: one task per claimed step: resolve ``${...}`` references, consult the
  step-output cache when the step is cached (``engine/cache.py``: a hit completes the
  step without calling the agent), call the agent with the step's deadline, and queue
  the outcome. ``LISTEN podium_cancel`` cancels the
  tasks of a cancelled or failed run (the agent sees its call cancelled).
- **complete**: commits queued outcomes in batches, one transaction per batch
  (``podium_complete_step`` per outcome: fenced by attempt, promotes dependents,
  completes or fails the run, appends events).
- **leases**: renews the leases of this replica's running steps every third of the
  lease, and returns steps whose lease expired (a dead replica's) to the queue.
- **sweep**: completes steps whose child run (sub-orchestration) finished, woken by a
  ``podium_work`` notification with payload ``child`` or the fallback timer, and
  applies the default action of expired approvals.

After an attempt, the step's policy decides (``_outcome``): a retryable failure with
attempts left waits for its retry; after the last attempt ``notify_human`` parks the step
on a failure review, ``allow_skip`` skips it, otherwise the run fails. A step with a
``checkpoint: before`` is parked on an approval with its resolved input instead of being
dispatched (no attempt is used); ``checkpoint: after`` parks it with its output. A step
with an ``orchestration`` target starts a child run and waits for it without a lease.

A step is executed at least once; its completion is recorded exactly once (fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from podium.agent.v1 import agent_pb2
from podium.server.agents.a2a import TaskInputRequired
from podium.server.agents.client import TaskFailed, TaskOutcome, TaskSucceeded
from podium.server.agents.dispatch import AgentDispatcher
from podium.server.engine.cache import CacheHit, StepCache
from podium.server.engine.references import MissingReferenceError, resolve
from podium.server.storage.approvals import ApprovalsRepository
from podium.server.storage.database import DirectConnection, connect_direct
from podium.server.storage.errors import Conflict, StorageError, StorageUnavailable
from podium.server.storage.runs import (
    ClaimedStep,
    FinishedChild,
    NewDeliverable,
    RunsRepository,
    StepOutcome,
)
from podium.server.telemetry.metrics import ORCHESTRATION_AGENT, Metrics
from podium.server.telemetry.tracing import Tracing

log = logging.getLogger("podium.scheduler")

_Key = tuple[uuid.UUID, str, int]


class StartChild(Protocol):
    """Starts the child run of a sub-orchestration step; see ``RunService.start_child``."""

    def __call__(
        self,
        parent: _Key,
        organization_id: str,
        ref: Mapping[str, Any],
        child_input: Any,
        trace_context: Mapping[str, str] | None,
        *,
        bypass_cache: bool = False,
    ) -> Awaitable[tuple[str, uuid.UUID | None, str]]: ...


# Outcome -> (attempt outcome, final step state or None) for the metrics.
_ATTEMPT_METRICS: dict[str, tuple[str, str | None]] = {
    "retry": ("retry", None),
    "checkpoint_after": ("succeeded", None),  # the step waits on its approval
    "review": ("failed", None),  # the step waits on a failure review
    "skipped": ("failed", "skipped"),
    "input_required": ("input_required", None),  # the step waits for an answer
}

DEFAULT_BACKOFF = {"initial_seconds": 1.0, "multiplier": 2.0, "max_seconds": 60.0}
MAX_CHUNK_CHARS_PER_FLUSH = 64 * 1024


class _Stream:
    """What one attempt streamed since the last flush: the latest progress (older ones
    are superseded) and the output chunks, concatenated up to a bound."""

    __slots__ = ("progress", "chunks", "chars", "dropped")

    def __init__(self) -> None:
        self.progress: tuple[str, float] | None = None
        self.chunks: list[str] = []
        self.chars = 0
        self.dropped = 0

    def events(self) -> tuple[list[str], list[dict[str, Any]]]:
        types: list[str] = []
        payloads: list[dict[str, Any]] = []
        if self.chunks or self.dropped:
            payload: dict[str, Any] = {"text": "".join(self.chunks)}
            if self.dropped:
                payload["dropped_chars"] = self.dropped
            types.append("step.output_chunk")
            payloads.append(payload)
        if self.progress is not None:
            types.append("step.progress")
            payloads.append({"message": self.progress[0], "fraction": self.progress[1]})
        return types, payloads


MAX_INLINE_ARTIFACT_BYTES = 1024 * 1024


def backoff_delay(policy: dict[str, Any], attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff before attempt ``attempt + 1`` (seconds)."""
    backoff = {**DEFAULT_BACKOFF, **policy.get("backoff", {})}
    ceiling = min(
        float(backoff["max_seconds"]),
        float(backoff["initial_seconds"]) * float(backoff["multiplier"]) ** (attempt - 1),
    )
    return rng.uniform(0, max(0.0, ceiling))


@dataclass(frozen=True)
class SchedulerConfig:
    """Tunables of one replica's scheduler."""

    slots: int = 100
    batch_size: int = 32
    lease_seconds: float = 30.0
    poll_interval_seconds: float = 1.0
    default_timeout_seconds: float = 300.0
    completion_batch_size: int = 256
    stream_flush_seconds: float = 0.25


class Scheduler:
    """Claims, executes and completes steps for one replica. See the module docstring."""

    def __init__(
        self,
        dsn: str,
        repository: RunsRepository,
        agents: AgentDispatcher,
        config: SchedulerConfig,
        *,
        start_child: StartChild | None = None,
        approvals: ApprovalsRepository | None = None,
        cache: StepCache | None = None,
    ) -> None:
        self._dsn = dsn
        self._repository = repository
        self._agents = agents
        self._start_child = start_child
        self._approvals = approvals
        self.cache = cache
        self.config = config
        self._sweep_wake = asyncio.Event()
        # Child-run outcomes queued but not committed yet (a second sweep skips them).
        self._sweeping: set[_Key] = set()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._completions: asyncio.Queue[StepOutcome] = asyncio.Queue()
        # Keyed by (run, step, attempt): a re-claim of the same step (after a lost
        # lease) is another attempt and must not be confused with the stale one.
        self._inflight: dict[_Key, asyncio.Task[None]] = {}
        self._by_run: dict[uuid.UUID, set[_Key]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._listener: DirectConnection | None = None
        self._stopping = False
        self._next_retry: datetime | None = None
        self._streams: dict[_Key, _Stream] = {}
        self._stream_wake = asyncio.Event()
        self._stream_lock = asyncio.Lock()
        self._rng = random.Random()
        self.claimed_total = 0
        self.completed_total = 0
        # Per attempt whose outcome waits for the completer: (agent label, execution
        # seconds, run start) for the metrics recorded once the commit says what happened.
        self._attempt_info: dict[_Key, tuple[str, float, datetime | None]] = {}
        self.metrics = Metrics()
        self.tracing = Tracing()

    def instrument(self, metrics: Metrics, tracing: Tracing) -> None:
        """Record into ``metrics`` and ``tracing`` (the server's) instead of the private
        defaults; call before :meth:`start`."""
        self.metrics = metrics
        self.tracing = tracing
        metrics.track_active_steps(lambda: len(self._inflight))

    @property
    def active_steps(self) -> int:
        """Steps this replica is executing or completing now."""
        return len(self._inflight)

    async def start(self) -> None:
        """Listen for work and cancellations, then start the loops."""
        await self._listen()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="podium-claim"),
            asyncio.create_task(self._complete_loop(), name="podium-complete"),
            asyncio.create_task(self._lease_loop(), name="podium-leases"),
            asyncio.create_task(self._stream_loop(), name="podium-stream-events"),
            asyncio.create_task(self._sweep_loop(), name="podium-sweep"),
        ]
        self._wake.set()

    async def _listen(self) -> None:
        conn: DirectConnection | None = None
        try:
            conn = await connect_direct(self._dsn)
            await conn.add_listener("podium_work", self._on_work)
            await conn.add_listener("podium_cancel", self._on_cancel)
            if self.cache is not None:
                await conn.add_listener("podium_cache", self.cache.on_notify)
            conn.add_termination_listener(self._on_listener_lost)
        except Exception as exc:
            # The fallback timer keeps the scheduler going; the lease loop retries.
            log.warning("cannot LISTEN for work (polling instead): %s", exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            return
        self._listener = conn

    def _on_work(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == "child":
            self._sweep_wake.set()
        else:
            self._wake.set()

    def _on_cancel(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            run_id = uuid.UUID(str(payload))
        except ValueError:
            return
        for key in list(self._by_run.get(run_id, ())):
            task = self._inflight.get(key)
            if task is not None and not task.done():
                task.cancel()

    def _on_listener_lost(self, _conn: object) -> None:
        if self._stopping:
            return
        log.warning("LISTEN connection lost; polling until it is re-established")
        self._listener = None

    async def stop(self, grace: float = 0.0) -> None:
        """Stop claiming; give running steps ``grace`` seconds, cancel the rest, flush
        completions. Cancelled steps keep their lease until it expires, then another
        replica (or this one after a restart) executes them again."""
        self._stopping = True
        self._wake.set()
        tasks = list(self._inflight.values())
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for task in self._inflight.values():
            task.cancel()
        for task in list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Hand the cancelled attempts over at once instead of after a lease.
        with contextlib.suppress(StorageError):
            released = await self._repository.release_leases(self.owner)
            if released:
                log.info("released %d leases for other replicas", released)
        # Let the completer commit what finished, then stop the loops.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._completions.join(), timeout=5)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    # -- claim -----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = 0.1
        while not self._stopping:
            self._wake.clear()
            free = self.config.slots - len(self._inflight)
            want = min(free, self.config.batch_size)
            claimed: list[ClaimedStep] = []
            if want > 0:
                try:
                    claimed = await self._repository.claim(
                        self.owner, want, self.config.lease_seconds
                    )
                    backoff = 0.1
                except StorageError as exc:
                    log.warning("claim failed: %s", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                for step in claimed:
                    self._spawn(step)
                self.claimed_total += len(claimed)
            if claimed and len(claimed) == want and len(self._inflight) < self.config.slots:
                continue  # there may be more runnable work right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sleep_seconds())

    def _sleep_seconds(self) -> float:
        """Until the fallback timer, or the earliest retry this replica scheduled."""
        wait = self.config.poll_interval_seconds
        if self._next_retry is not None:
            due = (self._next_retry - datetime.now(UTC)).total_seconds()
            if due <= wait:
                self._next_retry = None
                wait = max(0.0, due)
        return wait

    def _spawn(self, step: ClaimedStep) -> None:
        key = (step.run_id, step.step_id, step.attempt)
        task = asyncio.create_task(self._execute(step), name=f"step {step.run_id}/{step.step_id}")
        self._inflight[key] = task
        self._by_run.setdefault(step.run_id, set()).add(key)

    def _forget(self, run_id: uuid.UUID, step_id: str, attempt: int) -> None:
        key = (run_id, step_id, attempt)
        self._inflight.pop(key, None)
        keys = self._by_run.get(run_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_run[run_id]

    # -- execute ---------------------------------------------------------------------

    async def _execute(self, step: ClaimedStep) -> None:
        started = time.perf_counter()
        agent = self.metrics.agent_label(
            step.agent,
            registered=step.endpoint is not None,
            orchestration="orchestration" in step.spec,
        )
        attributes = (
            {
                "podium.run_id": str(step.run_id),
                "podium.step_id": step.step_id,
                "podium.attempt": step.attempt,
                "podium.agent": step.agent or "",
            }
            if self.tracing.enabled
            else {}
        )
        outcome: StepOutcome | None
        try:
            with self.tracing.step_span(step.trace_context, attributes) as span:
                try:
                    outcome = await self._run_step(step)
                except asyncio.CancelledError:
                    self.tracing.step_result(span, "cancelled", None)
                    raise
                except Exception:
                    log.exception(
                        "step executor crashed",
                        extra={"run_id": str(step.run_id), "step_id": step.step_id},
                    )
                    error = ("INTERNAL", "the step executor failed; see the server log", True)
                    outcome = self._outcome(step, error=error)
                if outcome is not None:
                    self.tracing.step_result(
                        span, outcome.outcome, outcome.error["code"] if outcome.error else None
                    )
                else:
                    self.tracing.step_result(span, "waiting_child", None)
        except asyncio.CancelledError:
            # Run cancelled or failed (already recorded), or this replica is stopping
            # (the lease expires and the step runs again elsewhere).
            self.metrics.attempt_finished(agent, "cancelled", None, None)
            self._forget(step.run_id, step.step_id, step.attempt)
            self._wake.set()
            raise
        if outcome is None:  # a child run was started: the step waits for it, unleased
            self._forget(step.run_id, step.step_id, step.attempt)
            self._wake.set()
            return
        self._attempt_info[(step.run_id, step.step_id, step.attempt)] = (
            agent,
            time.perf_counter() - started,
            step.run_started_at,
        )
        self._completions.put_nowait(outcome)

    def _outcome(
        self,
        step: ClaimedStep | FinishedChild,
        *,
        output: Any = None,
        error: tuple[str, str, bool] | None = None,
        resolved: Any = None,
        result: TaskOutcome | None = None,
        park: str | None = None,
    ) -> StepOutcome:
        """The outcome of an attempt, with the step's policy applied: retry, or after
        the last attempt review (notify_human), skip (allow_skip) or fail; a success of
        a step with ``checkpoint: after`` parks it. ``park`` forces an outcome
        (``checkpoint_before``)."""
        outcome = StepOutcome(
            run_id=step.run_id,
            step_id=step.step_id,
            attempt=step.attempt,
            outcome="succeeded",
            organization_id=step.organization_id,
            run_created_at=step.run_created_at,
            conversation_id=step.conversation_id,
            output=output,
            input=resolved,
        )
        if result is not None:
            if result.usage is not None:
                outcome.input_tokens = result.usage.input_tokens
                outcome.output_tokens = result.usage.output_tokens
                outcome.cost_usd = result.usage.cost_usd
            outcome.deliverables = _deliverables(result.artifacts)
        if park is not None:
            outcome.outcome = park
        elif error is not None:
            code, message, retryable = error
            outcome.error = {"code": code, "message": message, "retryable": retryable}
            policy = step.spec.get("on_failure", {})
            if retryable and step.attempt < step.max_attempts:
                delay = backoff_delay(policy, step.attempt, self._rng)
                outcome.outcome = "retry"
                outcome.next_attempt_at = datetime.now(UTC) + timedelta(seconds=delay)
                if self._next_retry is None or outcome.next_attempt_at < self._next_retry:
                    self._next_retry = outcome.next_attempt_at
            elif policy.get("notify_human"):
                outcome.outcome = "review"
            elif policy.get("allow_skip"):
                outcome.outcome = "skipped"
            else:
                outcome.outcome = "failed"
        elif (step.spec.get("checkpoint") or {}).get("when") == "WHEN_AFTER":
            outcome.outcome = "checkpoint_after"
        return outcome

    async def _run_step(self, step: ClaimedStep) -> StepOutcome | None:
        try:
            resolved = resolve(
                step.spec.get("input", {}), run_input=step.run_input, step_outputs=step.upstream
            )
        except MissingReferenceError as exc:
            return self._outcome(step, error=("MISSING_REFERENCE", str(exc), False))
        extra = step.spec.get("approved_input")
        if isinstance(extra, dict) and isinstance(resolved, dict):
            resolved = {**resolved, **extra}  # given with the checkpoint's approval
        checkpoint = step.spec.get("checkpoint") or {}
        if checkpoint.get("when") == "WHEN_BEFORE" and not step.spec.get("checkpoint_passed"):
            # The claim's task id fences the park (its attempt number is given back).
            return self._outcome(
                step,
                output={"task_id": str(step.task_id)},
                resolved=resolved,
                park="checkpoint_before",
            )
        if "orchestration" in step.spec:
            return await self._run_child(step, resolved)
        cache = self.cache
        policy = cache.policy(step) if cache is not None else None
        if _answer(step) is not None:
            policy = None  # answers an agent's question: its output depends on the answer
        if cache is None or policy is None:
            return await self._call_agent(step, resolved)
        found = await cache.acquire(step, policy, resolved)
        if isinstance(found, CacheHit):
            self.metrics.cache_hit()
            return self._outcome(step, output=found.output, resolved=resolved)
        if found is None:  # stale attempt, or the cache is unreachable
            return await self._call_agent(step, resolved)
        self.metrics.cache_miss()
        try:
            outcome = await self._call_agent(step, resolved)
        except BaseException:
            cache.release_later(found)
            raise
        await cache.release(found, outcome.output if outcome.outcome == "succeeded" else None)
        return outcome

    async def _call_agent(self, step: ClaimedStep, resolved: Any) -> StepOutcome:
        if step.endpoint is None:
            if step.skill:
                message = f"no registered agent offers skill {step.skill!r}"
                return self._outcome(
                    step, resolved=resolved, error=("NO_AGENT_FOR_SKILL", message, True)
                )
            message = f"agent {step.agent!r} is not registered"
            return self._outcome(step, resolved=resolved, error=("AGENT_NOT_FOUND", message, True))
        timeout = (
            step.timeout_seconds
            or step.agent_timeout_seconds
            or self.config.default_timeout_seconds
        )
        request = agent_pb2.ExecuteTaskRequest(
            task_id=str(step.task_id),
            run_id=str(step.run_id),
            step_id=step.step_id,
            attempt=step.attempt,
            conversation_id=str(step.conversation_id),
            organization_id=step.organization_id,
            labels=step.labels,
            definition_name=step.definition_name or "",
            definition_version=step.definition_version or 0,
            skill=step.skill or "",
        )
        answer = _answer(step)
        resume_task_id = ""
        if answer is not None:
            # This attempt answers the agent's question (A2A INPUT_REQUIRED).
            resume_task_id = str(answer["task_id"])
            resolved = answer.get("input") or {}
        if isinstance(resolved, dict):
            request.input.update(resolved)
        key = (step.run_id, step.step_id, step.attempt)

        def on_progress(progress: agent_pb2.Progress) -> None:
            self._stream(key).progress = (progress.message, progress.fraction)

        def on_chunk(chunk: agent_pb2.OutputChunk) -> None:
            stream = self._stream(key)
            room = MAX_CHUNK_CHARS_PER_FLUSH - stream.chars
            text = chunk.text
            if len(text) > room:
                stream.dropped += len(text) - max(room, 0)
                text = text[: max(room, 0)]
            if text:
                stream.chunks.append(text)
                stream.chars += len(text)

        with self.tracing.agent_call_span(
            step.agent or "", step.endpoint, request.conversation_id
        ) as (span, metadata):
            result = await self._agents.execute(
                step.endpoint,
                request,
                protocol=step.protocol,
                resume_task_id=resume_task_id,
                timeout=timeout,
                metadata=metadata,
                on_progress=on_progress,
                on_output_chunk=on_chunk,
            )
            if span.is_recording():
                failure = result if isinstance(result, TaskFailed) else None
                self.tracing.agent_call_result(
                    span,
                    error_code=failure.code
                    if failure
                    else ("INPUT_REQUIRED" if isinstance(result, TaskInputRequired) else None),
                    grpc_status=failure.grpc_status if failure else None,
                    input_tokens=result.usage.input_tokens if result.usage else None,
                    output_tokens=result.usage.output_tokens if result.usage else None,
                )
        if isinstance(result, TaskSucceeded):
            return self._outcome(step, output=result.output, resolved=resolved, result=result)
        if isinstance(result, TaskInputRequired):
            # A2A INPUT_REQUIRED: the step parks on an input_required approval; the
            # answer (DecideApproval or ContinueRun) continues the same A2A task.
            question = {
                "question": result.message,
                "data": list(result.data),
                "task_id": result.task_id,
                "context_id": result.context_id,
            }
            outcome = self._outcome(step, output=question, resolved=resolved, park="input_required")
            outcome.error = {
                "code": "INPUT_REQUIRED",
                "message": result.message,
                "retryable": False,
            }
            outcome.deliverables = _deliverables(result.artifacts)
            return outcome
        return self._outcome(
            step,
            resolved=resolved,
            result=result,
            error=(result.code, result.message, result.retryable),
        )

    # -- sub-orchestrations and approvals -----------------------------------------------

    async def _run_child(self, step: ClaimedStep, resolved: Any) -> StepOutcome | None:
        """Start the step's child run; None when it started (the step then waits for
        it, see :meth:`_sweep`) or when this attempt turned out to be stale."""
        if self._start_child is None:
            message = "sub-orchestrations are not enabled on this replica"
            return self._outcome(step, resolved=resolved, error=("UNSUPPORTED", message, False))
        status, child, message = await self._start_child(
            (step.run_id, step.step_id, step.attempt),
            step.organization_id,
            step.spec["orchestration"],
            resolved,
            step.trace_context,
            bypass_cache=bool(step.spec.get("bypass_cache")),
        )
        if status == "created":
            log.info(
                "child run started",
                extra={"run_id": str(step.run_id), "step_id": step.step_id, "child": str(child)},
            )
            return None
        if status == "fenced":
            return None
        code = {"too_deep": "MAX_DEPTH_EXCEEDED", "not_found": "DEFINITION_NOT_FOUND"}.get(
            status, "DEFINITION_ARCHIVED"
        )
        return self._outcome(step, resolved=resolved, error=(code, message, False))

    async def _sweep_loop(self) -> None:
        """Complete steps whose child run finished, and expire approvals."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._sweep_wake.wait(), max(self.config.poll_interval_seconds, 0.2)
                )
            self._sweep_wake.clear()
            if self._stopping:
                continue
            try:
                await self._sweep()
            except StorageError as exc:
                log.warning("sweep failed: %s", exc)

    async def _sweep(self) -> None:
        finished = await self._repository.finished_children()
        for child in finished:
            key = (child.run_id, child.step_id, child.attempt)
            if key in self._sweeping:
                continue
            if child.child_state == "succeeded":
                outcome = self._outcome(child, output=child.child_output, resolved=child.input)
            else:
                cause = child.child_error or {}
                reason = f": {cause.get('message')}" if cause.get("message") else ""
                outcome = self._outcome(
                    child,
                    resolved=child.input,
                    error=(
                        "CHILD_RUN_CANCELLED"
                        if child.child_state == "cancelled"
                        else "CHILD_RUN_FAILED",
                        f"child run {child.child_run_id} {child.child_state}{reason}",
                        False,
                    ),
                )
            self._sweeping.add(key)
            self._completions.put_nowait(outcome)
        if self._approvals is not None:
            expired = await self._approvals.expire()
            if expired:
                log.info("applied the default action of %d expired approvals", expired)

    # -- stream events ---------------------------------------------------------------

    def _stream(self, key: _Key) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
            self._stream_wake.set()
        return stream

    async def _stream_loop(self) -> None:
        """Write buffered progress and output chunks every ``stream_flush_seconds``.

        A chatty agent costs at most one small transaction per attempt per interval:
        progress messages are coalesced (the latest wins) and chunks concatenated (up to
        MAX_CHUNK_CHARS_PER_FLUSH characters per interval; the excess is counted in
        ``dropped_chars``, not stored).
        """
        while True:
            await self._stream_wake.wait()
            await asyncio.sleep(self.config.stream_flush_seconds)
            self._stream_wake.clear()
            async with self._stream_lock:
                await self._flush_streams(None)

    async def _flush_streams(self, keys: set[_Key] | None) -> None:
        """Write the buffered stream events (of ``keys``, or all)."""
        if not self._streams:
            return
        chosen = list(self._streams) if keys is None else [k for k in keys if k in self._streams]
        batches = []
        for key in chosen:
            types, payloads = self._streams.pop(key).events()
            if types:
                batches.append((key[0], key[1], key[2], types, payloads))
        if not batches:
            return
        try:
            await self._repository.append_step_events(batches)
        except StorageError as exc:
            # Progress is best effort: the outcome of the step is what must not be lost.
            log.warning("could not record %d streamed progress events: %s", len(batches), exc)

    # -- complete --------------------------------------------------------------------

    async def _complete_loop(self) -> None:
        while True:
            batch = [await self._completions.get()]
            while len(batch) < self.config.completion_batch_size and not self._completions.empty():
                batch.append(self._completions.get_nowait())
            # Streamed events of these attempts first, so they precede step.completed;
            # under the lock, so a periodic flush in flight cannot land after the
            # completion (it would be fenced, and its events lost).
            async with self._stream_lock:
                await self._flush_streams({(o.run_id, o.step_id, o.attempt) for o in batch})
                states = await self._commit(batch)
            for outcome in batch:
                self._record(outcome, states)
                self._forget(outcome.run_id, outcome.step_id, outcome.attempt)
                self._sweeping.discard((outcome.run_id, outcome.step_id, outcome.attempt))
                self._completions.task_done()
            self.completed_total += len(batch)
            self._wake.set()

    def _record(self, outcome: StepOutcome, states: dict[_Key, str | None]) -> None:
        """Metrics of a committed outcome: the attempt, the step when final, the run when
        this outcome ended it (the commit returned the run's state)."""
        key = (outcome.run_id, outcome.step_id, outcome.attempt)
        # Only a sub-orchestration step completes without an entry (its child run ended).
        agent, seconds, run_started_at = self._attempt_info.pop(
            key, (ORCHESTRATION_AGENT, 0.0, None)
        )
        state = states.get(key)
        if state is None:  # fenced, or not recorded at all
            self.metrics.attempt_finished(agent, "stale", seconds, None)
            return
        if outcome.outcome == "checkpoint_before":
            return  # parked before the agent was called: not an attempt
        attempt, final = _ATTEMPT_METRICS.get(outcome.outcome, (outcome.outcome, outcome.outcome))
        self.metrics.attempt_finished(agent, attempt, seconds, final)
        if state == "succeeded" or state == "failed":
            self.metrics.run_ended(
                state, time.time() - run_started_at.timestamp() if run_started_at else None
            )

    async def _commit(self, batch: list[StepOutcome]) -> dict[_Key, str | None]:
        """Commit ``batch``; transient failures are retried, a bad outcome is isolated.

        Outages and deadlock victims retry the same batch (outcomes are fenced, so a
        retry after an ambiguous commit changes nothing). Any other failure (an output
        PostgreSQL refuses, e.g. a NUL character) would fail every retry, so the batch
        is split: each outcome is committed alone, and one that still fails is recorded
        as a non-retryable INVALID_OUTPUT failure of its step instead.

        Returns the run state after each outcome (see ``RunsRepository.complete``).
        """
        delay = 0.05
        while True:
            try:
                return await self._repository.complete(batch)
            except (StorageUnavailable, Conflict) as exc:
                log.warning("completion batch failed (%d steps), retrying: %s", len(batch), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except StorageError as exc:
                if len(batch) == 1:
                    return await self._reject(batch[0], exc)
                log.warning("completion batch refused, committing one by one: %s", exc)
                states: dict[_Key, str | None] = {}
                for outcome in batch:
                    states.update(await self._commit([outcome]))
                return states

    async def _reject(self, outcome: StepOutcome, exc: StorageError) -> dict[_Key, str | None]:
        log.error(
            "step outcome refused by the database: %s",
            exc,
            extra={
                "run_id": str(outcome.run_id),
                "step_id": outcome.step_id,
                "attempt": outcome.attempt,
            },
        )
        outcome.outcome = "failed"
        outcome.output = None
        outcome.input = None
        outcome.deliverables = ()
        outcome.error = {
            "code": "INVALID_OUTPUT",
            "message": "the agent's result cannot be stored (e.g. a NUL character or a "
            "non-finite number in the output)",
            "retryable": False,
        }
        try:
            return await self._repository.complete([outcome])
        except StorageError as again:
            # Give up on this outcome; the lease expires and the step runs again.
            log.error("cannot record the failure either: %s", again)
            return {}

    # -- leases ----------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew this replica's leases and stop the attempts whose lease is gone.

        An attempt not renewed is no longer ``running`` under this owner: its run was
        cancelled or failed (a missed ``podium_cancel`` notification), or its lease
        expired and the step was re-queued. Its agent call is cancelled so no work is
        wasted; its result would be refused anyway (fencing). Attempts whose outcome is
        already waiting for the completer are left alone.
        """
        watched = [key for key, task in self._inflight.items() if not task.done()]
        renewed = set(await self._repository.renew_leases(self.owner, self.config.lease_seconds))
        for key in watched:
            task = self._inflight.get(key)
            if key not in renewed and task is not None and not task.done():
                log.warning(
                    "lease lost; cancelling the attempt",
                    extra={"run_id": str(key[0]), "step_id": key[1], "attempt": key[2]},
                )
                task.cancel()

    async def _lease_loop(self) -> None:
        interval = max(0.1, self.config.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                if self._inflight:
                    await self._renew()
                requeued = await self._repository.requeue_expired()
                if requeued:
                    log.warning("re-queued %d steps whose lease expired", requeued)
            except StorageError as exc:
                log.warning("lease maintenance failed: %s", exc)
            if self._listener is None and not self._stopping:
                await self._listen()


def _answer(step: ClaimedStep) -> dict[str, Any] | None:
    """The answer this attempt sends to an A2A agent's question (``spec.answer``, written
    by the decision for the attempt after the question), or None."""
    answer = step.spec.get("answer")
    if isinstance(answer, dict) and answer.get("attempt") == step.attempt and answer.get("task_id"):
        return answer
    return None


def _deliverables(artifacts: Sequence[agent_pb2.Artifact]) -> list[NewDeliverable]:
    """Artifacts as deliverables; inline content above the limit is refused (kept as a
    record with its size and no data, so the operator sees what was dropped)."""
    out = []
    for artifact in artifacts:
        data: bytes | None = artifact.data or None
        uri = artifact.uri or None
        size = len(artifact.data)
        if data is not None and size > MAX_INLINE_ARTIFACT_BYTES:
            log.warning("artifact %r too large to store inline (%d bytes)", artifact.name, size)
            data = None
            uri = uri or f"podium:dropped:{artifact.name}"
        if data is None and uri is None:
            data = b""
        out.append(
            NewDeliverable(
                name=artifact.name or "artifact",
                media_type=artifact.media_type or "application/octet-stream",
                size_bytes=size,
                uri=uri,
                data=data,
            )
        )
    return out
