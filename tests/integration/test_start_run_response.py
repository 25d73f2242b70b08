"""StartRun / ForkRun build their response from what the create call returned
(``podium_create_run``) instead of reading the run back: the response must equal what
reading the stored run gives (GetRun, the former read-back), field by field.

No scheduler runs here (the services are used directly on a fresh database), so nothing
moves a run between its creation and the read.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from podium.orchestration.v1 import definition_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.config import Settings
from podium.server.engine.definitions import DefinitionService
from podium.server.engine.runs import RunService
from podium.server.storage.database import Database
from podium.server.storage.definitions import DefinitionsRepository
from podium.server.storage.runs import RunsRepository
from tests.integration.runs_helpers import struct

ORG = "default"

STEPS: list[dict[str, Any]] = [
    {"id": "root", "agent": "echo", "input": {"n": "${run.input.n}"}, "timeout_seconds": 5},
    {
        "id": "skill",
        "skill": "summarize",
        "depends_on": ["root"],
        "input": {"text": "${steps.root.output}"},
        "on_failure": {"max_attempts": 3, "backoff": {"initial_seconds": 0.5}},
        "caching": {"enabled": True, "ttl_seconds": 60},
    },
    {"id": "side", "agent": "echo", "input": {"x": 1.5, "list": [1, "a", None]}},
    {
        "id": "sink",
        "agent": "echo",
        "depends_on": ["skill", "side"],
        "input": {"all": ["${steps.skill.output}", "${steps.side.output}"]},
    },
]


def services(db: Database) -> RunService:
    definitions = DefinitionService(DefinitionsRepository(db))
    return RunService(RunsRepository(db), definitions, Settings.from_env({}))


def inline_plan() -> definition_pb2.Definition:
    return json_format.ParseDict(
        {
            "steps": STEPS,
            "labels": {"team": "a"},
            "error_handling": {"on_step_failure": {"max_attempts": 2}},
            "execution": {"concurrency": {"max_parallel": 3}},
        },
        definition_pb2.Definition(),
    )


async def assert_response_is_the_stored_run(runs: RunService, response: run_pb2.Run) -> None:
    stored = await runs.get(ORG, response.id)
    assert len(response.steps) == len(STEPS)
    for ours, theirs in zip(response.steps, stored.steps, strict=True):
        assert ours == theirs, ours.step_id
    assert response == stored


async def test_start_run_response_equals_the_stored_run(db: Database) -> None:
    runs = services(db)
    for start in (False, True):
        request = pb.StartRunRequest(
            plan=inline_plan(),
            input=struct({"n": 3, "s": "x", "nested": {"f": 0.25, "l": [True, None]}}),
            metadata=struct({"who": "test"}),
            labels={"env": "ci"},
            request_id=f"same-{start}",
            start=start,
            webhook_url="http://127.0.0.1:1/hook",
        )
        response, existing = await runs.start(ORG, request)
        assert not existing
        assert response.state == (run_pb2.Run.STATE_RUNNING if start else run_pb2.Run.STATE_CREATED)
        queued = [s.step_id for s in response.steps if s.state == run_pb2.StepRun.STATE_QUEUED]
        assert queued == (["root", "side"] if start else [])
        assert all(s.conversation_id for s in response.steps)
        await assert_response_is_the_stored_run(runs, response)

        # The same request_id again: the stored run, existing = true.
        again, existing = await runs.start(ORG, request)
        assert existing
        assert again == await runs.get(ORG, response.id)
        assert again.id == response.id


async def test_start_run_of_a_saved_definition_and_bypass_cache(db: Database) -> None:
    runs = services(db)
    definition = inline_plan()
    definition.name = "saved"
    saved, _ = await runs._definitions.create(ORG, definition)
    for bypass in (False, True):
        response, _ = await runs.start(
            ORG,
            pb.StartRunRequest(
                definition=pb.DefinitionRef(name=saved.name, version=saved.version),
                input=struct({"n": 1}),
                bypass_cache=bypass,
                start=True,
            ),
        )
        assert response.definition_name == "saved"
        await assert_response_is_the_stored_run(runs, response)


async def test_fork_run_response_equals_the_stored_run(db: Database) -> None:
    runs = services(db)
    source, _ = await runs.start(
        ORG, pb.StartRunRequest(plan=inline_plan(), input=struct({"n": 2}), start=True)
    )
    # Finish the source by hand: root and side succeeded, the rest failed.
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE orchestration_steps SET state = 'succeeded', output = "
            "jsonb_build_object('v', step_id), input = '{\"in\": 1}', ended_at = now() "
            "WHERE run_id = $1 AND step_id IN ('root', 'side')",
            source.id,
        )
        await conn.execute(
            "UPDATE orchestration_steps SET state = 'failed' "
            "WHERE run_id = $1 AND step_id IN ('skill', 'sink')",
            source.id,
        )
        await conn.execute(
            "UPDATE orchestration_runs SET state = 'failed', ended_at = now() WHERE id = $1",
            source.id,
        )
    request = pb.ForkRunRequest(run_id=source.id, step_ids=["skill"], request_id="fork-1")
    forked, existing = await runs.fork(ORG, request)
    assert not existing
    assert forked.forked_from_run_id == source.id
    by_id = {s.step_id: s for s in forked.steps}
    assert by_id["root"].state == run_pb2.StepRun.STATE_SUCCEEDED
    assert json_format.MessageToDict(by_id["side"].output) == {"v": "side"}
    assert by_id["skill"].state == run_pb2.StepRun.STATE_QUEUED
    await assert_response_is_the_stored_run(runs, forked)
    again, existing = await runs.fork(ORG, request)
    assert existing
    assert again == await runs.get(ORG, forked.id)
