"""The HTTP gateway's translations that need no server: status codes, JSON requests."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.config import ConfigError, Settings
from podium.server.gateway.rpc import HTTP_STATUS, BodyError, parse_request
from podium.server.gateway.upstream import METHODS, SERVICE, loopback_target


def test_every_grpc_code_has_an_http_status() -> None:
    assert {code.value[0] for code in grpc.StatusCode} == set(HTTP_STATUS)
    assert HTTP_STATUS[grpc.StatusCode.INVALID_ARGUMENT.value[0]] == 400
    assert HTTP_STATUS[grpc.StatusCode.UNAUTHENTICATED.value[0]] == 401
    assert HTTP_STATUS[grpc.StatusCode.NOT_FOUND.value[0]] == 404


def test_every_unary_rpc_is_reachable_and_no_streaming_one_is() -> None:
    unary = {m.name for m in SERVICE.methods if not m.server_streaming}
    assert set(METHODS) == unary
    assert "WatchRun" not in METHODS and "StartRun" in METHODS
    assert METHODS["StartRun"].request is pb.StartRunRequest
    assert METHODS["GetRun"].path == "/podium.orchestration.v1.OrchestrationService/GetRun"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"requestId": 5}', "requestId"),
        (b'{"nope": 1}', "nope"),
        (b"[1, 2]", "body"),
        (b'{"requestId": "a"', "body"),
        (b'{"definition": {"steps": []}}', "definition.steps"),
        (b'{"definition": {"name": 1}}', "name"),
        (b'{"labels": {"a": 1}}', "labels"),
        (b'{"plan": {"steps": [{"id": "a"}, {"id": 3}]}}', "steps.id"),
    ],
)
def test_a_body_that_is_not_the_request_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(BodyError) as raised:
        parse_request(body, pb.StartRunRequest(), "application/json")
    status = raised.value.status
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_request = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad_request)
    assert bad_request.field_violations[0].field == field


def test_json_bodies_parse_in_both_field_spellings() -> None:
    for body in (b'{"runId": "r", "afterSequence": "7"}', b'{"run_id": "r", "after_sequence": 7}'):
        message = pb.WatchRunRequest()
        parse_request(body, message, "application/json; charset=utf-8")
        assert (message.run_id, message.after_sequence) == ("r", 7)
    empty = pb.ListRunsRequest()
    parse_request(b"", empty, None)
    assert empty == pb.ListRunsRequest()
    with pytest.raises(BodyError) as raised:
        parse_request(b'{"runId": "r"}', pb.GetRunRequest(), "text/plain")
    assert raised.value.http_status == 415
    with pytest.raises(BodyError):
        parse_request(b'{"runId": "\xff"}', pb.GetRunRequest(), "application/json")
    states = pb.ListRunsRequest()
    with pytest.raises(BodyError) as raised:
        parse_request(b'{"states": ["STATE_RUNNING", "X"]}', states, "application/json")
    bad_request = error_details_pb2.BadRequest()
    assert raised.value.status.details[1].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "states[1]"


def test_loopback_target_replaces_wildcard_hosts() -> None:
    assert loopback_target("0.0.0.0:50051") == "127.0.0.1:50051"
    assert loopback_target("[::]:50051") == "[::1]:50051"
    assert loopback_target("10.1.2.3:7") == "10.1.2.3:7"


def test_the_console_is_off_by_default_and_its_address_is_checked() -> None:
    settings = Settings.from_env({})
    assert settings.console_address is None
    assert settings.console_max_body_bytes == 1024 * 1024
    on = Settings.from_env({"PODIUM_CONSOLE_ADDRESS": "127.0.0.1:8080"})
    assert on.console_address == "127.0.0.1:8080"
    with pytest.raises(ConfigError, match="PODIUM_CONSOLE_ADDRESS"):
        Settings.from_env({"PODIUM_CONSOLE_ADDRESS": "8080"})
    with pytest.raises(ConfigError, match="PODIUM_CONSOLE_MAX_BODY_BYTES"):
        Settings.from_env({"PODIUM_CONSOLE_MAX_BODY_BYTES": "10"})
