"""Bad input answered cleanly, end to end through a real server: NUL characters and
over-long strings in any field (INVALID_ARGUMENT naming the field, never INTERNAL),
errors that echo huge values or list many violations (bounded trailers, so a default
client still reads INVALID_ARGUMENT), and undecodable request bytes (INVALID_ARGUMENT,
no traceback in the log)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from podium.orchestration.v1 import agent_pb2, definition_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.engine.requests import MAX_STRING_LENGTH, MAX_TEXT_LENGTH
from tests.integration.rpc import error_details, rpc_error, violations
from tests.integration.runs_helpers import plan, struct

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

NUL = "a\x00b"


def _definition(**fields: Any) -> definition_pb2.Definition:
    steps = fields.pop("steps", [{"id": "s", "agent": "echo"}])
    return plan(steps, name=fields.pop("name", "nul-test"), **fields)


# (test id, RPC, request, the field the violation must name)
Case = tuple[str, str, Callable[[], Any], str]

CASES: list[Case] = [
    (
        "start-labels-value",
        "StartRun",
        lambda: pb.StartRunRequest(plan=_definition(name=""), labels={"team": NUL}),
        "labels.team",
    ),
    (
        "start-labels-key",
        "StartRun",
        lambda: pb.StartRunRequest(plan=_definition(name=""), labels={NUL: "x"}),
        "labels",
    ),
    (
        "start-request-id",
        "StartRun",
        lambda: pb.StartRunRequest(plan=_definition(name=""), request_id=NUL),
        "request_id",
    ),
    (
        "start-plan-description",
        "StartRun",
        lambda: pb.StartRunRequest(plan=_definition(name="", description=NUL)),
        "plan.description",
    ),
    (
        "start-plan-step-input",
        "StartRun",
        lambda: pb.StartRunRequest(
            plan=_definition(name="", steps=[{"id": "s", "agent": "echo", "input": {"q": NUL}}])
        ),
        "plan.steps[0].input.q",
    ),
    (
        "start-plan-rollback-hint",
        "StartRun",
        lambda: pb.StartRunRequest(
            plan=_definition(name="", error_handling={"rollback": {"hint": NUL}})
        ),
        "plan.error_handling.rollback.hint",
    ),
    (
        "start-plan-step-rollback-hint",
        "StartRun",
        lambda: pb.StartRunRequest(
            plan=_definition(
                name="", steps=[{"id": "s", "agent": "echo", "rollback": {"hint": NUL}}]
            )
        ),
        "plan.steps[0].rollback.hint",
    ),
    (
        "start-plan-checkpoint-prompt",
        "StartRun",
        lambda: pb.StartRunRequest(
            plan=_definition(
                name="",
                steps=[
                    {
                        "id": "s",
                        "agent": "echo",
                        "checkpoint": {"when": "WHEN_BEFORE", "prompt": NUL},
                    }
                ],
            )
        ),
        "plan.steps[0].checkpoint.prompt",
    ),
    (
        "create-description",
        "CreateDefinition",
        lambda: pb.CreateDefinitionRequest(definition=_definition(description=NUL)),
        "definition.description",
    ),
    (
        "create-labels",
        "CreateDefinition",
        lambda: pb.CreateDefinitionRequest(definition=_definition(labels={"team": NUL})),
        "definition.labels.team",
    ),
    (
        "create-step-input",
        "CreateDefinition",
        lambda: pb.CreateDefinitionRequest(
            definition=_definition(steps=[{"id": "s", "agent": "echo", "input": {"a": [NUL]}}])
        ),
        "definition.steps[0].input.a[0]",
    ),
    (
        "cancel-reason",
        "CancelRun",
        lambda: pb.CancelRunRequest(run_id=str(uuid.uuid4()), reason=NUL),
        "reason",
    ),
    (
        "decide-comment",
        "DecideApproval",
        lambda: pb.DecideApprovalRequest(approval_id=str(uuid.uuid4()), comment=NUL),
        "comment",
    ),
    (
        "decide-actor",
        "DecideApproval",
        lambda: pb.DecideApprovalRequest(approval_id=str(uuid.uuid4()), actor=NUL),
        "actor",
    ),
    (
        "decide-request-id",
        "DecideApproval",
        lambda: pb.DecideApprovalRequest(approval_id=str(uuid.uuid4()), request_id=NUL),
        "request_id",
    ),
    ("archive-name", "ArchiveDefinition", lambda: pb.ArchiveDefinitionRequest(name=NUL), "name"),
    ("deregister-name", "DeregisterAgent", lambda: pb.DeregisterAgentRequest(name=NUL), "name"),
    ("list-agents-skill", "ListAgents", lambda: pb.ListAgentsRequest(skill=NUL), "skill"),
    (
        "register-endpoint",
        "RegisterAgent",
        lambda: pb.RegisterAgentRequest(agent=agent_pb2.Agent(name="a", endpoint=NUL)),
        "agent.endpoint",
    ),
    (
        "fork-step-ids",
        "ForkRun",
        lambda: pb.ForkRunRequest(run_id=str(uuid.uuid4()), step_ids=["ok", NUL]),
        "step_ids[1]",
    ),
    ("list-runs-labels", "ListRuns", lambda: pb.ListRunsRequest(labels={"k": NUL}), "labels.k"),
    (
        "get-run-too-long",
        "GetRun",
        lambda: pb.GetRunRequest(run_id="x" * (MAX_STRING_LENGTH + 1)),
        "run_id",
    ),
    (
        "cancel-reason-too-long",
        "CancelRun",
        lambda: pb.CancelRunRequest(run_id=str(uuid.uuid4()), reason="x" * (MAX_TEXT_LENGTH + 1)),
        "reason",
    ),
]

STREAM_CASES: list[Case] = [
    (
        "watch-runs-definition",
        "WatchRuns",
        lambda: pb.WatchRunsRequest(definition_name=NUL),
        "definition_name",
    ),
    ("watch-runs-labels", "WatchRuns", lambda: pb.WatchRunsRequest(labels={"k": NUL}), "labels.k"),
    ("watch-run-id", "WatchRun", lambda: pb.WatchRunRequest(run_id=NUL), "run_id"),
]


@pytest.mark.parametrize(
    ("rpc", "request_factory", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_text_in_a_field_is_a_field_violation(
    stub: OrchestrationServiceAsyncStub, rpc: str, request_factory: Callable[[], Any], field: str
) -> None:
    error = await rpc_error(getattr(stub, rpc)(request_factory()))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    info, _ = error_details(error)
    assert info.reason == "INVALID_TEXT"
    assert field in violations(error), violations(error)


@pytest.mark.parametrize(
    ("rpc", "request_factory", "field"),
    [c[1:] for c in STREAM_CASES],
    ids=[c[0] for c in STREAM_CASES],
)
async def test_bad_text_in_a_stream_request_is_a_field_violation(
    stub: OrchestrationServiceAsyncStub, rpc: str, request_factory: Callable[[], Any], field: str
) -> None:
    call = getattr(stub, rpc)(request_factory())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert field in violations(caught.value)


async def test_nul_in_run_input_keeps_its_field_path(stub: OrchestrationServiceAsyncStub) -> None:
    error = await rpc_error(
        stub.StartRun(pb.StartRunRequest(plan=_definition(name=""), input=struct({"q": NUL})))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "input.q" in violations(error)


# --------------------------------------------------------------------------- echoes


def _trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    metadata: Any = error.trailing_metadata() or ()
    return sum(len(key) + len(value) for key, value in metadata)


async def test_a_huge_run_id_is_not_echoed_whole(stub: OrchestrationServiceAsyncStub) -> None:
    # Within the string cap but not a UUID: the message cites it, cut.
    error = await rpc_error(stub.GetRun(pb.GetRunRequest(run_id="y" * MAX_STRING_LENGTH)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.details() or "") < 500
    # Far beyond it (a default client would fail on a 20 KB trailer).
    error = await rpc_error(stub.GetRun(pb.GetRunRequest(run_id="z" * 20_000)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _trailer_bytes(error) < 6000


async def test_many_violations_are_capped_with_a_final_count(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    steps = [
        {"id": f"step-{'q' * 50}-{i}", "depends_on": [f"missing-{'m' * 60}-{i}"]}
        for i in range(150)
    ]
    error = await rpc_error(
        stub.CreateDefinition(pb.CreateDefinitionRequest(definition=_definition(steps=steps)))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    _, bad = error_details(error)
    assert 1 < len(bad.field_violations) < 100
    last = bad.field_violations[-1]
    assert last.reason == "MORE_VIOLATIONS" and "more problem(s) not shown" in last.description
    assert _trailer_bytes(error) < 6000


async def test_a_hundred_nul_fields_fit_in_the_trailer(stub: OrchestrationServiceAsyncStub) -> None:
    labels = {f"key-{i}-{'k' * 40}": NUL for i in range(64)}
    steps = [{"id": f"s{i}", "agent": "echo", "description": NUL} for i in range(100)]
    error = await rpc_error(
        stub.CreateDefinition(
            pb.CreateDefinitionRequest(definition=_definition(labels=labels, steps=steps))
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _trailer_bytes(error) < 6000


# --------------------------------------------------------------------------- wire bytes

GET_RUN = "/podium.orchestration.v1.OrchestrationService/GetRun"
WATCH_RUN = "/podium.orchestration.v1.OrchestrationService/WatchRun"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

MALFORMED = {
    "invalid-utf8": b"\x0a\x02\xff\xfe",  # run_id = bytes that are not UTF-8
    "truncated": b"\x0a\x10abc",  # a 16-byte string with 3 bytes
    "bad-wire-type": b"\x0f",  # field 1 with the reserved wire type 7
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_undecodable_bytes_are_invalid_argument_without_traceback(
    channel: grpc.aio.Channel, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for method in (GET_RUN, HEALTH_CHECK):
        call = channel.unary_unary(method, None, None)  # identity: raw bytes go out
        error = await rpc_error(call(body))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, error.details())
        info, _ = error_details(error)
        assert info.reason == "MALFORMED_REQUEST"
    stream = channel.unary_stream(WATCH_RUN, None, None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream(body):
            pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    # A well-formed request on the same channel still works.
    ok = await channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )(health_pb2.HealthCheckRequest())
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
