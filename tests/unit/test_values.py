"""The integer rule and the one JSON shape (podium.client.values), on every path that
hands out plain data: to_dict, the agent SDK's Task.input, the CLI's -o json."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

from podium.client import to_dict
from podium.client.agent import struct_to_dict, value_to_python
from podium.client.cli_output import as_data
from podium.client.definitions import definition_to_dict
from podium.client.values import MAX_SAFE_INTEGER, message_to_data, plain, plain_number
from podium.orchestration.v1 import approval_pb2, event_pb2, run_pb2


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def test_integral_numbers_within_2_53_are_ints() -> None:
    assert plain_number(1.0) == 1 and isinstance(plain_number(1.0), int)
    assert isinstance(plain_number(-3.0), int)
    assert isinstance(plain_number(float(MAX_SAFE_INTEGER)), int)
    assert isinstance(plain_number(float(MAX_SAFE_INTEGER) * 4), float)  # beyond: unsafe
    assert plain_number(1.5) == 1.5
    assert isinstance(plain_number(1e300), float)
    assert math.isinf(plain_number(math.inf)) and math.isnan(plain_number(math.nan))
    assert plain({"a": [1.0, {"b": 2.0}], "c": 0.25, "d": True}) == {
        "a": [1, {"b": 2}],
        "c": 0.25,
        "d": True,
    }
    assert plain(True) is True  # bools are not numbers here


def test_every_path_gives_the_same_ints() -> None:
    data = {"x": 1, "chunks": 3, "ratio": 0.5, "nested": {"attempt": 3}, "list": [1, 2.5]}
    s = struct(data)
    # The agent SDK (Task.input uses struct_to_dict).
    assert struct_to_dict(s) == data
    assert isinstance(struct_to_dict(s)["x"], int)
    assert value_to_python(struct_pb2.Value(number_value=3.0)) == 3
    # The client's to_dict, of a Struct and of whole messages holding Structs.
    assert to_dict(s) == data
    run = run_pb2.Run(id="r", input=s, output=s, last_event_sequence=8)
    run.steps.add(step_id="a", input=s, output=s, attempt=1)
    got = to_dict(run)
    assert got["input"] == data and got["output"] == data
    assert got["steps"][0]["output"] == data
    assert isinstance(got["input"]["x"], int)
    approval = approval_pb2.Approval(id="a", subject=s)
    assert to_dict(approval)["subject"] == data
    event = event_pb2.RunEvent(run_id="r", sequence=8, data=s)
    assert to_dict(event)["data"] == data
    # The CLI's -o json (the same function).
    assert as_data(run) == got
    assert as_data([event]) == [to_dict(event)]


def test_the_one_shape() -> None:
    event = event_pb2.RunEvent(
        run_id="r",
        sequence=8,
        type=event_pb2.RunEvent.TYPE_STEP_COMPLETED,
        run_state=run_pb2.Run.STATE_RUNNING,
    )
    event.time.FromSeconds(0)
    run = run_pb2.Run(id="r", labels={"team": "ops"})
    run.usage.input_tokens = 12
    data = message_to_data(event)
    # proto field names, int64 as numbers, enums by name, timestamps as RFC 3339
    assert data == {
        "run_id": "r",
        "sequence": 8,
        "type": "TYPE_STEP_COMPLETED",
        "run_state": "STATE_RUNNING",
        "time": "1970-01-01T00:00:00Z",
    }
    assert message_to_data(run) == {
        "id": "r",
        "labels": {"team": "ops"},
        "usage": {"input_tokens": 12},
    }
    # Definitions (definitions get -o json/yaml) share it.
    plan = run_pb2.Run().plan
    plan.name = "d"
    plan.steps.add(id="s", agent="echo", input=struct({"n": 2}))
    assert definition_to_dict(plan) == message_to_data(plan)
    assert definition_to_dict(plan)["steps"][0]["input"] == {"n": 2}
