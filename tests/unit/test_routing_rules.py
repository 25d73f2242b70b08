"""Routing rules: a name must be on a non-empty allow list and on no deny list; the
name lists of a definition's execution.routing are checked like agent names."""

from __future__ import annotations

from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.server.engine.policies import Rules
from podium.server.engine.validation import validate_definition


def test_allow_and_deny_lists() -> None:
    rules = Rules("org", frozenset({"a", "b"}), frozenset({"b"}), frozenset(), frozenset({"s"}))
    assert rules.refusal("agent", "a") is None
    assert rules.refusal("agent", "b") == "agent 'b' is denied by org (denied_agents)"
    assert rules.refusal("agent", "c") == "agent 'c' is not on the allowed_agents list of org"
    assert rules.refusal("skill", "t") is None  # empty allow list: every skill
    assert rules.refusal("skill", "s") is not None
    assert Rules("org").refusal("agent", "anything") is None


def test_definition_routing_names_are_checked() -> None:
    routing = {"denied_agents": ["ok", "Not OK"], "allowed_skills": [""]}
    bad = json_format.ParseDict(
        {"name": "d", "steps": [{"id": "s", "agent": "a"}], "execution": {"routing": routing}},
        definition_pb2.Definition(),
    )
    found = {v.field: v.reason for v in validate_definition(bad)}
    assert found == {
        "execution.routing.denied_agents[1]": "INVALID_NAME",
        "execution.routing.allowed_skills[0]": "INVALID_NAME",
    }
    many = definition_pb2.Definition()
    many.CopyFrom(bad)
    many.execution.routing.ClearField("allowed_skills")
    many.execution.routing.denied_agents[:] = [f"a{i}" for i in range(1001)]
    found = {v.field: v.reason for v in validate_definition(many)}
    assert found == {"execution.routing.denied_agents": "TOO_MANY"}
