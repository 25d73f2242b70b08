"""Podium as an A2A agent: the conversions between runs and A2A tasks (no I/O).

A task is a run (task id = run id); its status comes from the run's state, its updates
from the run's event log, its one artifact (``output``) from the run's output. The
mapping is described in docs/a2a.md, section "Podium as an A2A agent".
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from a2a.types import a2a_pb2
from a2a.utils import errors as a2a_errors
from google.protobuf import json_format, struct_pb2

from podium.orchestration.v1 import approval_pb2, event_pb2, run_pb2
from podium.server.engine import errors

__all__ = [
    "CONTEXT_LABEL",
    "OUTPUT_ARTIFACT_ID",
    "a2a_error",
    "event_updates",
    "is_final",
    "message_input",
    "podium_options",
    "run_to_task",
    "task_id_of",
    "task_state",
]

CONTEXT_LABEL = "a2a.context_id"
"""The run label holding the task's context id (the caller's, else the run id)."""
OUTPUT_ARTIFACT_ID = "output"
"""The artifact of a succeeded task: the run's output as one ``data`` part."""

_STATES: Mapping[int, a2a_pb2.TaskState] = {
    run_pb2.Run.STATE_CREATED: a2a_pb2.TASK_STATE_SUBMITTED,
    run_pb2.Run.STATE_RUNNING: a2a_pb2.TASK_STATE_WORKING,
    run_pb2.Run.STATE_PAUSED: a2a_pb2.TASK_STATE_INPUT_REQUIRED,
    run_pb2.Run.STATE_SUCCEEDED: a2a_pb2.TASK_STATE_COMPLETED,
    run_pb2.Run.STATE_FAILED: a2a_pb2.TASK_STATE_FAILED,
    run_pb2.Run.STATE_CANCELLED: a2a_pb2.TASK_STATE_CANCELED,
}
RUN_STATES: Mapping[int, int] = {task: run for run, task in _STATES.items()}
"""A2A task state -> the run state it lists (ListTasks' ``status`` filter)."""

_FINAL = frozenset(
    {
        a2a_pb2.TASK_STATE_COMPLETED,
        a2a_pb2.TASK_STATE_FAILED,
        a2a_pb2.TASK_STATE_CANCELED,
        a2a_pb2.TASK_STATE_INPUT_REQUIRED,
    }
)


def task_state(run_state: int) -> a2a_pb2.TaskState:
    """The A2A state of a run state (a paused run waits on a human: INPUT_REQUIRED)."""
    return _STATES.get(run_state, a2a_pb2.TASK_STATE_UNSPECIFIED)


def is_final(state: int) -> bool:
    """Whether a stream ends at this state: terminal, or interrupted on a question."""
    return state in _FINAL


