"""Podium as an A2A agent: the conversions between runs and tasks (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from a2a.types import a2a_pb2
from a2a.utils import errors as a2a_errors
from google.protobuf import struct_pb2

from podium.orchestration.v1 import event_pb2, run_pb2
from podium.server.api.a2a_tasks import (
    a2a_error,
    event_name,
    event_updates,
    message_input,
    run_to_task,
    task_id_of,
    task_state,
)
from podium.server.engine import errors


def test_every_event_type_has_the_logs_name() -> None:
    names = {event_name(v.number) for v in event_pb2.RunEvent.Type.DESCRIPTOR.values[1:]}
    assert {"run.created", "step.output_chunk", "approval.decided", "run.budget_exceeded"} <= names
    assert all(name.count(".") == 1 for name in names), names


def test_states() -> None:
    assert task_state(run_pb2.Run.STATE_PAUSED) == a2a_pb2.TASK_STATE_INPUT_REQUIRED
    assert task_state(run_pb2.Run.STATE_CANCELLED) == a2a_pb2.TASK_STATE_CANCELED
    every = {task_state(v.number) for v in run_pb2.Run.State.DESCRIPTOR.values[1:]}
    assert a2a_pb2.TASK_STATE_UNSPECIFIED not in every


def _data(value: dict[str, Any] | list[Any]) -> a2a_pb2.Part:
    part = a2a_pb2.Part(media_type="application/json")
    if isinstance(value, dict):
        part.data.struct_value.SetInParent()
        part.data.struct_value.update(value)
    else:
        part.data.list_value.extend(value)
    return part


def test_message_input() -> None:
    def input_of(*parts: a2a_pb2.Part) -> dict[str, object]:
        result = message_input(a2a_pb2.Message(parts=parts))
        return {key: value for key, value in result.items()}

    assert input_of(_data({"a": 1.0})) == {"a": 1.0}
    assert input_of(a2a_pb2.Part(text="one"), a2a_pb2.Part(text="two")) == {"text": "one\ntwo"}
    assert input_of(_data({}), a2a_pb2.Part(text="ignored")) == {}
    assert input_of() == {}
    with pytest.raises(a2a_errors.InvalidParamsError) as caught:
        input_of(_data({}), _data({}))
    assert caught.value.data == {
        "errors": [
            {"field": "message.parts[1]", "message": "at most one data part (the run input)"}
        ]
    }
    with pytest.raises(a2a_errors.InvalidParamsError):
        input_of(_data([1]))
    with pytest.raises(a2a_errors.ContentTypeNotSupportedError):
        input_of(a2a_pb2.Part(url="https://example.com/f"))


def test_task_ids_are_run_ids() -> None:
    assert task_id_of("0F8FAD5B-D9CB-469F-A165-70867728950E") == (
        "0f8fad5b-d9cb-469f-a165-70867728950e"
    )
    with pytest.raises(a2a_errors.TaskNotFoundError):
        task_id_of("run-1")


def test_engine_errors_become_a2a_errors() -> None:
    assert isinstance(
        a2a_error(errors.NotFound("gone", reason="RUN_NOT_FOUND")), a2a_errors.TaskNotFoundError
    )
    invalid = errors.InvalidArgument(
        "bad",
        violations=[
            errors.FieldViolation(field="input.a", description="NUL"),
            errors.FieldViolation(field="request_id", description="too long"),
            errors.FieldViolation(field="inputs", description="kept"),
        ],
    )
    mapped = a2a_error(invalid, {"input": "message.parts", "request_id": "message.message_id"})
    assert isinstance(mapped, a2a_errors.InvalidParamsError)
    assert mapped.data is not None
    assert [e["field"] for e in mapped.data["errors"]] == [
        "message.parts.a",
        "message.message_id",
        "inputs",
    ]
    finished = errors.FailedPrecondition("done")
    assert isinstance(a2a_error(finished), a2a_errors.UnsupportedOperationError)
    assert isinstance(a2a_error(finished, cancel=True), a2a_errors.TaskNotCancelableError)
    busy = errors.Unavailable("database away")
    assert a2a_error(busy) is busy  # stays Podium's status


def test_a_succeeded_run_is_a_completed_task_with_its_output() -> None:
    run = run_pb2.Run(id="r1", state=run_pb2.Run.STATE_SUCCEEDED, labels={"a2a.context_id": "c"})
    run.output.update({"answer": 42})
    task = run_to_task(run)
    assert task.context_id == "c" and task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    assert task.artifacts[0].parts[0].data.struct_value == run.output
    assert not run_to_task(run, include_artifacts=False).artifacts

    event = event_pb2.RunEvent(
        run_id="r1",
        sequence=9,
        type=event_pb2.RunEvent.TYPE_RUN_COMPLETED,
        run_state=run_pb2.Run.STATE_SUCCEEDED,
    )
    artifact, status = event_updates(event, "c", run=run)
    assert isinstance(artifact, a2a_pb2.TaskArtifactUpdateEvent) and artifact.last_chunk
    assert isinstance(status, a2a_pb2.TaskStatusUpdateEvent)
    assert (
        status.metadata["podium"]
        == struct_pb2.Value(
            struct_value=_struct({"event": "run.completed", "sequence": 9})
        ).struct_value
    )


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out
