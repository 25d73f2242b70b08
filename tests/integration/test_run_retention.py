"""Run retention (PODIUM_RUN_RETENTION_DAYS) against a real server, real agents and a
real PostgreSQL: whole finished run trees older than the window are deleted in bounded
batches, with every row of them; nothing else is. And ``podium runs export`` writes
what an operator archives before that.

Runs are made by the real engine (steps, attempts, events, child runs); only their end
time is moved into the past with SQL, as the passing of days would.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import json_format

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.events.retention import EventRetention, RetentionConfig
from podium.server.storage.database import Connection, Database
from podium.server.storage.retention import RunRetentionRepository
from podium.server.storage.webhooks import WebhooksRepository
from tests.integration.client_helpers import podium
from tests.integration.conftest import StartServer, static_agents
from tests.integration.runs_helpers import (
    Run,
    RunEvent,
    StepRun,
    all_events,
    create_definition,
    plan,
    start_run,
    wait_for,
    wait_for_run,
)

# Every table whose rows belong to a run (directly or through its steps).
RUN_TABLES = {
    "orchestration_steps": "run_id",
    "step_attempts": "run_id",
    "orchestration_events": "run_id",
    "conversations": "run_id",
    "deliverables": "run_id",
}


async def _flows(stub: pb_grpc.OrchestrationServiceAsyncStub) -> None:
    await create_definition(
        stub, "child-flow", [{"id": "e", "agent": "echo", "input": {"q": "${run.input.q}"}}]
    )
    await create_definition(
        stub,
        "parent-flow",
        [
            {"id": "sub", "orchestration": {"name": "child-flow"}, "input": {"q": "p"}},
            {"id": "after", "agent": "echo", "depends_on": ["sub"], "input": {"x": 1}},
        ],
    )


async def _finished(stub: pb_grpc.OrchestrationServiceAsyncStub, name: str, q: str) -> Run:
    started = await start_run(stub, name, input={"q": q})
    run = await wait_for_run(stub, started.run.id)
    assert run.state == Run.STATE_SUCCEEDED
    return run


def _children(run: Run) -> list[str]:
    return [s.child_run_id for s in run.steps if s.child_run_id]


async def _age(conn: Connection, run_ids: list[str], days: int) -> None:
    """Move the end of these runs ``days`` into the past."""
    await conn.execute(
        "UPDATE orchestration_runs SET ended_at = now() - make_interval(days => $2) "
        "WHERE id = ANY($1::uuid[])",
        [uuid.UUID(r) for r in run_ids],
        days,
    )


async def _rows(conn: Connection, run_ids: list[str]) -> dict[str, int]:
    ids = [uuid.UUID(r) for r in run_ids]
    counts = {
        "orchestration_runs": await conn.fetchval(
            "SELECT count(*) FROM orchestration_runs WHERE id = ANY($1::uuid[])", ids
        )
    }
    for table, column in RUN_TABLES.items():
        counts[table] = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} = ANY($1::uuid[])", ids
        )
    return counts


async def test_whole_finished_trees_older_than_the_window_are_deleted_in_batches(
    start_server: StartServer, example_agents: ExampleAgents, db: Database, database_url: str
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _flows(stub)
        # Old and finished: 4 plain runs and 1 tree (parent + child) -> deleted.
        old_plain = [(await _finished(stub, "child-flow", f"o{i}")).id for i in range(4)]
        old_tree = await _finished(stub, "parent-flow", "t")
        old_child = _children(old_tree)
        assert len(old_child) == 1
        # Old, finished, but a descendant has not ended -> the whole tree stays.
        held_tree = await _finished(stub, "parent-flow", "h")
        held_child = _children(held_tree)
        # Finished recently -> stays.
        recent = (await _finished(stub, "child-flow", "r")).id
        # Running (a long timer) with old events -> stays.
        running = (
            await start_run(stub, inline=plan([{"id": "nap", "sleep": {"seconds": 3600}}]))
        ).run.id
        # A running parent whose child finished long ago -> both stay.
        live_parent = (
            await start_run(
                stub,
                inline=plan(
                    [
                        {"id": "sub", "orchestration": {"name": "child-flow"}, "input": {"q": "l"}},
                        {"id": "nap", "sleep": {"seconds": 3600}, "depends_on": ["sub"]},
                    ]
                ),
            )
        ).run.id

        async def napping(run_id: str) -> bool:
            """Whether the run's long timer is parked: nothing of the run changes then."""
            run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
            nap = next(s for s in run.steps if s.step_id == "nap")
            return nap.state == StepRun.STATE_WAITING_RETRY

        async def child_done() -> str | None:
            """The child, once it finished and the parent took its output and went to
            sleep (the rows counted below must not change while retention runs)."""
            if not (await napping(live_parent) and await napping(running)):
                return None
            run = (await stub.GetRun(pb.GetRunRequest(run_id=live_parent))).run
            kids = _children(run)
            if not kids:
                return None
            kid = (await stub.GetRun(pb.GetRunRequest(run_id=kids[0]))).run
            return kids[0] if kid.state == Run.STATE_SUCCEEDED else None

        live_child = await wait_for(
            child_done, "the child of the running parent finished, the parent asleep"
        )

        deleted = [*old_plain, old_tree.id, *old_child]
        kept = [held_tree.id, *held_child, recent, running, live_parent, live_child]
        async with db.connection() as conn:
            await _age(conn, [*old_plain, old_tree.id, *old_child, held_tree.id], 10)
            await _age(conn, [live_child], 30)
            await conn.execute(
                "UPDATE orchestration_runs SET state = 'running', ended_at = NULL WHERE id = $1",
                uuid.UUID(held_child[0]),
            )
            await conn.execute(
                "UPDATE orchestration_events SET created_at = now() - interval '20 days' "
                "WHERE run_id = $1",
                uuid.UUID(running),
            )
            before_deleted = await _rows(conn, deleted)
            before_kept = await _rows(conn, kept)
        # Each run had steps, attempts and events: the deletion has something to remove.
        assert before_deleted["orchestration_runs"] == 6
        assert before_deleted["orchestration_steps"] >= 7
        assert before_deleted["step_attempts"] >= 6
        assert before_deleted["orchestration_events"] >= 6 * 4

        retention = EventRetention(
            WebhooksRepository(db),
            RetentionConfig(retention_hours=0, run_retention_days=7, run_batch_size=2),
            RunRetentionRepository(db),
        )
        removed: list[tuple[str, int]] = []
        retention.on_deleted = lambda kind, count: removed.append((kind, count))
        result = await retention.run_once()

        # 6 old top-level runs scanned 2 per batch (the last batch finds nothing more).
        assert result.runs == 6 and not result.skipped
        assert result.run_batches == 4
        assert sum(c for _, c in removed) == 6 and {k for k, _ in removed} == {"runs"}
        assert max(c for _, c in removed) <= 3  # a batch: 2 top-level runs (+1 child)
        async with db.connection() as conn:
            assert set((await _rows(conn, deleted)).values()) == {0}
            assert await _rows(conn, kept) == before_kept
        for run_id in deleted:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetRun(pb.GetRunRequest(run_id=run_id))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        running_run = (await stub.GetRun(pb.GetRunRequest(run_id=running))).run
        assert running_run.state == Run.STATE_RUNNING
        # A second pass deletes nothing more.
        again = await retention.run_once()
        assert (again.runs, again.run_batches) == (0, 1)


