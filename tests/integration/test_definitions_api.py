"""Definition RPCs end to end: real server, real Postgres, generated stubs."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from tests.integration.rpc import error_details, violations


def make_definition(name: str = "research-brief", **extra: object) -> definition_pb2.Definition:
    spec = {
        "name": name,
        "description": "search then summarize",
        "steps": [
            {"id": "search", "agent": "web-search", "input": {"query": "${run.input.topic}"}},
            {
                "id": "summarize",
                "agent": "summarizer",
                "depends_on": ["search"],
                "input": {"text": "${steps.search.output.results}"},
            },
        ],
        **extra,
    }
    return json_format.ParseDict(spec, definition_pb2.Definition())


async def test_create_assigns_versions_and_get_returns_latest_or_given(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    first = (
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=make_definition()))
    ).definition
    changed = make_definition(description="v2")
    second = (
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=changed))
    ).definition
    assert (first.version, second.version) == (1, 2)
    assert first.organization_id == "default"
    assert first.create_time.seconds > 0
    assert first.content_hash and first.content_hash != second.content_hash

    latest = (await stub.GetDefinition(pb.GetDefinitionRequest(name="research-brief"))).definition
    assert latest.version == 2 and latest.description == "v2"
    v1 = (
        await stub.GetDefinition(pb.GetDefinitionRequest(name="research-brief", version=1))
    ).definition
    assert v1.description == "search then summarize"
    assert [s.id for s in v1.steps] == ["search", "summarize"]
    assert v1.steps[1].input["text"] == "${steps.search.output.results}"


async def test_output_only_fields_in_request_are_ignored(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    definition = make_definition()
    definition.version = 42
    definition.organization_id = "someone-else"
    definition.archived = True
    created = (
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=definition))
    ).definition
    assert (created.version, created.organization_id, created.archived) == (1, "default", False)


async def test_get_missing_definition_is_not_found(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetDefinition(pb.GetDefinitionRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info, _ = error_details(caught.value)
    assert info.reason == "DEFINITION_NOT_FOUND"
    assert "nope" in (caught.value.details() or "")

    await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=make_definition()))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetDefinition(pb.GetDefinitionRequest(name="research-brief", version=7))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cycle_is_invalid_argument_naming_the_steps(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    definition = json_format.ParseDict(
        {
            "name": "loop",
            "steps": [
                {"id": "a", "agent": "echo", "depends_on": ["c"]},
                {"id": "b", "agent": "echo", "depends_on": ["a"]},
                {"id": "c", "agent": "echo", "depends_on": ["b"]},
                {"id": "d", "agent": "echo"},
            ],
        },
        definition_pb2.Definition(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=definition))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details(caught.value)
    assert info.reason == "INVALID_DEFINITION"
    assert len(bad.field_violations) == 1
    description = bad.field_violations[0].description
    assert "cycle" in description
    # The cycle is named in depends-on order, starting anywhere in it; d is not part of it.
    assert any(
        f"{x} -> {y} -> {z} -> {x}" in description
        for x, y, z in (("a", "c", "b"), ("c", "b", "a"), ("b", "a", "c"))
    ), description
    assert "-> d" not in description and "d ->" not in description
    # Nothing was stored.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetDefinition(pb.GetDefinitionRequest(name="loop"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_every_problem_gets_its_own_violation(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    definition = json_format.ParseDict(
        {
            "name": "",
            "error_handling": {"on_step_failure": {"max_attempts": -1}},
            "execution": {"concurrency": {"max_parallel": -2}},
            "steps": [
                {"id": "a", "agent": "echo", "input": {"x": "${steps.b.output.y}"}},
                {"id": "a", "agent": "echo"},
                {"id": "b", "depends_on": ["ghost"]},
            ],
        },
        definition_pb2.Definition(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ValidateDefinition(pb.ValidateDefinitionRequest(definition=definition))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(caught.value)
    assert "name" in found
    assert "error_handling.on_step_failure.max_attempts" in found
    assert "execution.concurrency.max_parallel" in found
    assert "steps[1].id" in found
    assert "steps[2].depends_on[0]" in found
    assert any(field.startswith("steps[0].input") for field in found), found
    assert any(field.startswith("steps[2]") and "agent" in desc for field, desc in found.items()), (
        found
    )


POLICIES = {
    "budget": {"max_tokens": 5, "on_exceed": "ON_EXCEED_FAIL"},
    "concurrency": {"max_parallel": 2, "key": "${run.input.topic}", "max_runs_per_key": 1},
}


async def test_a_budget_and_a_concurrency_key_are_accepted(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    """Both are enforced (test_budgets.py, test_concurrency_keys.py): a definition with
    them validates and is stored with them."""
    definition = make_definition(execution=POLICIES)
    await stub.ValidateDefinition(pb.ValidateDefinitionRequest(definition=definition))
    stored = (
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=definition))
    ).definition
    assert stored.execution.budget.max_tokens == 5
    assert stored.execution.concurrency.key == "${run.input.topic}"
    assert stored.execution.concurrency.max_runs_per_key == 1


async def test_unset_budget_and_concurrency_key_are_accepted(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    execution = {"budget": {}, "concurrency": {"max_parallel": 2, "key": ""}}
    response = await stub.ValidateDefinition(
        pb.ValidateDefinitionRequest(definition=make_definition(execution=execution))
    )
    assert response.definition.execution.concurrency.max_parallel == 2


async def test_validate_accepts_a_good_definition_without_storing(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    response = await stub.ValidateDefinition(
        pb.ValidateDefinitionRequest(definition=make_definition())
    )
    assert response.definition.name == "research-brief"
    assert response.definition.version == 0
    listed = await stub.ListDefinitions(pb.ListDefinitionsRequest())
    assert list(listed.definitions) == []


async def test_create_is_idempotent_unless_a_new_version_is_forced(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    first = await stub.CreateDefinition(
        pb.CreateDefinitionRequest(definition=make_definition("same"))
    )
    assert (first.definition.version, first.existing) == (1, False)
    # The same content again: the latest version, nothing stored.
    again = await stub.CreateDefinition(
        pb.CreateDefinitionRequest(definition=make_definition("same"))
    )
    assert (again.definition.version, again.existing) == (1, True)
    assert again.definition.content_hash == first.definition.content_hash
    assert again.definition.create_time == first.definition.create_time
    forced = await stub.CreateDefinition(
        pb.CreateDefinitionRequest(definition=make_definition("same"), force_new_version=True)
    )
    assert (forced.definition.version, forced.existing) == (2, False)
    # Other content makes a new version; going back to the first content does too (it
    # is compared with the latest version only).
    changed = make_definition("same")
    changed.description = "changed"
    assert (
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=changed))
    ).definition.version == 3
    back = await stub.CreateDefinition(
        pb.CreateDefinitionRequest(definition=make_definition("same"))
    )
    assert (back.definition.version, back.existing) == (4, False)
    # An archived name still refuses, same content or not.
    await stub.ArchiveDefinition(pb.ArchiveDefinitionRequest(name="same"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=make_definition("same")))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_list_pages_through_latest_versions(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    names = [f"flow-{i:02d}" for i in range(7)]
    for name in names:
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=make_definition(name)))
    await stub.CreateDefinition(
        pb.CreateDefinitionRequest(definition=make_definition("flow-03"), force_new_version=True)
    )
    await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=make_definition("other")))

    seen: list[tuple[str, int]] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListDefinitions(
            pb.ListDefinitionsRequest(page_size=3, page_token=token, name_prefix="flow-")
        )
        pages += 1
        seen.extend((d.name, d.version) for d in page.definitions)
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [n for n, _ in seen] == names
    assert dict(seen)["flow-03"] == 2

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListDefinitions(pb.ListDefinitionsRequest(page_token="garbage!"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in violations(caught.value)

    first = await stub.ListDefinitions(pb.ListDefinitionsRequest(page_size=2, name_prefix="flow-"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListDefinitions(
            pb.ListDefinitionsRequest(page_size=2, page_token=first.next_page_token)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_archive_hides_from_list_and_refuses_new_versions(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=make_definition("old")))
    archived = await stub.ArchiveDefinition(pb.ArchiveDefinitionRequest(name="old"))
    assert archived.definition.archived
    assert [
        d.name for d in (await stub.ListDefinitions(pb.ListDefinitionsRequest())).definitions
    ] == []
    listed = await stub.ListDefinitions(pb.ListDefinitionsRequest(include_archived=True))
    assert [d.name for d in listed.definitions] == ["old"]
    got = await stub.GetDefinition(pb.GetDefinitionRequest(name="old", version=1))
    assert got.definition.archived
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=make_definition("old")))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ArchiveDefinition(pb.ArchiveDefinitionRequest(name="never"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_sub_orchestration_target_must_exist(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    parent = json_format.ParseDict(
        {"name": "parent", "steps": [{"id": "child", "orchestration": {"name": "translate-flow"}}]},
        definition_pb2.Definition(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=parent))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any("translate-flow" in d for d in violations(caught.value).values())
    await stub.CreateDefinition(
        pb.CreateDefinitionRequest(definition=make_definition("translate-flow"))
    )
    created = await stub.CreateDefinition(pb.CreateDefinitionRequest(definition=parent))
    assert created.definition.steps[0].orchestration.name == "translate-flow"


def test_every_rpc_of_the_contract_is_implemented() -> None:
    """No RPC of OrchestrationService is left to the UNIMPLEMENTED placeholder that
    server/api/orchestration.py installs for a contract method without a handler."""
    from podium.server.api.orchestration import OrchestrationServicer

    methods = pb.DESCRIPTOR.services_by_name["OrchestrationService"].methods
    placeholders = [
        m.name
        for m in methods
        if "_unimplemented" in getattr(OrchestrationServicer, m.name).__qualname__
    ]
    assert placeholders == []
