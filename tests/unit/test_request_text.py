"""The text checks of every request (engine/requests.py), its timestamps, and the bounds
of what an error sends back (api/errors.py), without a server."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.api.errors import to_status
from podium.server.engine.errors import FieldViolation, InvalidArgument, NotFound
from podium.server.engine.requests import (
    MAX_STRING_LENGTH,
    MAX_TEXT_LENGTH,
    request_violations,
    shown,
    timestamp_value,
)


def fields(message: object) -> dict[str, str]:
    return {v.field: v.reason for v in request_violations(message)}  # type: ignore[arg-type]


def test_every_kind_of_string_is_checked() -> None:
    plan = json_format.ParseDict(
        {
            "description": "a\x00",
            "labels": {"team": "x\x00", "k\x00": "v"},
            "steps": [
                {"id": "s", "agent": "a\x00", "depends_on": ["ok", "b\x00"]},
                {"id": "t", "input": {"q": ["fine", {"deep": "n\x00"}]}},
            ],
        },
        definition_pb2.Definition(),
    )
    found = fields(pb.StartRunRequest(plan=plan, request_id="r\x00"))
    assert found == {
        "plan.description": "NUL_CHARACTER",
        "plan.labels": "NUL_CHARACTER",  # a bad key names the map
        "plan.labels.team": "NUL_CHARACTER",
        "plan.steps[0].agent": "NUL_CHARACTER",
        "plan.steps[0].depends_on[1]": "NUL_CHARACTER",
        "plan.steps[1].input.q[1].deep": "",  # json_violations (no reason)
        "request_id": "NUL_CHARACTER",
    }


def test_lengths_depend_on_the_field() -> None:
    assert fields(pb.CancelRunRequest(reason="x" * MAX_TEXT_LENGTH)) == {}
    assert fields(pb.CancelRunRequest(reason="x" * (MAX_TEXT_LENGTH + 1))) == {"reason": "TOO_LONG"}
    assert fields(pb.CancelRunRequest(run_id="x" * (MAX_STRING_LENGTH + 1))) == {
        "run_id": "TOO_LONG"
    }
    assert fields(pb.StartRunRequest(webhook_url="https://e.com/" + "x" * 1500)) == {}


def test_violations_are_bounded_and_paths_printable() -> None:
    many = pb.ForkRunRequest(step_ids=["\x00"] * 500)
    assert len(request_violations(many)) == 100
    key = "k\x01" + "y" * 500
    (violation,) = request_violations(pb.ListRunsRequest(labels={key: "\x00"}))
    assert "\x01" not in violation.field and len(violation.field) < 100
    assert shown("z" * 1000) == "z" * 200 + "…"
    assert shown("a\x00b") == "a\\x00b"


def _wire_size(error: InvalidArgument | NotFound) -> int:
    status = to_status(error)
    return len(base64.b64encode(status.SerializeToString())) + len(status.message.encode()) * 3


def test_errors_stay_small_whatever_they_echo() -> None:
    huge = "é" * 20_000
    error = NotFound(f"run {huge} not found", metadata={f"k{i}": huge for i in range(50)})
    assert _wire_size(error) < 5000
    violations = [
        FieldViolation(field=f"steps[{i}].{huge}", description=huge, reason="R") for i in range(300)
    ]
    status = to_status(InvalidArgument(huge, violations=violations))
    assert len(status.message.encode()) <= 400
    assert _wire_size(InvalidArgument(huge, violations=violations)) < 5000


def test_a_long_violation_list_ends_with_a_count() -> None:
    violations = [
        FieldViolation(field=f"steps[{i}].id", description="step id is required", reason="REQUIRED")
        for i in range(100)
    ]
    status = to_status(InvalidArgument("bad", violations=violations))
    from google.rpc import error_details_pb2

    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    kept = list(bad.field_violations)
    assert 10 < len(kept) < 100
    assert kept[-1].reason == "MORE_VIOLATIONS"
    assert kept[-1].description == f"and {100 - len(kept) + 1} more problem(s) not shown"
    # Few violations are sent as they are.
    status = to_status(InvalidArgument("bad", violations=violations[:3]))
    assert status.details[1].Unpack(bad) and list(bad.field_violations) == violations[:3]


@pytest.mark.parametrize(
    ("seconds", "nanos", "after_epoch"),
    [
        (0, -1, False),  # nanos below 0
        (0, 1_000_000_000, False),  # nanos past 999,999,999
        (10**15, 0, False),  # after the year 9999
        (-(10**12), 0, False),  # before the year 1
        (-1, 0, True),  # before 1970 where that is refused (StartRun.start_time)
    ],
)
def test_an_invalid_timestamp_is_one_field_violation(
    seconds: int, nanos: int, after_epoch: bool
) -> None:
    request = pb.WatchRunsRequest()
    request.start_time.seconds = seconds
    request.start_time.nanos = nanos
    found: list[FieldViolation] = []
    assert timestamp_value(request, "start_time", found, after_epoch=after_epoch) is None
    assert [(v.field, v.description) for v in found] == [("start_time", "not a valid timestamp")]


def test_a_valid_timestamp_is_an_aware_datetime_and_unset_is_none() -> None:
    found: list[FieldViolation] = []
    assert timestamp_value(pb.WatchRunsRequest(), "start_time", found) is None
    request = pb.WatchRunsRequest()
    request.start_time.seconds = -1
    assert timestamp_value(request, "start_time", found) == datetime(
        1969, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    request.start_time.seconds = 1_700_000_000
    request.start_time.nanos = 5000
    assert timestamp_value(request, "start_time", found, after_epoch=True) == datetime(
        2023, 11, 14, 22, 13, 20, 5, tzinfo=UTC
    )
    assert found == []
