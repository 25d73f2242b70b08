"""The size bounds of responses (``engine/sizes.py``) and of stored step errors."""

from __future__ import annotations

from typing import Any

import pytest

from podium.orchestration.v1 import event_pb2, run_pb2
from podium.server.engine.errors import ResourceExhausted
from podium.server.engine.sizes import (
    fit_event,
    fit_run,
    fitting_count,
    payload_json,
    response_budget,
)
from podium.server.storage.steps import MAX_ERROR_MESSAGE_CHARS, StepError


def _run(sizes: dict[str, int]) -> tuple[run_pb2.Run, dict[tuple[str, str], Any]]:
    """A run whose payloads hold strings of the given sizes ("" = the run's, else a step)."""
    run = run_pb2.Run(id="r")
    stored: dict[tuple[str, str], Any] = {}
    steps: dict[str, run_pb2.StepRun] = {}
    for key, size in sizes.items():
        step_id, field = key.split(".")
        value = {"text": "x" * size}
        stored[(step_id, field)] = value
        if step_id:
            step = steps.get(step_id) or steps.setdefault(step_id, run.steps.add(step_id=step_id))
            getattr(step, field).update(value)
        else:
            getattr(run, field).update(value)
    return run, stored


def test_fit_run_leaves_out_the_largest_payloads_first_until_it_fits() -> None:
    run, stored = _run({".input": 5000, "a.output": 9000, "b.input": 100, ".output": 7000})
    fit_run(run, 6000, lambda step_id, field: stored[(step_id, field)])
    assert run.ByteSize() <= 6000
    assert [(o.field, o.size_bytes) for o in run.steps[0].omitted] == [
        ("output", len(payload_json(stored[("a", "output")])))
    ]
    assert [o.field for o in run.omitted] == ["output"]  # 7000 went, 5000 stayed
    assert run.HasField("input") and run.steps[1].HasField("input")


def test_fit_run_keeps_a_run_that_fits_and_refuses_one_that_cannot() -> None:
    run, stored = _run({".input": 100})
    before = run.SerializeToString()
    fit_run(run, 1000, lambda s, f: stored[(s, f)])
    assert run.SerializeToString() == before
    many = run_pb2.Run(id="r")
    for i in range(100):
        many.steps.add(step_id=f"step-{i}")
    with pytest.raises(ResourceExhausted) as refused:
        fit_run(many, 500, lambda s, f: None)
    assert refused.value.reason == "RESPONSE_TOO_LARGE"


def test_fitting_count_counts_the_repeated_field_framing() -> None:
    messages = [run_pb2.Run(id="x" * 200) for _ in range(5)]
    one = messages[0].ByteSize() + 3  # tag, 2-byte length, body
    assert fitting_count(messages, one * 3) == 3
    assert fitting_count(messages, one * 3 - 1) == 2
    assert fitting_count(messages, 10) == 1  # a page always moves forward
    assert fitting_count([], 10) == 0


def test_fit_event_leaves_out_data_and_says_how_large_it_was() -> None:
    data = {"output": {"text": "é" * 1000}}
    event = event_pb2.RunEvent(run_id="r", sequence=3)
    event.data.update(data)
    fit_event(event, 500, data)
    assert not event.HasField("data")
    assert event.data_omitted.field == "data"
    assert event.data_omitted.size_bytes == len(payload_json(data)) > 2000  # UTF-8 bytes


def test_payload_json_is_compact_sorted_and_stable() -> None:
    assert payload_json({"b": 1, "a": [1.5, None, "é"]}) == '{"a":[1.5,null,"é"],"b":1}'.encode()
    assert payload_json(None) == b"null"


def test_response_budget_keeps_room_for_the_envelope() -> None:
    assert response_budget(4 * 1024 * 1024) == 4 * 1024 * 1024 - 16 * 1024
    assert response_budget(1024) == 512


def test_a_step_error_message_is_stored_cut_to_a_bound() -> None:
    stored = StepError("AGENT_ERROR", "y" * 3_000_000, retryable=True).to_json()
    assert len(stored["message"]) < MAX_ERROR_MESSAGE_CHARS + 50
    assert stored["message"].endswith(f"({3_000_000 - MAX_ERROR_MESSAGE_CHARS} more characters)")
    assert StepError("X", "short").to_json()["message"] == "short"
