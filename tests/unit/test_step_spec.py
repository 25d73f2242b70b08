"""The step contract (``storage/steps.py``): JSON round trips, no I/O."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.cache import checkpoint_when
from podium.server.engine.mapping import created_to_proto
from podium.server.engine.outcomes import backoff_delay
from podium.server.engine.plan import build_steps, run_template
from podium.server.storage.database import JsonText, json_dumps
from podium.server.storage.run_records import CreatedRun, NewRun, created_run, created_steps
from podium.server.storage.runs import _step_params
from podium.server.storage.steps import (
    Answer,
    Backoff,
    CachePolicy,
    CheckpointWhen,
    FailurePolicy,
    StepError,
    StepSpec,
)

SCOPE = {"definition": "flow", "version": 2}
CACHING: dict[str, Any] = {
    "ttl_seconds": 60.0,
    "key_paths": ["q"],
    "scope": SCOPE,
    "target": {"agent": "echo"},
}

# A spec as StartRun writes it (every field of the definition's step), then as the SQL
# functions amend it after an approval and an answer.
FULL: dict[str, Any] = {
    "id": "a",
    "agent": "echo",
    "depends_on": ["x", "y"],
    "input": {"q": "${run.input.q}", "n": 1.0},
    "checkpoint": {
        "when": "WHEN_BEFORE",
        "prompt": "ok?",
        "approvers": ["ed"],
        "expires_after_seconds": 60.0,
        "on_expiry": "EXPIRY_ACTION_APPROVE",
        "on_reject": "REJECT_ACTION_SKIP",
    },
    "on_failure": {
        "max_attempts": 3,
        "notify_human": True,
        "allow_skip": False,
        "skip_dependents": True,
        "backoff": {"initial_seconds": 0.5, "multiplier": 3.0, "max_seconds": 9.0},
    },
    "timeout_seconds": 2.5,
    "caching": CACHING,
    "description": "d",
    "rollback": {"hint": "undo"},
}
AMENDED = {
    **FULL,
    "checkpoint_passed": True,
    "approved_input": {"q": "tea"},
    "answer": {"attempt": 2, "task_id": "t-1", "input": {"more": 1}},
}


@pytest.mark.parametrize(
    "stored",
    [
        {},
        {"id": "a", "agent": "echo", "on_failure": {}},
        FULL,
        AMENDED,
        {"id": "c", "orchestration": {"name": "child"}, "bypass_cache": True},
        {"id": "c", "orchestration": {"name": "child", "version": 3}, "checkpoint": {}},
        {"id": "s", "skill": "sum", "input": [1, "x"], "rollback": {}},
        # The definition's routing, and the refused agents a claim adds to what it returns.
        {"id": "s", "skill": "sum", "routing": {"denied_agents": ["a"]}, "refused_agents": ["a"]},
        # A run stored before the cache existed keeps the author's caching form.
        {"id": "a", "agent": "echo", "caching": {"enabled": True, "ttl_seconds": 5}},
        # Keys this version does not know are kept as they are.
        {"id": "a", "agent": "echo", "future": {"x": [1, 2]}},
        # Integral numbers stay integers (jsonb keeps 30 and 30.0 apart).
        {"id": "a", "timeout_seconds": 30, "on_failure": {"backoff": {"max_seconds": 9}}},
    ],
    ids=lambda s: ",".join(s) or "empty",
)
def test_from_json_to_json_round_trips(stored: dict[str, Any]) -> None:
    spec = StepSpec.from_json(stored)
    assert spec.to_json() == stored
    assert StepSpec.from_json(spec.to_json()) == spec


def test_parsed_fields() -> None:
    spec = StepSpec.from_json(AMENDED)
    assert spec.checkpoint_when is CheckpointWhen.BEFORE
    assert spec.checkpoint_passed is True
    assert spec.failure == FailurePolicy(
        max_attempts=3,
        notify_human=True,
        allow_skip=False,
        skip_dependents=True,
        backoff=Backoff(0.5, 3.0, 9.0),
    )
    assert spec.caching == CachePolicy(60.0, ("q",), SCOPE, {"agent": "echo"})
    assert spec.answer_for(2) == Answer(2, "t-1", {"more": 1})
    assert spec.answer_for(1) is None  # an answer is for the attempt after the question
    assert spec.depends_on == ("x", "y")
    legacy = StepSpec.from_json({"caching": {"enabled": True}})
    assert legacy.caching is None  # not an effective policy: not cached


def test_an_absent_failure_policy_allows_one_attempt() -> None:
    spec = StepSpec.from_json({"id": "a"})
    assert spec.on_failure is None
    assert spec.failure == FailurePolicy()
    assert spec.failure.attempts == 1
    assert FailurePolicy(max_attempts=0).attempts == 1
    assert FailurePolicy(max_attempts=4).attempts == 4


def test_for_step_replaces_the_authors_policies() -> None:
    step = {"id": "a", "agent": "echo", "caching": {"enabled": True}, "on_failure": {"x": 1}}
    policy = CachePolicy.from_json(CACHING)
    cached = StepSpec.for_step(
        step, on_failure=FailurePolicy(max_attempts=2), caching=policy, bypass_cache=False
    )
    assert cached.to_json() == {
        "id": "a",
        "agent": "echo",
        "caching": CACHING,
        "on_failure": {"max_attempts": 2},
    }
    plain = StepSpec.for_step(step, on_failure=FailurePolicy(), caching=None, bypass_cache=True)
    assert plain.to_json() == {"id": "a", "agent": "echo", "on_failure": {}, "bypass_cache": True}


def test_step_error_round_trips() -> None:
    error = StepError("BOOM", "it broke", True)
    assert error.to_json() == {"code": "BOOM", "message": "it broke", "retryable": True}
    assert StepError.from_json(error.to_json()) == error
    assert StepError.from_json({"code": "X", "message": "m"}) == StepError("X", "m", False)


def test_checkpoint_when_names_the_proto_enum() -> None:
    names = set(definition_pb2.CheckpointPolicy.When.keys())
    assert {w.value for w in CheckpointWhen} == names
    for name in names:
        step = definition_pb2.Step()
        step.checkpoint.when = definition_pb2.CheckpointPolicy.When.Value(name)
        assert checkpoint_when(step) is CheckpointWhen(name)


def test_build_steps_writes_the_protobuf_json_of_the_step() -> None:
    plan = json_format.ParseDict(
        {
            "error_handling": {"on_step_failure": {"max_attempts": 3}},
            "steps": [
                {"id": "a", "agent": "echo", "checkpoint": {"when": "WHEN_AFTER"}},
                {"id": "b", "orchestration": {"name": "child"}, "depends_on": ["a"]},
            ],
        },
        definition_pb2.Definition(),
    )
    a, b = build_steps(plan, bypass_cache=True)
    assert a.spec.to_json() == {
        "id": "a",
        "agent": "echo",
        "checkpoint": {"when": "WHEN_AFTER"},
        "on_failure": {"max_attempts": 3},
    }
    assert a.max_attempts == 3
    assert b.spec.to_json() == {
        "id": "b",
        "orchestration": {"name": "child"},
        "depends_on": ["a"],
        "on_failure": {"max_attempts": 3},
        "bypass_cache": True,
    }


def test_backoff_takes_the_defaults_for_absent_fields() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b  # the ceiling

    rng = Top()
    assert backoff_delay(FailurePolicy(), 1, rng) == 1.0
    assert backoff_delay(FailurePolicy(), 3, rng) == 4.0
    assert backoff_delay(FailurePolicy(), 20, rng) == 60.0
    own = FailurePolicy(backoff=Backoff(initial_seconds=0.5, multiplier=3.0))
    assert backoff_delay(own, 3, rng) == 4.5
    assert backoff_delay(FailurePolicy(backoff=Backoff(max_seconds=2.0)), 5, rng) == 2.0


def test_run_template_encodes_what_build_steps_would_send() -> None:
    plan = json_format.ParseDict(
        {
            "name": "flow",
            "steps": [
                {"id": "a", "agent": "echo", "input": {"q": "${run.input.q}"}},
                {"id": "b", "agent": "echo", "depends_on": ["a"], "when": "steps.a.output.ok"},
            ],
        },
        definition_pb2.Definition(),
    )
    template = run_template(plan, caching_scope=None, cache_ttl_seconds=0.0, bypass_cache=False)
    assert template.plan == json_format.MessageToDict(plan, preserving_proto_field_name=True)
    assert template.steps == build_steps(plan)
    assert template.encoded is not None
    assert json.loads(template.encoded.plan_json) == template.plan
    assert template.encoded.steps_json == json_dumps(_step_params(template.steps))
    assert list(template.encoded.specs) == [s.spec.to_json() for s in template.steps]
    # Pre-encoded JSON goes to the jsonb codec as is.
    assert json_dumps(JsonText(template.encoded.plan_json)) == template.encoded.plan_json


def test_run_template_of_a_plan_reading_run_metadata_leaves_the_steps_per_run() -> None:
    plan = json_format.ParseDict(
        {"steps": [{"id": "a", "agent": "echo", "when": "run.metadata.tier == 'gold'"}]},
        definition_pb2.Definition(),
    )
    template = run_template(plan, caching_scope=None, cache_ttl_seconds=0.0, bypass_cache=False)
    assert template.steps is None and template.encoded is None
    (step,) = build_steps(plan, run_metadata={"tier": "gold"})
    assert step.spec.run_metadata == {"tier": "gold"}


def test_the_response_skeleton_gives_the_same_start_run_response() -> None:
    plan = json_format.ParseDict(
        {
            "name": "flow",
            "steps": [
                {"id": "a", "agent": "echo"},
                {"id": "b", "skill": "summarize", "depends_on": ["a"]},
                {"id": "c", "plan": {"agent": "planner"}, "depends_on": ["a", "b"]},
            ],
        },
        definition_pb2.Definition(),
    )
    template = run_template(plan, caching_scope=None, cache_ttl_seconds=0.0, bypass_cache=False)
    assert template.steps is not None and template.response is not None
    new = NewRun(
        organization_id="org",
        definition_name="flow",
        definition_version=1,
        plan=template.plan,
        input={"q": 1},
        metadata={"m": "x"},
        labels={"l": "v"},
        request_id=None,
        max_parallel=2,
        bypass_cache=False,
        webhook_url=None,
        steps=template.steps,
        encoded=template.encoded,
    )
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "run_id": uuid.uuid4(),
        "state": "running",
        "run_attempt": 1,
        "last_event_sequence": 3,
        "created_at": now,
        "started_at": now,
        "step_ids": ["c", "a", "b"],
        "step_states": ["pending", "queued", "succeeded"],
        "step_attempts": [0, 1, 0],
        "conversation_ids": [None, uuid.uuid4(), uuid.uuid4()],
        "queued_at": [None, now, now],
        "step_started_at": [None, None, now],
        "step_ended_at": [None, None, now],
        "step_inputs": [None, None, {"x": 1}],
        "step_outputs": [None, None, {"y": [1, 2]}],
    }
    record: Any = row  # what created_run / created_steps read of an asyncpg Record
    stored = CreatedRun(created_run(new, record), created_steps(new, record), [], [], True)
    fast = created_to_proto(stored, plan, template.response)
    slow = created_to_proto(stored, plan)
    assert fast == slow
    assert fast.SerializeToString(deterministic=True) == slow.SerializeToString(deterministic=True)
    assert [s.step_id for s in fast.steps] == ["a", "b", "c"]
