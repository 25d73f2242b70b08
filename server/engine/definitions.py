"""Definitions: validate, version, store and look up DAG definitions.

Stored definitions are immutable per (organization, name, version); creating a
definition with an existing name stores its next version. Parsed versions are kept in a
bounded in-process LRU (``ORCHESTRATION_CACHE_MAX_DEFINITIONS``) keyed by
(organization, name, version): a version never changes, so the cache needs no
cross-replica invalidation. Only the ``archived`` flag can change: StartRun reads it
(``get(..., fresh=True)``), so an archive done on another replica is seen at once; for
a cached version it reads only the name's head (latest version, hash, archived flag),
not the stored document.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.canonical import definition_hash
from podium.server.engine.errors import FieldViolation, InvalidArgument, NotFound
from podium.server.engine.lru import LRUCache
from podium.server.engine.paging import bounded_name_page, decode_token, page_size
from podium.server.engine.policies import RoutingPolicies
from podium.server.engine.sizes import DEFAULT_MAX_RESPONSE_BYTES
from podium.server.engine.storage_errors import storage_errors
from podium.server.engine.validation import normalize_definition, validate_definition
from podium.server.storage.definitions import DefinitionRecord, DefinitionsRepository

Definition = definition_pb2.Definition

_CacheKey = tuple[str, str, int]

MAX_RECURSION_VISITS = 100


def definition_to_spec(definition: Definition) -> dict[str, Any]:
    """The JSON form stored in ``orchestration_definitions.spec``."""
    return json_format.MessageToDict(
        normalize_definition(definition), preserving_proto_field_name=True
    )


def record_to_definition(record: DefinitionRecord) -> Definition:
    """The proto of a stored version, with its output-only fields set."""
    definition = json_format.ParseDict(record.spec, Definition(), ignore_unknown_fields=True)
    definition.version = record.version
    definition.organization_id = record.organization_id
    definition.archived = record.archived
    definition.content_hash = record.content_hash
    ts = Timestamp()
    ts.FromDatetime(record.create_time)
    definition.create_time.CopyFrom(ts)
    return definition


class DefinitionService:
    """Use cases behind the Definition RPCs."""

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    """What one page may take (``sizes.response_budget``; the engine sets it)."""

    def __init__(self, repository: DefinitionsRepository, *, cache_size: int = 200) -> None:
        self._repository = repository
        self._cache: LRUCache[_CacheKey, Definition] = LRUCache(cache_size)
        self.policies: RoutingPolicies | None = None
        """The organizations' routing policies (steps naming refused agents or skills are
        violations); set by the engine."""

    @property
    def cache(self) -> LRUCache[_CacheKey, Definition]:
        """The in-process cache of parsed versions (exposed for metrics and tests)."""
        return self._cache

    async def _known_definitions(self, organization_id: str, names: set[str]) -> set[str]:
        known = set()
        for name in names:
            if await self._repository.get(organization_id, name) is not None:
                known.add(name)
        return known

    async def validate(self, organization_id: str, definition: Definition) -> Definition:
        """Check ``definition``; raise InvalidArgument listing every problem.

        Returns the normalized definition (output-only fields cleared).
        """
        targets = {s.orchestration.name for s in definition.steps if s.HasField("orchestration")}
        targets.discard(definition.name)
        targets.discard("")
        async with storage_errors():
            known = await self._known_definitions(organization_id, targets)
        violations = validate_definition(
            definition,
            known_definitions=lambda name, version: name in known or name == definition.name,
        )
        if self.policies is not None:
            violations.extend(await self.policies.plan_violations(organization_id, definition))
        if not violations and known:
            violations = await self._recursion(organization_id, definition)
        # Output-only fields (version, hash, times) make the stored one a little larger.
        if not violations and definition.ByteSize() > self.max_response_bytes:
            violations = [
                _violation(
                    "definition",
                    f"the definition is {definition.ByteSize()} bytes serialized; at most "
                    f"{self.max_response_bytes} (the message limit less 16 KiB), so that "
                    "GetDefinition can return it",
                )
            ]
        if violations:
            raise InvalidArgument(
                f"definition {definition.name!r} is invalid: {len(violations)} problem(s)",
                reason="INVALID_DEFINITION",
                violations=violations,
            )
        return normalize_definition(definition)

    async def _recursion(
        self, organization_id: str, definition: Definition
    ) -> list[FieldViolation]:
        """Sub-orchestration cycles through stored definitions: a step of ``definition``
        that runs a definition which (through its own steps, at the versions they name
        or the latest) runs ``definition`` again. Bounded to MAX_RECURSION_VISITS
        definitions; a cycle formed later by a new version of another definition is
        stopped at run time by ORCHESTRATION_MAX_DEPTH."""
        violations: list[FieldViolation] = []
        for index, step in enumerate(definition.steps):
            if not step.HasField("orchestration"):
                continue
            chain = await self._path_to(
                organization_id,
                step.orchestration.name,
                step.orchestration.version,
                definition.name,
            )
            if chain:
                violations.append(
                    _violation(
                        f"steps[{index}].orchestration.name",
                        f"step '{step.id}' makes a cycle of sub-orchestrations: "
                        + " -> ".join([definition.name, *chain]),
                    )
                )
        return violations

    async def _path_to(
        self, organization_id: str, name: str, version: int, target: str
    ) -> list[str] | None:
        """The chain of definition names from ``name`` to ``target``, or None."""
        queue: list[tuple[str, int, list[str]]] = [(name, version, [name])]
        seen: set[tuple[str, int]] = set()
        while queue and len(seen) < MAX_RECURSION_VISITS:
            current, current_version, chain = queue.pop(0)
            if current == target:
                return chain
            if (current, current_version) in seen:
                continue
            seen.add((current, current_version))
            try:
                stored = await self.get(organization_id, current, current_version)
            except NotFound:
                continue
            for step in stored.steps:
                if step.HasField("orchestration"):
                    ref = step.orchestration
                    queue.append((ref.name, ref.version, [*chain, ref.name]))
        return None

    async def create(
        self, organization_id: str, definition: Definition, *, force_new_version: bool = False
    ) -> tuple[Definition, bool]:
        """Validate and store ``definition`` as the next version of its name; unless
        ``force_new_version``, the latest version is returned instead when it has the same
        content hash (creating is idempotent). Returns the version and whether it is new."""
        normalized = await self.validate(organization_id, definition)
        fields: dict[str, Any] = {
            "description": normalized.description,
            "spec": definition_to_spec(normalized),
            "content_hash": definition_hash(normalized),
        }
        async with storage_errors():
            if force_new_version:
                record = await self._repository.create(organization_id, normalized.name, **fields)
                created = True
            else:
                record, created = await self._repository.create_or_reuse(
                    organization_id, normalized.name, **fields
                )
        stored = record_to_definition(record)
        self._cache.put((organization_id, record.name, record.version), stored)
        return stored, created

    async def get(
        self, organization_id: str, name: str, version: int = 0, *, fresh: bool = False
    ) -> Definition:
        """The given version of ``name``, or its latest when ``version`` is 0.

        ``fresh`` reads the database even for a cached version, so that ``archived`` is
        current (another replica may have archived it); for a cached version only the
        name's head (``_fresh_from_cache``), one round trip either way.
        """
        if version < 0:
            raise InvalidArgument(
                "version must not be negative",
                violations=[_violation("version", "must be >= 0 (0 means the latest)")],
            )
        if not name:
            raise InvalidArgument("name is required", violations=[_violation("name", "required")])
        if version and not fresh:
            cached = self._cache.get((organization_id, name, version))
            if cached is not None:
                return cached
        if fresh and self._cache.max_size:
            found = await self._fresh_from_cache(organization_id, name, version)
            if found is not None:
                return found
        async with storage_errors():
            record = await self._repository.get(organization_id, name, version or None)
        if record is None:
            what = (
                f"version {version} of definition {name!r}" if version else f"definition {name!r}"
            )
            raise NotFound(
                f"{what} not found",
                reason="DEFINITION_NOT_FOUND",
                metadata={"name": name, "version": str(version)},
            )
        key = (organization_id, record.name, record.version)
        cached = self._cache.get(key)
        if cached is not None and cached.content_hash == record.content_hash:
            if cached.archived == record.archived:
                return cached
            definition = Definition()
            definition.CopyFrom(cached)
            definition.archived = record.archived
        else:
            definition = record_to_definition(record)
        self._cache.put(key, definition)
        return definition

    async def _fresh_from_cache(
        self, organization_id: str, name: str, version: int
    ) -> Definition | None:
        """``get(..., fresh=True)`` of a cached version (None: not cached): the name's
        head (latest version, hash, archived flag; not the spec, which may be a
        10,000-step document to transfer and decode) says whether it is archived now.
        A version never changes; the latest one's hash must match the cached one."""
        async with storage_errors():
            head = await self._repository.head(organization_id, name)
        if head is None or version > head.version:
            return None  # the full read answers (NotFound)
        key = (organization_id, name, version or head.version)
        cached = self._cache.get(key)
        if cached is None or (key[2] == head.version and cached.content_hash != head.content_hash):
            return None
        if cached.archived != head.archived:
            definition = Definition()
            definition.CopyFrom(cached)
            definition.archived = head.archived
            self._cache.put(key, definition)
            return definition
        return cached

    async def list(
        self,
        organization_id: str,
        *,
        page_size_requested: int = 0,
        page_token: str = "",
        name_prefix: str = "",
        include_archived: bool = False,
    ) -> tuple[list[Definition], str]:
        """A page of latest versions ordered by name, and the next page token."""
        size = page_size(page_size_requested)
        filters = {"prefix": name_prefix, "archived": include_archived}
        after = decode_token(page_token, filters)
        async with storage_errors():
            records = await self._repository.list_latest(
                organization_id,
                after_name=after,
                limit=size + 1,
                name_prefix=name_prefix or None,
                include_archived=include_archived,
            )
        more = len(records) > size
        records = records[:size]
        return bounded_name_page(
            [record_to_definition(r) for r in records],
            [r.name for r in records],
            more,
            filters,
            self.max_response_bytes,
        )

    async def archive(self, organization_id: str, name: str) -> Definition:
        """Archive every version of ``name``; new runs of it are refused."""
        if not name:
            raise InvalidArgument("name is required", violations=[_violation("name", "required")])
        async with storage_errors():
            record = await self._repository.archive(organization_id, name)
        if record is None:
            raise NotFound(
                f"definition {name!r} not found",
                reason="DEFINITION_NOT_FOUND",
                metadata={"name": name},
            )
        self._cache.discard_where(lambda key: key[0] == organization_id and key[1] == name)
        return record_to_definition(record)


def _violation(field: str, description: str) -> FieldViolation:
    return FieldViolation(field=field, description=description)