def task_id_of(value: str) -> str:
    """``value`` as a run id; TaskNotFoundError when it cannot be one (no run has it)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise a2a_errors.TaskNotFoundError(f"task {value[:100]!r} not found") from None


def _text_message(
    task_id: str, context_id: str, text: str, data: Mapping[str, Any] | None = None
) -> a2a_pb2.Message:
    message = a2a_pb2.Message(
        message_id=str(uuid.uuid4()),
        role=a2a_pb2.ROLE_AGENT,
        task_id=task_id,
        context_id=context_id,
        parts=[a2a_pb2.Part(text=text)],
    )
    if data is not None:
        value = struct_pb2.Value()
        value.struct_value.update(dict(data))
        message.parts.append(a2a_pb2.Part(data=value, media_type="application/json"))
    return message


def _question(
    task_id: str, context_id: str, approvals: Sequence[approval_pb2.Approval]
) -> a2a_pb2.Message:
    """The INPUT_REQUIRED status message: what the pending approvals ask, as text, and
    each approval (id, step, kind, prompt, subject) as data."""
    lines = [a.prompt or f"step {a.step_id} waits for a decision" for a in approvals]
    items = [
        {
            "approval_id": a.id,
            "step_id": a.step_id,
            "kind": approval_pb2.Approval.Kind.Name(a.kind).removeprefix("KIND_").lower(),
            "prompt": a.prompt,
            "subject": json_format.MessageToDict(a.subject),
        }
        for a in approvals
    ]
    return _text_message(
        task_id, context_id, "\n".join(lines) or "the run waits for input", {"approvals": items}
    )


def _output_artifact(run: run_pb2.Run) -> a2a_pb2.Artifact:
    value = struct_pb2.Value()
    value.struct_value.CopyFrom(run.output)
    return a2a_pb2.Artifact(
        artifact_id=OUTPUT_ARTIFACT_ID,
        name="output",
        parts=[a2a_pb2.Part(data=value, media_type="application/json")],
    )


def _status_message(
    run: run_pb2.Run, context_id: str, approvals: Sequence[approval_pb2.Approval]
) -> a2a_pb2.Message | None:
    if run.state == run_pb2.Run.STATE_PAUSED:
        return _question(run.id, context_id, approvals)
    if run.state == run_pb2.Run.STATE_FAILED and run.HasField("error"):
        message = _text_message(run.id, context_id, run.error.message or run.error.code)
        message.metadata.update({"code": run.error.code, "retryable": run.error.retryable})
        return message
    return None


def run_to_task(
    run: run_pb2.Run,
    approvals: Sequence[approval_pb2.Approval] = (),
    *,
    include_artifacts: bool = True,
) -> a2a_pb2.Task:
    """The task of a run: its state (and question or error), its output artifact once
    succeeded, and Podium's view of it under the metadata key ``podium``."""
    context_id = run.labels.get(CONTEXT_LABEL) or run.id
    task = a2a_pb2.Task(
        id=run.id,
        context_id=context_id,
        status=a2a_pb2.TaskStatus(state=task_state(run.state)),
    )
    message = _status_message(run, context_id, approvals)
    if message is not None:
        task.status.message.CopyFrom(message)
    stamp = run.end_time if run.HasField("end_time") else run.create_time
    task.status.timestamp.CopyFrom(stamp)
    if include_artifacts and run.state == run_pb2.Run.STATE_SUCCEEDED:
        task.artifacts.append(_output_artifact(run))
    task.metadata.update(
        {
            "podium": {
                "run_id": run.id,
                "definition_name": run.definition_name,
                "definition_version": run.definition_version,
                "run_state": run_pb2.Run.State.Name(run.state),
                "last_event_sequence": run.last_event_sequence,
            }
        }
    )
    return task


def event_name(event_type: int) -> str:
    """``TYPE_STEP_OUTPUT_CHUNK`` -> ``step.output_chunk``: the event log's names."""
    name: str = event_pb2.RunEvent.Type.Name(event_type).removeprefix("TYPE_").lower()  # type: ignore[arg-type]
    return name.replace("_", ".", 1)


def event_updates(
    event: event_pb2.RunEvent,
    context_id: str,
    *,
    run: run_pb2.Run | None = None,
    approvals: Sequence[approval_pb2.Approval] = (),
) -> list[a2a_pb2.TaskStatusUpdateEvent | a2a_pb2.TaskArtifactUpdateEvent]:
    """The A2A updates of one run event: a status update (state after the event; the
    event's name, sequence, step and attempt under the metadata key ``podium``), with
    the progress or output text as its message, preceded by the output artifact when
    the run completed. ``run`` (the run after the event) is needed for ``run.completed``
    (its output), ``run.failed`` and ``run.paused`` (its question); ``approvals`` are
    the run's pending approvals for the latter."""
    state = task_state(event.run_state)
    status = a2a_pb2.TaskStatus(state=state)
    status.timestamp.CopyFrom(event.time)
    detail = event.WhichOneof("detail")
    if detail == "progress" and event.progress.message:
        status.message.CopyFrom(_text_message(event.run_id, context_id, event.progress.message))
        status.message.metadata.update({"fraction": event.progress.fraction})
    elif detail == "output_chunk":
        status.message.CopyFrom(_text_message(event.run_id, context_id, event.output_chunk.text))
    elif run is not None:
        message = _status_message(run, context_id, approvals)
        if message is not None:
            status.message.CopyFrom(message)
    update = a2a_pb2.TaskStatusUpdateEvent(
        task_id=event.run_id, context_id=context_id, status=status
    )
    podium: dict[str, Any] = {"event": event_name(event.type), "sequence": event.sequence}
    if event.step_id:
        podium["step_id"] = event.step_id
        podium["attempt"] = event.attempt
    update.metadata.update({"podium": podium})
    updates: list[a2a_pb2.TaskStatusUpdateEvent | a2a_pb2.TaskArtifactUpdateEvent] = []
    if state == a2a_pb2.TASK_STATE_COMPLETED and run is not None:
        updates.append(
            a2a_pb2.TaskArtifactUpdateEvent(
                task_id=event.run_id,
                context_id=context_id,
                artifact=_output_artifact(run),
                last_chunk=True,
            )
        )
    updates.append(update)
    return updates


