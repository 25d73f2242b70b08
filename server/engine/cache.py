"""The step-output cache: keys, policies, lookups with single flight, invalidation.

The mechanism (policy, key, lookup, the LRU and the table, single flight through the
database, durability, TTL, invalidation) is described once in docs/ARCHITECTURE.md,
section "Step-output cache"; ``tests/unit/test_cache_key.py`` pins the key. What this
module reads and writes:

- a step's ``spec["caching"]`` (set once by StartRun; absent when the step is never
  cached or the run bypasses the cache): ``{"ttl_seconds", "key_paths", "scope",
  "target"}``; ``ttl_seconds`` 0 means no expiry. Sub-orchestration steps and
  ``checkpoint: after`` steps are never cached (a rejected output must not come back
  from the cache); ``checkpoint: before`` is compatible (the lookup uses the approved
  input);
- ``podium_cache_lookup`` / ``podium_cache_release``
  (``server/storage/functions/70_cache.sql``): ``hit``, ``lead``, ``wait`` or ``stale``,
  then the leader's store, which sends ``NOTIFY podium_cache`` to the waiters.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.canonical import definition_hash, sha256_hex
from podium.server.engine.definitions import DefinitionService
from podium.server.engine.errors import FieldViolation, InvalidArgument
from podium.server.engine.lru import LRUCache
from podium.server.engine.references import lookup, parse_path
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.cache import CacheRepository
from podium.server.storage.errors import StorageError
from podium.server.storage.runs import ClaimedStep
from podium.server.storage.steps import CachePolicy, CheckpointWhen
from podium.server.waits import wait_set

__all__ = [
    "CacheHit",
    "CacheService",
    "Flight",
    "StepCache",
    "cache_key",
    "cache_scope",
    "caching_requested",
    "checkpoint_when",
    "key_document",
    "step_policy",
]

log = logging.getLogger("podium.cache")

KEY_VERSION = 1
"""Version of the key document; bump it (and say so) if the document changes."""

_LRUKey = tuple[str, str, int, str]  # organization, definition name, version, key


# -- policies and keys (pure) ------------------------------------------------------------


def caching_requested(plan: definition_pb2.Definition) -> bool:
    """Whether any step of ``plan`` may be cached (before the run's bypass flag)."""
    if plan.execution.caching.enabled:
        return True
    return any(s.caching.HasField("enabled") and s.caching.enabled for s in plan.steps)


def cache_scope(
    plan: definition_pb2.Definition, definition_name: str | None, definition_version: int | None
) -> dict[str, Any]:
    """The ``scope`` part of the keys of a run: the saved definition's name and version,
    or the content hash of an inline plan."""
    if definition_name is not None and definition_version is not None:
        return {"definition": definition_name, "version": definition_version}
    return {"plan_sha256": definition_hash(plan)}


def step_policy(
    plan: definition_pb2.Definition,
    step: definition_pb2.Step,
    scope: dict[str, Any],
    default_ttl_seconds: float,
) -> CachePolicy | None:
    """The effective caching policy of ``step`` (stored in its spec), or None when the
    step is not cached."""
    own = step.caching
    enabled = own.enabled if own.HasField("enabled") else plan.execution.caching.enabled
    target = step.WhichOneof("target")
    if not enabled or target not in ("agent", "skill"):
        return None
    if checkpoint_when(step) is CheckpointWhen.AFTER:
        return None  # a human decides on each output: a rejected one must not come back
    ttl = own.ttl_seconds or plan.execution.caching.ttl_seconds or default_ttl_seconds
    return CachePolicy(
        ttl_seconds=float(ttl),
        key_paths=tuple(own.key_paths),
        scope=scope,
        target={target: getattr(step, target)},
    )


def checkpoint_when(step: definition_pb2.Step) -> CheckpointWhen:
    """The step's checkpoint position as the spec names it."""
    return CheckpointWhen(definition_pb2.CheckpointPolicy.When.Name(step.checkpoint.when))


def key_document(
    organization_id: str, step_id: str, policy: CachePolicy, resolved: Any
) -> dict[str, Any]:
    """The JSON document whose canonical form's SHA-256 is the key (module docstring)."""
    paths = policy.key_paths
    if paths:
        selected: dict[str, Any] = {}
        for path in paths:
            try:
                selected[path] = lookup(resolved, parse_path(path))
            except LookupError:
                pass  # missing: left out (differs from null)
        key_input: Any = selected
    else:
        key_input = resolved
    return {
        "input": key_input,
        "organization": organization_id,
        "scope": dict(policy.scope),
        "step": step_id,
        "target": dict(policy.target),
        "v": KEY_VERSION,
    }


def cache_key(organization_id: str, step_id: str, policy: CachePolicy, resolved: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`key_document`."""
    return sha256_hex(key_document(organization_id, step_id, policy, resolved))


# -- lookups and single flight (per replica) --------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A step answered from the cache (already marked cached in the database)."""

    output: Any
    source_run_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Flight:
    """This attempt owns the key: call the agent, then :meth:`StepCache.release`."""

    key: str
    step: ClaimedStep
    ttl_seconds: float
    definition_name: str | None = None
    definition_version: int | None = None
    """The definition the entry belongs to (``podium cache invalidate``)."""

    @property
    def lru_key(self) -> _LRUKey:
        return _lru_key(self.step, self.key, self.definition_name, self.definition_version)


@dataclass(frozen=True, slots=True)
class _Entry:
    output: Any
    source_run_id: uuid.UUID | None
    created_at: datetime
    expires_at: datetime | None


def _lru_key(step: ClaimedStep, key: str, name: str | None, version: int | None) -> _LRUKey:
    return (step.organization_id, name or "", version or 0, key)


def _definition(step: ClaimedStep, policy: CachePolicy) -> tuple[str | None, int | None]:
    """The definition a step's entries belong to: the key's scope names it (the items of
    a ``for_each`` step run in a child run without a definition of its own, but cache
    as their step's definition), else the step's run's."""
    scope = policy.scope
    name = scope.get("definition")
    version = scope.get("version")
    if isinstance(name, str) and isinstance(version, int):
        return name, version
    return step.definition_name, step.definition_version


class StepCache:
    """One replica's side of the cache: the LRU and the waiters of other attempts'
    flights. Used by the scheduler's executors (one event loop)."""

    def __init__(
        self, repository: CacheRepository, *, max_entries: int, poll_interval_seconds: float
    ) -> None:
        self._repository = repository
        self.lru: LRUCache[_LRUKey, _Entry] = LRUCache(max_entries)
        self._poll = poll_interval_seconds
        self._waiting: dict[str, list[asyncio.Event]] = {}
        self._releases: set[asyncio.Task[None]] = set()

    @staticmethod
    def policy(step: ClaimedStep) -> CachePolicy | None:
        """The step's effective caching policy (set by StartRun), None when the step is
        not cached. A spec without one (a run created before the cache existed keeps
        the author's ``caching`` there) is not cached."""
        return step.spec.caching

    async def acquire(
        self, step: ClaimedStep, policy: CachePolicy, resolved: Any
    ) -> CacheHit | Flight | None:
        """Look the step up before dispatch, waiting while another attempt computes the
        same key. None: call the agent without caching (this attempt is stale, or the
        database failed: availability wins over deduplication)."""
        key = cache_key(step.organization_id, policy.key_step or step.step_id, policy, resolved)
        definition_name, definition_version = _definition(step, policy)
        lru_key = _lru_key(step, key, definition_name, definition_version)
        while True:
            entry = self.lru.get(lru_key)
            if entry is not None and entry.expires_at is not None:
                if entry.expires_at <= datetime.now(UTC):
                    self.lru.discard(lru_key)
                    entry = None
            event = asyncio.Event()
            # Registered before the lookup: a release in between still wakes us.
            self._waiting.setdefault(key, []).append(event)
            try:
                try:
                    found = await self._repository.lookup(
                        step.organization_id,
                        key,
                        step.run_id,
                        step.step_id,
                        step.attempt,
                        entry.created_at if entry is not None else None,
                    )
                except StorageError as exc:
                    log.warning(
                        "cache lookup failed; calling the agent: %s",
                        exc,
                        extra={"run_id": str(step.run_id), "step_id": step.step_id},
                    )
                    return None
                if found.status == "hit":
                    if found.output is None and entry is not None:
                        output = entry.output
                    else:
                        output = found.output
                        assert found.created_at is not None
                        self.lru.put(
                            lru_key,
                            _Entry(output, found.source_run_id, found.created_at, found.expires_at),
                        )
                    return CacheHit(output, found.source_run_id)
                if entry is not None:
                    self.lru.discard(lru_key)  # gone or replaced in the table
                if found.status == "lead":
                    return Flight(
                        key,
                        step,
                        float(policy.ttl_seconds or 0),
                        definition_name,
                        definition_version,
                    )
                if found.status == "stale":
                    return None
                # "wait": another attempt computes it.
                await wait_set(event, self._poll)
            finally:
                waiters = self._waiting.get(key)
                if waiters is not None:
                    if event in waiters:
                        waiters.remove(event)
                    if not waiters:
                        del self._waiting[key]

    async def release(self, flight: Flight, output: Any) -> None:
        """Store ``output`` (None: the attempt did not succeed, nothing is stored), leave
        the flight and wake the waiters. A store the database refuses (e.g. a NUL
        character in the output) is not cached; the step's outcome is unaffected (a
        flight left behind dies with its attempt)."""
        step = flight.step
        for value in (output, None) if output is not None else (None,):
            try:
                created = await self._repository.release(
                    step.organization_id,
                    flight.key,
                    step.run_id,
                    step.step_id,
                    step.attempt,
                    output=value,
                    definition_name=flight.definition_name,
                    definition_version=flight.definition_version,
                    ttl_seconds=flight.ttl_seconds or None,
                )
            except Exception as exc:  # the cache never fails a step that succeeded
                log.warning(
                    "cache store failed: %s",
                    exc,
                    extra={"run_id": str(step.run_id), "step_id": step.step_id},
                )
                continue  # retry without the output, to leave the flight
            if created is not None:
                expires = None
                if flight.ttl_seconds:
                    expires = created + timedelta(seconds=flight.ttl_seconds)
                self.lru.put(flight.lru_key, _Entry(value, step.run_id, created, expires))
            break
        self._wake(flight.key)

    def release_later(self, flight: Flight) -> None:
        """Leave the flight in the background (the attempt was cancelled or crashed);
        best effort: a flight whose attempt stops running is taken over anyway."""
        task = asyncio.create_task(self.release(flight, None), name="podium-cache-release")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    def on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        """``LISTEN podium_cache`` handler: a flight ended (payload: its key)."""
        self._wake(str(payload))

    def _wake(self, key: str) -> None:
        for event in self._waiting.pop(key, ()):
            event.set()

    def forget(self, organization_id: str, definition_name: str, definition_version: int) -> int:
        """Drop this replica's LRU copies of a definition's entries (other replicas'
        copies are refused by the version check of their next lookup)."""
        return self.lru.discard_where(
            lambda k: (
                k[0] == organization_id
                and k[1] == definition_name
                and (definition_version == 0 or k[2] == definition_version)
            )
        )


class CacheService:
    """The InvalidateCache use case."""

    def __init__(
        self, repository: CacheRepository, definitions: DefinitionService, cache: StepCache
    ) -> None:
        self._repository = repository
        self._definitions = definitions
        self._cache = cache

    async def invalidate(
        self, organization_id: str, definition_name: str, definition_version: int
    ) -> int:
        """Delete the cached outputs of a definition (every version when 0); returns how
        many entries were deleted. NOT_FOUND for an unknown definition or version."""
        violations = []
        if not definition_name:
            violations.append(FieldViolation(field="definition_name", description="required"))
        if definition_version < 0:
            violations.append(
                FieldViolation(
                    field="definition_version", description="must be >= 0 (0: every version)"
                )
            )
        if violations:
            raise InvalidArgument("InvalidateCache request is invalid", violations=violations)
        # NOT_FOUND (DEFINITION_NOT_FOUND) when neither the name nor the version exists.
        await self._definitions.get(organization_id, definition_name, definition_version)
        async with storage_errors():
            deleted = await self._repository.invalidate(
                organization_id, definition_name, definition_version
            )
        self._cache.forget(organization_id, definition_name, definition_version)
        log.info(
            "step cache invalidated",
            extra={
                "definition_name": definition_name,
                "definition_version": definition_version,
                "deleted": deleted,
            },
        )
        return deleted
