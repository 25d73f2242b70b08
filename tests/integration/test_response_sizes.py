"""Every response stays under the server's message limit, whatever a legal run holds.

A real server with a small limit (``PODIUM_MAX_MESSAGE_BYTES`` = 256 KiB) runs the echo
agent on a run input just under it, echoed by three steps: the run holds about seven
times the limit. GetRun, ListRuns, ListRunEvents and WatchRun must answer anyway (the
transport used to refuse with RESOURCE_EXHAUSTED), leaving out payloads that do not
fit and naming them, and GetRunPayload must return each left-out payload intact.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import grpc
import pytest
from google.protobuf import json_format

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.orchestration.v1 import run_pb2
from podium.server.storage.queries import QUERIES
from tests.integration.client_helpers import podium
from tests.integration.conftest import StartServer, static_agents
from tests.integration.rpc import error_details, violations
from tests.integration.runs_helpers import (
    Run,
    RunEvent,
    definition,
    plan,
    start_run,
    wait_for_run,
)

if TYPE_CHECKING:
    from podium.orchestration.v1.orchestration_service_pb2_grpc import (
        OrchestrationServiceAsyncStub,
    )

LIMIT = 256 * 1024
TEXT = "x" * 250_000  # a run input just under the limit (StartRun must accept it)
Payload = pb.GetRunPayloadRequest.Payload


@pytest.fixture
async def stub(
    start_server: StartServer, example_agents: ExampleAgents
) -> AsyncIterator[OrchestrationServiceAsyncStub]:
    server = await start_server(
        agents=static_agents(example_agents, "echo"), max_message_bytes=LIMIT
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.OrchestrationServiceStub(channel)


async def _echo_run(stub: OrchestrationServiceAsyncStub) -> str:
    """A finished run whose input is echoed by three steps (a, b, c)."""
    steps = [{"id": s, "agent": "echo", "input": {"text": "${run.input.text}"}} for s in "abc"]
    started = await start_run(stub, inline=plan(steps), input={"text": TEXT})
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED, run.error
    return run.id


async def _read_payload(
    stub: OrchestrationServiceAsyncStub,
    run_id: str,
    step_id: str,
    payload: pb.GetRunPayloadRequest.Payload.ValueType,
) -> tuple[Any, int]:
    """A payload read through GetRunPayload in 100 kB ranges: its JSON value and size."""
    data, offset, total = b"", 0, -1
    while True:
        page = await stub.GetRunPayload(
            pb.GetRunPayloadRequest(
                run_id=run_id, step_id=step_id, payload=payload, offset=offset, max_bytes=100_000
            )
        )
        assert len(page.data) <= 100_000
        total = page.total_size_bytes
        data += page.data
        if not page.next_offset:
            break
        assert page.next_offset == len(data)
        offset = page.next_offset
    assert len(data) == total
    return json.loads(data), total


async def test_get_run_larger_than_the_limit_omits_payloads_readable_by_range(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    run_id = await _echo_run(stub)
    run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
    assert run.ByteSize() < LIMIT
    omitted = {("", o.field): o.size_bytes for o in run.omitted}
    for step in run.steps:
        omitted.update({(step.step_id, o.field): o.size_bytes for o in step.omitted})
        for o in step.omitted:
            assert not step.HasField(o.field)  # type: ignore[arg-type]
    # About 7 payloads of ~250 kB for a 256 KiB response: all but one left out.
    assert len(omitted) >= 6, omitted
    fields = {"input": Payload.PAYLOAD_INPUT, "output": Payload.PAYLOAD_OUTPUT}
    for (step_id, field), size in omitted.items():
        value, total = await _read_payload(stub, run_id, step_id, fields[field])
        assert total == size
        if field == "input":
            assert value == {"text": TEXT}
        elif step_id:
            assert value == {"echo": {"text": TEXT}}
        else:
            assert value == {s: {"echo": {"text": TEXT}} for s in "abc"}
    # What was kept is intact.
    for step in run.steps:
        if step.HasField("output"):
            assert json_format.MessageToDict(step.output) == {"echo": {"text": TEXT}}
    # BASIC leaves every payload out, by design (not listed as omitted).
    basic = (await stub.GetRun(pb.GetRunRequest(run_id=run_id, view=run_pb2.RUN_VIEW_BASIC))).run
    assert not basic.HasField("input") and not basic.HasField("plan")
    assert not any(s.HasField("output") or s.HasField("input") for s in basic.steps)
    assert not basic.omitted and [s.state for s in basic.steps] == [s.state for s in run.steps]


async def test_list_runs_and_events_stay_under_the_limit(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    ids = {await _echo_run(stub) for _ in range(3)}
    # Default view (BASIC): one page, no payloads.
    listed = await stub.ListRuns(pb.ListRunsRequest())
    assert {r.id for r in listed.runs} == ids and not listed.next_page_token
    assert not any(r.HasField("input") or r.HasField("output") for r in listed.runs)
    # FULL: each run is about 2 x the limit: its payloads are left out to fit, and the
    # page stops early by bytes, with a token, never failing.
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListRuns(
            pb.ListRunsRequest(page_size=50, page_token=token, view=run_pb2.RUN_VIEW_FULL)
        )
        assert page.ByteSize() < LIMIT
        seen.extend(r.id for r in page.runs)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids)
    # Events: a step.completed event carrying a 250 kB output leaves out its data.
    run_id = sorted(ids)[0]
    events: list[RunEvent] = []
    after = 0
    while True:
        page_events = await stub.ListRunEvents(
            pb.ListRunEventsRequest(run_id=run_id, after_sequence=after)
        )
        events.extend(page_events.events)
        after = page_events.next_after_sequence
        if not after:
            break
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    watched = [r.event async for r in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=30)]
    assert [e.sequence for e in watched] == [e.sequence for e in events]
    completed = [e for e in watched if e.type == RunEvent.TYPE_STEP_COMPLETED]
    assert len(completed) == 3
    for event in completed:
        assert event.data_omitted.field == "data" and not event.HasField("data")
        assert event.data_omitted.size_bytes > 250_000


async def test_get_run_payload_refuses_bad_requests(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    run_id = await _echo_run(stub)
    cases: list[tuple[Any, grpc.StatusCode, str]] = [
        (pb.GetRunPayloadRequest(run_id=run_id), grpc.StatusCode.INVALID_ARGUMENT, "payload"),
        (
            pb.GetRunPayloadRequest(run_id=run_id, step_id="a", payload=Payload.PAYLOAD_PLAN),
            grpc.StatusCode.INVALID_ARGUMENT,
            "payload",
        ),
        (
            pb.GetRunPayloadRequest(run_id=run_id, payload=Payload.PAYLOAD_INPUT, offset=10**9),
            grpc.StatusCode.INVALID_ARGUMENT,
            "offset",
        ),
        (
            pb.GetRunPayloadRequest(run_id=run_id, payload=Payload.PAYLOAD_INPUT, max_bytes=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_bytes",
        ),
        (
            pb.GetRunPayloadRequest(run_id=run_id, step_id="zz", payload=Payload.PAYLOAD_INPUT),
            grpc.StatusCode.NOT_FOUND,
            "",
        ),
        (
            pb.GetRunRequest(run_id=run_id, view=cast(run_pb2.RunView.ValueType, 7)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "view",
        ),
    ]
    for request, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            if isinstance(request, pb.GetRunRequest):
                await stub.GetRun(request)
            else:
                await stub.GetRunPayload(request)
        assert failure.value.code() == code, request
        if field:
            assert field in violations(failure.value), request
        else:
            assert error_details(failure.value)[0].reason == "STEP_NOT_FOUND"
    # The plan and metadata of the run are readable too.
    value, _ = await _read_payload(stub, run_id, "", Payload.PAYLOAD_PLAN)
    assert [s["id"] for s in value["steps"]] == ["a", "b", "c"]
    value, _ = await _read_payload(stub, run_id, "", Payload.PAYLOAD_METADATA)
    assert value == {}


async def test_cli_prints_a_run_larger_than_the_limit_whole(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """`podium runs get` reads the left-out payloads back; `podium runs payload` prints one."""
    server = await start_server(
        agents=static_agents(example_agents, "echo"), max_message_bytes=LIMIT
    )
    address = ["--address", server.address]
    async with grpc.aio.insecure_channel(server.address) as channel:
        run_id = await _echo_run(pb_grpc.OrchestrationServiceStub(channel))
    shown = await podium("runs", "get", run_id, "-o", "json", *address)
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    assert run["input"] == {"text": TEXT}
    assert run["output"] == {s: {"echo": {"text": TEXT}} for s in "abc"}
    assert [s["output"] for s in run["steps"]] == [{"echo": {"text": TEXT}}] * 3
    assert "omitted" not in run and not any("omitted" in s for s in run["steps"])
    basic = await podium("runs", "get", run_id, "--view", "basic", "-o", "json", *address)
    assert basic.returncode == 0, basic.stderr
    assert "input" not in json.loads(basic.stdout)
    payload = await podium("runs", "payload", run_id, "--step", "b", "-o", "json", *address)
    assert payload.returncode == 0, payload.stderr
    assert json.loads(payload.stdout) == {"echo": {"text": TEXT}}


async def test_a_definition_too_large_to_return_is_refused(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    """CreateDefinition refuses a definition GetDefinition could not return whole."""
    steps = [{"id": s, "agent": "echo", "input": {"text": "y" * 125_000}} for s in "ab"]
    request = pb.CreateDefinitionRequest(definition=definition("huge", steps))
    assert LIMIT - 16 * 1024 < request.ByteSize() < LIMIT
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateDefinition(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GetDefinition" in violations(refused.value)["definition"]
    smaller = definition("fits", [{"id": "a", "agent": "echo", "input": {"t": "y" * 200_000}}])
    await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=smaller))
    got = await stub.GetDefinition(pb.GetDefinitionRequest(name="fits"))
    assert got.definition.steps[0].input == smaller.steps[0].input


async def test_an_approval_larger_than_the_limit_leaves_out_its_subject(
    stub: OrchestrationServiceAsyncStub,
) -> None:
    """A checkpoint after a step with a large output: GetApproval and ListApprovals answer
    without the subject, which stays readable as the step's output."""
    steps: list[dict[str, Any]] = [
        {
            "id": "a",
            "agent": "echo",
            "input": {"text": "${run.input.text}"},
            "checkpoint": {"when": "WHEN_AFTER"},
        }
    ]
    started = await start_run(stub, inline=plan(steps), input={"text": TEXT})
    for _ in range(300):
        listed = await stub.ListApprovals(pb.ListApprovalsRequest(run_id=started.run.id))
        if listed.approvals:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("no approval")
    [approval] = listed.approvals
    got = (await stub.GetApproval(pb.GetApprovalRequest(approval_id=approval.id))).approval
    for shown in (approval, got):
        assert not shown.HasField("subject")
        assert shown.subject_omitted.field == "subject"
        assert shown.subject_omitted.size_bytes > 250_000
    value, _ = await _read_payload(stub, started.run.id, "a", Payload.PAYLOAD_OUTPUT)
    assert value == {"echo": {"text": TEXT}}


async def test_the_basic_list_reads_every_run_column_but_the_payloads(database_url: str) -> None:
    """list_runs_basic names its columns (to skip the payloads' TOAST reads): a column
    it forgets comes back as its default in ListRuns' default view (a concurrency key
    and priority were lost that way), so it must list every other column."""
    conn = await asyncpg.connect(database_url)
    try:
        columns = {
            row["column_name"]
            for row in await conn.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'orchestration_runs'"
            )
        }
        statement = await conn.prepare(QUERIES["list_runs_basic"])
        listed = {attribute.name for attribute in statement.get_attributes()}
    finally:
        await conn.close()
    assert columns - listed == set()
    assert listed == columns
