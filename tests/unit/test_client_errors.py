"""Typed client errors from gRPC statuses, the retry service config, and the blocking
facade's surface (no I/O)."""

from __future__ import annotations

import inspect

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from podium.client import (
    FieldViolation,
    NotFoundError,
    PodiumClient,
    PodiumError,
    RetryPolicy,
    SyncPodiumClient,
    UnimplementedError,
    ValidationError,
)
from podium.client.common import IDEMPOTENT_METHODS
from podium.client.errors import from_status
from podium.orchestration.v1 import orchestration_service_pb2 as pb


def packed(
    *details: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest,
) -> list[any_pb2.Any]:
    out = []
    for detail in details:
        box = any_pb2.Any()
        box.Pack(detail)
        out.append(box)
    return out


def test_invalid_argument_is_a_validation_error_with_every_violation() -> None:
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="the definition is invalid",
        details=packed(
            error_details_pb2.ErrorInfo(
                reason="INVALID_DEFINITION", domain="podium.orchestration.v1", metadata={"n": "2"}
            ),
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="steps[0].depends_on[0]", description="unknown step 'b'"
                    ),
                    error_details_pb2.BadRequest.FieldViolation(
                        field="steps[1].id", description="duplicate step id 'a'"
                    ),
                ]
            ),
        ),
    )
    error = from_status(grpc.StatusCode.INVALID_ARGUMENT, status.message, status)
    assert isinstance(error, ValidationError) and isinstance(error, PodiumError)
    assert error.reason == "INVALID_DEFINITION"
    assert error.domain == "podium.orchestration.v1"
    assert dict(error.metadata) == {"n": "2"}
    assert error.field_violations == (
        FieldViolation("steps[0].depends_on[0]", "unknown step 'b'"),
        FieldViolation("steps[1].id", "duplicate step id 'a'"),
    )
    assert str(error).splitlines() == [
        "INVALID_ARGUMENT: the definition is invalid [INVALID_DEFINITION]",
        "  - steps[0].depends_on[0]: unknown step 'b'",
        "  - steps[1].id: duplicate step id 'a'",
    ]


def test_each_code_has_its_class_and_unknown_codes_the_base() -> None:
    assert isinstance(from_status(grpc.StatusCode.NOT_FOUND, "x", None), NotFoundError)
    assert isinstance(from_status(grpc.StatusCode.UNIMPLEMENTED, "x", None), UnimplementedError)
    plain = from_status(grpc.StatusCode.INTERNAL, "boom", None)
    assert type(plain) is PodiumError and plain.reason == "" and plain.field_violations == ()


def test_the_retry_service_config_covers_idempotent_methods_only() -> None:
    config = RetryPolicy(max_attempts=4).service_config()
    (method_config,) = config["methodConfig"]
    names = {entry["method"] for entry in method_config["name"]}
    assert names == set(IDEMPOTENT_METHODS)
    assert {"StartRun", "GetRun", "WatchRun", "DecideApproval"} <= names
    assert not {"CreateDefinition", "ContinueRun", "ResumeRun"} & names
    rpcs = set(pb.DESCRIPTOR.services_by_name["OrchestrationService"].methods_by_name)
    assert names <= rpcs
    assert method_config["retryPolicy"]["maxAttempts"] == 4
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_the_blocking_facade_has_every_public_method_with_its_docstring() -> None:
    # Methods of the mixins (client_schedules.py) included.
    public = {
        name
        for name, member in inspect.getmembers(PodiumClient)
        if not name.startswith("_") and inspect.isfunction(member) and name != "close"
    }
    facade = {name for name in vars(SyncPodiumClient) if not name.startswith("_")} - {"close"}
    assert public == facade
    for name in public - {"connected"}:
        assert getattr(SyncPodiumClient, name).__doc__ == getattr(PodiumClient, name).__doc__
