"""Step-output cache keys and policies (``engine/cache.py``): pure functions, no I/O."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.cache import (
    StepCache,
    cache_key,
    cache_scope,
    caching_requested,
    key_document,
    step_policy,
)
from podium.server.storage.runs import ClaimedStep
from podium.server.storage.steps import CachePolicy, StepSpec

SCOPE = {"definition": "flow", "version": 3}
POLICY: dict[str, Any] = {
    "ttl_seconds": 60.0,
    "key_paths": [],
    "scope": SCOPE,
    "target": {"agent": "echo"},
}
INPUT = {"query": "tea", "options": {"lang": "fr", "limit": 10}, "tags": ["a", "b"]}


def key(input: Any = INPUT, *, org: str = "default", step: str = "search", **policy: Any) -> str:
    return cache_key(org, step, _policy({**POLICY, **policy}), input)


def _policy(value: dict[str, Any]) -> CachePolicy:
    policy = CachePolicy.from_json(value)
    assert policy is not None
    return policy


def test_the_key_is_the_sha256_of_the_documented_canonical_form() -> None:
    expected = (
        '{"input":{"options":{"lang":"fr","limit":10},"query":"tea","tags":["a","b"]},'
        '"organization":"default","scope":{"definition":"flow","version":3},'
        '"step":"search","target":{"agent":"echo"},"v":1}'
    )
    assert key() == hashlib.sha256(expected.encode()).hexdigest()


def test_key_order_and_formatting_of_the_input_do_not_change_the_key() -> None:
    reordered = {"tags": ["a", "b"], "options": {"limit": 10, "lang": "fr"}, "query": "tea"}
    # The same JSON written with other whitespace and key order, parsed back.
    reformatted = json.loads(
        '{ "tags" : [ "a","b" ],\n "options":{"limit":10.0,"lang":"fr"},"query":"tea" }'
    )
    floats = {**INPUT, "options": {"lang": "fr", "limit": 10.0}}  # Struct numbers are doubles
    assert key(reordered) == key(reformatted) == key(floats) == key()


@pytest.mark.parametrize(
    "changed",
    [
        {"org": "acme"},
        {"step": "search2"},
        {"scope": {"definition": "flow", "version": 4}},
        {"scope": {"definition": "flow2", "version": 3}},
        {"scope": {"plan_sha256": "0" * 64}},
        {"target": {"agent": "echo2"}},
        {"target": {"skill": "echo"}},
        {"input": {**INPUT, "query": "coffee"}},
        {"input": {**INPUT, "tags": ["b", "a"]}},
        {"input": {**INPUT, "extra": None}},
        {"input": {**INPUT, "options": {"lang": "fr", "limit": 10.5}}},
    ],
    ids=lambda c: next(iter(c)) + "=" + json.dumps(next(iter(c.values())))[:30],
)
def test_any_part_changes_the_key(changed: dict[str, Any]) -> None:
    assert key(**changed) != key()


def test_key_paths_select_the_input_that_forms_the_key() -> None:
    paths = ["query", "options.lang"]
    base = key(key_paths=paths)
    assert key({**INPUT, "tags": []}, key_paths=paths) == base  # not a key path
    assert key({**INPUT, "options": {"lang": "fr"}}, key_paths=paths) == base
    assert key({**INPUT, "query": "coffee"}, key_paths=paths) != base
    document = key_document("default", "search", _policy({**POLICY, "key_paths": paths}), INPUT)
    assert document["input"] == {"query": "tea", "options.lang": "fr"}
    # A missing path is left out, which differs from a null value.
    missing = {k: v for k, v in INPUT.items() if k != "query"}
    assert key(missing, key_paths=paths) != key({**missing, "query": None}, key_paths=paths)


def _plan(value: dict[str, Any]) -> definition_pb2.Definition:
    return json_format.ParseDict(value, definition_pb2.Definition())


def test_effective_policy_step_over_definition_over_server_default() -> None:
    plan = _plan(
        {
            "name": "flow",
            "execution": {"caching": {"enabled": True, "ttl_seconds": 600}},
            "steps": [
                {"id": "a", "agent": "echo"},
                {"id": "b", "skill": "summarize", "caching": {"ttl_seconds": 5}},
                {"id": "c", "agent": "echo", "caching": {"enabled": False}},
                {"id": "d", "orchestration": {"name": "child"}},
                {"id": "e", "agent": "echo", "checkpoint": {"when": "WHEN_AFTER"}},
                {"id": "f", "agent": "echo", "checkpoint": {"when": "WHEN_BEFORE"}},
            ],
        }
    )
    scope = cache_scope(plan, "flow", 1)
    assert scope == {"definition": "flow", "version": 1}
    a, b, c, d, e, f = (step_policy(plan, s, scope, 3600.0) for s in plan.steps)
    assert a is not None and a.to_json() == {
        "ttl_seconds": 600.0,
        "key_paths": [],
        "scope": scope,
        "target": {"agent": "echo"},
    }
    assert b is not None and b.ttl_seconds == 5.0 and b.target == {"skill": "summarize"}
    assert c is None
    assert d is None  # sub-orchestrations are never cached
    assert e is None  # a human approves each output
    assert f is not None

    off = _plan(
        {
            "steps": [
                {"id": "a", "agent": "echo"},
                {"id": "b", "agent": "echo", "caching": {"enabled": True}},
            ]
        }
    )
    assert caching_requested(off)
    policy = step_policy(off, off.steps[1], cache_scope(off, None, None), 3600.0)
    assert policy is not None and policy.ttl_seconds == 3600.0
    assert set(policy.scope) == {"plan_sha256"}
    assert step_policy(off, off.steps[0], dict(policy.scope), 3600.0) is None
    assert not caching_requested(_plan({"steps": [{"id": "a", "agent": "echo"}]}))


def test_inline_plan_scope_is_the_content_hash() -> None:
    one = _plan({"steps": [{"id": "a", "agent": "echo", "input": {"x": 1, "y": 2}}]})
    same = _plan({"steps": [{"id": "a", "agent": "echo", "input": {"y": 2, "x": 1.0}}]})
    other = _plan({"steps": [{"id": "a", "agent": "echo", "input": {"x": 2, "y": 2}}]})
    assert cache_scope(one, None, None) == cache_scope(same, None, None)
    assert cache_scope(one, None, None) != cache_scope(other, None, None)


def _claimed(spec: dict[str, Any]) -> ClaimedStep:
    return ClaimedStep(
        run_id=uuid.uuid4(),
        step_id="s",
        attempt=1,
        organization_id="default",
        agent="echo",
        skill=None,
        endpoint="127.0.0.1:1",
        agent_timeout_seconds=None,
        protocol=None,
        task_id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        spec=StepSpec.from_json(spec),
        timeout_seconds=None,
        max_attempts=1,
        run_input={},
        upstream={},
        labels={},
        definition_name="flow",
        definition_version=1,
        run_created_at=datetime.now(UTC),
    )


def test_only_an_effective_policy_enables_the_cache_at_dispatch() -> None:
    assert StepCache.policy(_claimed({"caching": POLICY})) == _policy(POLICY)
    assert StepCache.policy(_claimed({})) is None
    # A run stored before the cache existed keeps the author's form: not cached.
    assert StepCache.policy(_claimed({"caching": {"enabled": True, "ttl_seconds": "60"}})) is None