def message_input(message: a2a_pb2.Message) -> struct_pb2.Struct:
    """The run input of a message: its ``data`` part (an object), else its text parts
    joined as ``{"text": ...}``. InvalidParamsError names the part that cannot be one;
    file parts (``url``, ``raw``) are ContentTypeNotSupportedError."""
    data = [i for i, part in enumerate(message.parts) if part.WhichOneof("content") == "data"]
    texts = [part.text for part in message.parts if part.WhichOneof("content") == "text"]
    files = [
        i for i, part in enumerate(message.parts) if part.WhichOneof("content") in ("url", "raw")
    ]
    if files:
        raise a2a_errors.ContentTypeNotSupportedError(
            f"message.parts[{files[0]}]: file parts are not accepted; send the input as a "
            "data part (an object) or text"
        )
    if len(data) > 1:
        raise _invalid(f"message.parts[{data[1]}]", "at most one data part (the run input)")
    result = struct_pb2.Struct()
    if data:
        value = message.parts[data[0]].data
        if value.WhichOneof("kind") != "struct_value":
            raise _invalid(f"message.parts[{data[0]}].data", "the run input must be an object")
        result.CopyFrom(value.struct_value)
    elif texts:
        result.update({"text": "\n".join(texts)})
    return result


def podium_options(metadata: struct_pb2.Struct) -> dict[str, Any]:
    """The metadata key ``podium`` of a message (an object, possibly empty)."""
    if "podium" not in metadata.fields:
        return {}
    value = metadata.fields["podium"]
    if value.WhichOneof("kind") != "struct_value":
        raise _invalid("message.metadata.podium", "must be an object")
    options: dict[str, Any] = json_format.MessageToDict(value.struct_value)
    return options


def _invalid(field: str, description: str) -> a2a_errors.InvalidParamsError:
    return a2a_errors.InvalidParamsError(
        f"{field}: {description}", data={"errors": [{"field": field, "message": description}]}
    )


def invalid_params(field: str, description: str) -> a2a_errors.InvalidParamsError:
    """InvalidParamsError with one field violation (sent as google.rpc BadRequest)."""
    return _invalid(field, description)


def a2a_error(
    exc: errors.EngineError, fields: Mapping[str, str] | None = None, *, cancel: bool = False
) -> Exception:
    """The A2A error of an engine error a caller caused: an unknown run is
    TaskNotFoundError, bad input InvalidParamsError (its violations' fields renamed by
    ``fields``: Podium field prefix -> A2A field), a run in the wrong state
    UnsupportedOperationError (TaskNotCancelableError for ``cancel``). Other errors
    (unavailable, rate limits, permissions) stay engine errors: Podium's status."""
    if isinstance(exc, errors.NotFound) and exc.reason == "RUN_NOT_FOUND":
        return a2a_errors.TaskNotFoundError(exc.message)
    if isinstance(exc, errors.InvalidArgument):
        renames = fields or {}
        found = []
        for violation in exc.violations:
            field = violation.field
            for prefix, target in renames.items():
                if field == prefix or field.startswith((prefix + ".", prefix + "[")):
                    field = target + field[len(prefix) :]
                    break
            found.append({"field": field, "message": violation.description})
        return a2a_errors.InvalidParamsError(exc.message, data={"errors": found} if found else None)
    if isinstance(exc, errors.FailedPrecondition):
        if cancel:
            return a2a_errors.TaskNotCancelableError(exc.message)
        return a2a_errors.UnsupportedOperationError(exc.message)
    error: Exception = exc
    return error