async def test_run_retention_waits_for_the_replica_holding_the_lock(
    db: Database, database_url: str
) -> None:
    config = RetentionConfig(retention_hours=0, run_retention_days=1)
    retention = EventRetention(WebhooksRepository(db), config, RunRetentionRepository(db))
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            assert await other.fetchval("SELECT pg_try_advisory_xact_lock(2003331955, 0)")
            assert (await retention.run_once()).skipped
    finally:
        await other.close()
    assert not (await retention.run_once()).skipped
    off = RetentionConfig(retention_hours=0)
    assert not off.enabled and not off.runs_enabled


async def test_export_writes_the_whole_tree_as_json_lines(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    """``podium runs export`` (the real console script): the run, every event, then the
    child run and its events; each line parses and matches what the API returns."""
    server = await start_server(agents=static_agents(example_agents, "echo"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await _flows(stub)
        tree = await _finished(stub, "parent-flow", "x")
        child = _children(tree)[0]
        events = {tree.id: await all_events(stub, tree.id), child: await all_events(stub, child)}

    result = await podium("runs", "export", tree.id, "--address", server.address)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [next(iter(line)) for line in lines]
    runs = [line["run"] for line in lines if "run" in line]
    assert [r["id"] for r in runs] == [tree.id, child]
    assert runs[0]["state"] == "STATE_SUCCEEDED"
    assert {s["step_id"] for s in runs[0]["steps"]} == {"sub", "after"}
    assert runs[1]["output"] == {"e": {"echo": {"q": "p"}}}
    # run, its events, then the child run and its events.
    n_parent = len(events[tree.id])
    assert kinds == ["run", *["event"] * n_parent, "run", *["event"] * len(events[child])]
    exported = [(e["event"]["run_id"], int(e["event"]["sequence"])) for e in lines if "event" in e]
    assert exported == [(r, e.sequence) for r in (tree.id, child) for e in events[r]]
    # Round trip: each line parses back into the very message the API returns.
    back_events = [json_format.ParseDict(e["event"], RunEvent()) for e in lines if "event" in e]
    assert back_events == [e for r in (tree.id, child) for e in events[r]]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        for line in runs:
            api = (await stub.GetRun(pb.GetRunRequest(run_id=line["id"]))).run
            assert json_format.ParseDict(line, Run()) == api

    missing = await podium("runs", "export", str(uuid.uuid4()), "--address", server.address)
    assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr
    assert missing.stdout == ""


async def test_every_cascade_of_a_run_deletion_has_an_index_and_runs_leave_room_for_hot(
    db: Database,
) -> None:
    """Deleting a run cascades to (or nulls) every row referencing it or its steps: each
    such foreign key must lead an index, or each deleted run reads a whole table."""
    async with db.connection() as conn:
        unindexed = await conn.fetch(
            """
            SELECT c.conrelid::regclass::text AS tbl, c.conname
            FROM pg_constraint c
            WHERE c.contype = 'f'
              AND c.confrelid IN ('orchestration_runs'::regclass,
                                  'orchestration_steps'::regclass)
              AND NOT EXISTS (
                  SELECT 1 FROM pg_index i
                  WHERE i.indrelid = c.conrelid
                    AND (string_to_array(i.indkey::text, ' ')::int2[])
                        [1:cardinality(c.conkey)] @> c.conkey
                    AND (string_to_array(i.indkey::text, ' ')::int2[])
                        [1:cardinality(c.conkey)] <@ c.conkey)
            """
        )
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = 'orchestration_runs'::regclass"
        )
    assert [(r["tbl"], r["conname"]) for r in unindexed] == []
    assert "fillfactor=80" in options
