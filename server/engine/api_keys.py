"""API keys: making them, hashing them, and checking them quickly.

A key is ``pdm_<prefix>_<secret>``: ``prefix`` is 12 random hex characters, stored in
clear to show in listings and to revoke by; ``secret`` is 32 random bytes (256 bits,
URL-safe base64). Only the SHA-256 of the whole key is stored. A slow KDF (bcrypt,
scrypt, Argon2) protects *low-entropy* secrets such as passwords against guessing
after a database leak; a 256-bit random secret cannot be guessed whatever the hash
costs, so one fast hash is as safe and keeps each lookup to one indexed query.

:class:`ApiKeyService` answers "whose key is this?" for the API layer's interceptor.
Answers (good, unknown and revoked keys alike) are cached for
``PODIUM_AUTH_CACHE_SECONDS`` (30 s by default) in a bounded LRU, so a revocation takes
effect on every replica within that time. ``last_used_at`` is written at most once a
minute per key and replica, never once per call.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from podium.server.engine.errors import FieldViolation, InvalidArgument, NotFound
from podium.server.engine.lru import LRUCache
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.api_keys import ROLES, ApiKeyRecord, ApiKeysRepository, Role
from podium.server.storage.errors import StorageError

__all__ = [
    "KEY_PATTERN",
    "ApiKeyService",
    "Check",
    "KeyCheck",
    "NewKey",
    "hash_key",
    "make_key",
]

log = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"pdm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
"""The shape of a key; anything else is refused without a database lookup."""

TOUCH_INTERVAL_SECONDS = 60.0
"""``last_used_at`` is written at most this often per key and replica."""

CACHE_ENTRIES = 10_000
"""Most key answers cached per replica (least recently used evicted)."""

MAX_NAME_CHARS = 200
_ORGANIZATION = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def hash_key(key: str) -> str:
    """The stored form of a key: hex SHA-256 of the whole key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A key just made: ``key`` is shown once, only ``record`` is stored."""

    key: str
    record: ApiKeyRecord


def make_key() -> tuple[str, str, str]:
    """A new random key: (key, prefix, hash)."""
    prefix = secrets.token_hex(6)
    key = f"pdm_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_key(key)


class Check(StrEnum):
    """The outcome of checking a presented key (the ErrorInfo reason when refused)."""

    OK = "OK"
    MALFORMED = "API_KEY_MALFORMED"
    UNKNOWN = "API_KEY_INVALID"
    REVOKED = "API_KEY_REVOKED"


@dataclass(frozen=True)
class KeyCheck:
    """A key's check: ``record`` is set when ``check`` is OK."""

    check: Check
    record: ApiKeyRecord | None = None


class ApiKeyService:
    """Creates, lists and revokes keys; checks presented keys with a short cache."""

    def __init__(self, repository: ApiKeysRepository, cache_seconds: float) -> None:
        self._repository = repository
        self._cache_seconds = cache_seconds
        # hash -> (expiry on the monotonic clock, answer)
        self._cache: LRUCache[str, tuple[float, KeyCheck]] = LRUCache(CACHE_ENTRIES)
        self._touched: dict[uuid.UUID, float] = {}

    async def create(self, organization_id: str, role: str, name: str = "") -> NewKey:
        """Make and store a key for ``organization_id`` (created when it does not
        exist). The returned ``key`` is the only copy of the secret."""
        violations = []
        if not _ORGANIZATION.fullmatch(organization_id):
            violations.append(
                FieldViolation(
                    field="organization",
                    description="1-63 of a-z, 0-9, '_' and '-', starting with a-z or 0-9",
                )
            )
        if role not in ROLES:
            violations.append(
                FieldViolation(field="role", description=f"must be one of {', '.join(ROLES)}")
            )
        if len(name) > MAX_NAME_CHARS or "\x00" in name:
            violations.append(
                FieldViolation(
                    field="name", description=f"at most {MAX_NAME_CHARS} characters, no NUL"
                )
            )
        if violations:
            raise InvalidArgument("invalid API key request", violations=violations)
        key, prefix, key_hash = make_key()
        record = await self._repository.create(organization_id, name, prefix, key_hash, _role(role))
        return NewKey(key, record)

    async def list(self, organization_id: str | None, limit: int = 1000) -> list[ApiKeyRecord]:
        """Keys (never their secrets), of one organization or of all."""
        return await self._repository.list(organization_id, limit)

    async def revoke(self, key_id_or_prefix: str) -> ApiKeyRecord:
        """Revoke a key by id or prefix; NotFound when there is none."""
        record = await self._repository.revoke(key_id_or_prefix)
        if record is None:
            raise NotFound(f"no API key {key_id_or_prefix!r}", reason="API_KEY_NOT_FOUND")
        return record

    async def check(self, key: str) -> KeyCheck:
        """Whose key ``key`` is (cached; see the module docstring)."""
        if not KEY_PATTERN.fullmatch(key):
            return KeyCheck(Check.MALFORMED)
        key_hash = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > now:
            answer = cached[1]
        else:
            async with storage_errors():
                record = await self._repository.find(key_hash)
            if record is None:
                answer = KeyCheck(Check.UNKNOWN)
            elif record.revoked_at is not None:
                answer = KeyCheck(Check.REVOKED)
            else:
                answer = KeyCheck(Check.OK, record)
            self._cache.put(key_hash, (now + self._cache_seconds, answer))
        if answer.record is not None:
            await self._touch(answer.record.id, now)
        return answer

    async def _touch(self, key_id: uuid.UUID, now: float) -> None:
        last = self._touched.get(key_id)
        if last is not None and now - last < TOUCH_INTERVAL_SECONDS:
            return
        self._touched[key_id] = now
        if len(self._touched) > CACHE_ENTRIES:
            self._touched.clear()
        try:
            await self._repository.touch(key_id, datetime.now(UTC))
        except StorageError as exc:  # a missed last_used_at must not fail the call
            log.warning("last_used_at of an API key not recorded: %s", exc)


def _role(role: str) -> Role:
    for known in ROLES:
        if known == role:
            return known
    raise InvalidArgument(
        f"unknown role {role!r}",
        violations=[FieldViolation(field="role", description="unknown role")],
    )
