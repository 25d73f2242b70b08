"""DefinitionsRepository against a real database."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from podium.server.storage.database import Database
from podium.server.storage.definitions import (
    DefinitionHead,
    DefinitionRecord,
    DefinitionsRepository,
)
from podium.server.storage.errors import Conflict, DefinitionArchived, StorageError

ORG = "default"


@pytest.fixture
def repo(db: Database) -> DefinitionsRepository:
    return DefinitionsRepository(db)


def _spec(step: str = "a") -> dict[str, Any]:
    return {"steps": [{"id": step, "agent": "echo", "input": {"text": "${run.input.x}"}}]}


async def _create(
    repo: DefinitionsRepository, name: str, *, org: str = ORG, step: str = "a"
) -> DefinitionRecord:
    return await repo.create(
        org, name, description=f"{name} ({step})", spec=_spec(step), content_hash=f"h-{step}"
    )


async def _list(
    repo: DefinitionsRepository,
    *,
    org: str = ORG,
    after: str | None = None,
    limit: int = 100,
    prefix: str | None = None,
    include_archived: bool = False,
) -> list[tuple[str, int]]:
    records = await repo.list_latest(
        org,
        after_name=after,
        limit=limit,
        name_prefix=prefix,
        include_archived=include_archived,
    )
    return [(r.name, r.version) for r in records]


async def test_versions_increment(repo: DefinitionsRepository) -> None:
    first = await _create(repo, "brief", step="a")
    second = await _create(repo, "brief", step="b")
    third = await _create(repo, "brief", step="c")
    assert [first.version, second.version, third.version] == [1, 2, 3]
    assert first == DefinitionRecord(
        organization_id=ORG,
        name="brief",
        version=1,
        description="brief (a)",
        spec=_spec("a"),
        content_hash="h-a",
        archived=False,
        create_time=first.create_time,
    )
    assert isinstance(first.create_time, datetime)
    assert first.create_time.tzinfo is not None


async def test_spec_round_trips_as_json(repo: DefinitionsRepository) -> None:
    spec: dict[str, Any] = {
        "steps": [{"id": "s", "input": {"n": 1.5, "ok": True, "none": None, "list": [1, "x"]}}],
        "unicode": "résumé ✓",
        "nested": {"a": {"b": {"c": []}}},
    }
    created = await repo.create(ORG, "json", description="", spec=spec, content_hash="h")
    assert created.spec == spec
    fetched = await repo.get(ORG, "json")
    assert fetched is not None
    assert fetched.spec == spec


async def test_concurrent_creates_get_distinct_versions(repo: DefinitionsRepository) -> None:
    records = await asyncio.gather(*(_create(repo, "busy", step=f"s{i}") for i in range(10)))
    assert sorted(r.version for r in records) == list(range(1, 11))
    latest = await repo.get(ORG, "busy")
    assert latest is not None
    assert latest.version == 10


async def test_get_latest_specific_and_missing(repo: DefinitionsRepository) -> None:
    await _create(repo, "flow", step="a")
    await _create(repo, "flow", step="b")

    latest = await repo.get(ORG, "flow")
    assert latest is not None
    assert (latest.version, latest.content_hash) == (2, "h-b")

    first = await repo.get(ORG, "flow", 1)
    assert first is not None
    assert (first.version, first.content_hash) == (1, "h-a")

    assert await repo.get(ORG, "flow", 3) is None
    assert await repo.get(ORG, "missing") is None
    assert await repo.get(ORG, "missing", 1) is None


async def test_list_latest_keyset_paging(repo: DefinitionsRepository) -> None:
    for name in ["e", "b", "d", "a", "c"]:
        await _create(repo, name)
    await _create(repo, "b", step="second")
    await _create(repo, "d", step="second")

    assert await _list(repo, limit=2) == [("a", 1), ("b", 2)]
    assert await _list(repo, after="b", limit=2) == [("c", 1), ("d", 2)]
    assert await _list(repo, after="d", limit=2) == [("e", 1)]
    assert await _list(repo, after="e", limit=2) == []

    records = await repo.list_latest(
        ORG, after_name=None, limit=1, name_prefix=None, include_archived=False
    )
    assert records[0].spec == _spec("a")


async def test_list_latest_prefix_is_literal(repo: DefinitionsRepository) -> None:
    for name in ["a_b", "a_bz", "axb", "a%c", "abc", "b_a"]:
        await _create(repo, name)

    assert await _list(repo, prefix="a_") == [("a_b", 1), ("a_bz", 1)]
    assert await _list(repo, prefix="a%") == [("a%c", 1)]
    assert await _list(repo, prefix="ab") == [("abc", 1)]
    assert await _list(repo, prefix="zzz") == []
    assert len(await _list(repo, prefix="")) == 6
    assert await _list(repo, prefix="a_", after="a_b") == [("a_bz", 1)]


async def test_archive(repo: DefinitionsRepository) -> None:
    await _create(repo, "old", step="a")
    await _create(repo, "old", step="b")
    await _create(repo, "kept")

    archived = await repo.archive(ORG, "old")
    assert archived is not None
    assert (archived.name, archived.version, archived.archived) == ("old", 2, True)
    first = await repo.get(ORG, "old", 1)
    assert first is not None
    assert first.archived

    assert await _list(repo) == [("kept", 1)]
    assert await _list(repo, include_archived=True) == [("kept", 1), ("old", 2)]

    with pytest.raises(DefinitionArchived):
        await _create(repo, "old", step="c")
    with pytest.raises(Conflict):  # DefinitionArchived is a Conflict
        await _create(repo, "old", step="c")

    again = await repo.archive(ORG, "old")
    assert again is not None
    assert again.version == 2
    assert await repo.archive(ORG, "missing") is None


async def test_organization_isolation(db: Database, repo: DefinitionsRepository) -> None:
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO organizations (id, name) VALUES ($1, $2)", "acme", "Acme Corp"
        )
    await _create(repo, "shared", step="default-1")
    await _create(repo, "shared", step="default-2")
    acme = await _create(repo, "shared", org="acme", step="acme-1")
    assert (acme.organization_id, acme.version) == ("acme", 1)
    await _create(repo, "acme-only", org="acme")

    latest = await repo.get("acme", "shared")
    assert latest is not None
    assert latest.content_hash == "h-acme-1"
    assert await repo.get(ORG, "acme-only") is None
    assert await _list(repo) == [("shared", 2)]
    assert await _list(repo, org="acme") == [("acme-only", 1), ("shared", 1)]

    await repo.archive("acme", "shared")
    default_latest = await repo.get(ORG, "shared")
    assert default_latest is not None
    assert not default_latest.archived
    assert (await _create(repo, "shared", step="default-3")).version == 3


async def test_unknown_organization_is_a_storage_error(repo: DefinitionsRepository) -> None:
    with pytest.raises(StorageError) as info:
        await _create(repo, "x", org="no-such-org")
    assert info.value.sqlstate == "23503"  # foreign_key_violation


async def test_head_is_the_latest_version_without_its_spec(repo: DefinitionsRepository) -> None:
    assert await repo.head(ORG, "headed") is None
    await _create(repo, "headed", step="a")
    await _create(repo, "headed", step="b")
    assert await repo.head(ORG, "headed") == DefinitionHead(2, "h-b", False)
    await repo.archive(ORG, "headed")
    assert await repo.head(ORG, "headed") == DefinitionHead(2, "h-b", True)
    assert (await repo.get(ORG, "headed", 1)).archived  # type: ignore[union-attr]
