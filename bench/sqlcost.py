"""The hot path's cost inside PostgreSQL, one step at a time, in one backend.

Run ``.venv/bin/python bench/sqlcost.py [--database-url URL] [--calls N] [--steps S]``;
it prints ONE JSON document on stdout (progress on stderr). It creates a database
(``PODIUM_BENCH_DB_PREFIX``), migrates it with the checkout's migrations and function
files, creates one run of ``--steps`` sequential steps on an agent without limits (as
StartRun does, through ``podium_create_run``), and then times, in a ``DO`` block of one
backend, ``--calls`` calls of each hot-path statement, each in a subtransaction rolled
back at once, so every call sees the same rows (the first step queued, or running for
the completion):

- ``claim_us``: ``podium_claim_steps_of`` for the run (an eager claim of one step);
- ``lease_us``: ``podium_lease_steps`` of that step (the statement that writes it, its
  attempt and its conversation; its ``step.started`` event is the caller's);
- ``complete_us``: ``podium_complete_steps`` of the running step's success with its
  eager claim of the next step (a W1 completion statement);
- ``create_run_us``: ``podium_create_run`` of another run of ``--steps`` steps, started;
- ``writes_us``: the rows a claim writes, each as its own statement (the step's update,
  the attempt, the event, the run row, the conversation), for comparison with
  ``lease_us``.

The rolled-back calls leave dead row versions; the database is vacuumed before each
statement's calls so that none pays for another's.

Figures are microseconds per call, server side only: no client, no network, no commit,
and no other process in the measured path, so they move far less with the machine's
load than the end-to-end benchmarks do (run it twice to see the spread). Plans are
generic, as the server runs them (``plan_cache_mode = force_generic_plan``), after
``--warmup`` calls of each.

The script imports Podium from the interpreter running it, so the same file measures
another checkout's functions: ``/path/to/other/.venv/bin/python bench/sqlcost.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench.harness.common import DEFAULT_SERVER_URL, progress
from bench.harness.server import create_database, drop_database, machine_info

_SETUP = """
INSERT INTO organizations (id, name) VALUES ('default', 'default') ON CONFLICT DO NOTHING;
INSERT INTO agents (organization_id, name, endpoint)
VALUES ('default', 'noop', '127.0.0.1:1') ON CONFLICT DO NOTHING;
"""

# The steps of a chain as podium_create_run takes them (engine/plan.py builds the same).
_CHAIN = """
SELECT jsonb_agg(jsonb_build_object(
           'step_id', 's' || k, 'position', k, 'state', 'pending', 'agent', 'noop',
           'skill', NULL,
           'depends_on', CASE WHEN k = 1 THEN '[]'::jsonb
                              ELSE jsonb_build_array('s' || (k - 1)) END,
           'pending_dependencies', CASE WHEN k = 1 THEN 0 ELSE 1 END,
           'spec', '{}'::jsonb, 'max_attempts', 3, 'timeout_seconds', 60,
           'input_refs', CASE WHEN k = 1 THEN '[]'::jsonb
                              ELSE jsonb_build_array('s' || (k - 1)) END,
           'is_sink', k = $1))
  FROM generate_series(1, $1) k
"""

_CREATE = """
SELECT run_id FROM podium_create_run(
    'default', NULL, NULL, '{}'::jsonb, '{}'::jsonb, '{}'::jsonb, '{}'::jsonb, NULL, 4,
    false, NULL, NULL, NULL, NULL, 0, NULL, NULL, $1::jsonb, true, false)
"""

# name -> the statement timed (PL/pgSQL: r = the run with its first step queued,
# c = a run whose first step is running, attempt 1, steps = the chain's JSON).
_STATEMENTS = {
    "claim_us": "PERFORM count(*) FROM podium_claim_steps_of('bench', 10, 60, ARRAY[r]);",
    "lease_us": (
        "PERFORM count(*) FROM podium_lease_steps(ARRAY[r], ARRAY['s1'], NULL, NULL,"
        " 'bench', 60, clock_timestamp());"
    ),
    "complete_us": (
        "PERFORM count(*) FROM podium_complete_steps(ARRAY[c], ARRAY['s1'], ARRAY[1],"
        " ARRAY['succeeded'], ARRAY['{}'::jsonb], ARRAY[NULL::jsonb], ARRAY[NULL::jsonb],"
        " ARRAY[NULL::timestamptz], ARRAY[0::bigint], ARRAY[0::bigint], ARRAY[0::numeric],"
        " 'bench', 10, 60);"
    ),
    "create_run_us": (
        "PERFORM run_id FROM podium_create_run('default', NULL, NULL, '{}'::jsonb,"
        " '{}'::jsonb, '{}'::jsonb, '{}'::jsonb, NULL, 4, false, NULL, NULL, NULL, NULL,"
        " 0, NULL, NULL, steps, true, false);"
    ),
    "writes_us.step_update": (
        "UPDATE orchestration_steps s SET state = 'running', attempt = s.attempt + 1,"
        " lease_owner = 'bench', lease_expires_at = now() + interval '60 seconds',"
        " started_at = coalesce(s.started_at, now()), error = NULL"
        " WHERE s.run_id = r AND s.step_id = 's1';"
    ),
    "writes_us.attempt_insert": (
        "INSERT INTO step_attempts (run_id, step_id, attempt, organization_id, agent,"
        " started_at, credential_hash) VALUES (r, 's1', 1, 'default', 'noop', now(),"
        " encode(sha256(convert_to('pds_' || gen_random_uuid()::text, 'UTF8')), 'hex'));"
    ),
    "writes_us.event_insert": (
        "INSERT INTO orchestration_events (run_id, sequence, organization_id, type,"
        " step_id, attempt, run_state, step_state, payload, created_at) VALUES (r, 1000000,"
        " 'default', 'step.started', 's1', 1, 'running', 'running', '{}', clock_timestamp());"
    ),
    "writes_us.run_update": (
        "UPDATE orchestration_runs SET last_event_sequence = last_event_sequence + 1,"
        " updated_at = now() WHERE id = r;"
    ),
    "writes_us.conversation_insert": (
        "INSERT INTO conversations (id, organization_id, run_id, step_id, agent)"
        " VALUES (gen_random_uuid(), 'default', r, 's1', 'noop') ON CONFLICT (id) DO NOTHING;"
    ),
}


def _timing_block(statement: str, calls: int, warmup: int) -> str:
    """A DO block timing ``statement`` (each call rolled back) into podium_sqlcost."""
    loop = (
        "FOR i IN 1 .. <n> LOOP BEGIN " + statement + " RAISE EXCEPTION 'podium_sqlcost'; "
        "EXCEPTION WHEN raise_exception THEN NULL; END; END LOOP;"
    )
    return (
        "DO $$ DECLARE r uuid; c uuid; steps jsonb; t0 timestamptz; BEGIN "
        "SELECT (v ->> 'r')::uuid, (v ->> 'c')::uuid, v -> 'steps' INTO r, c, steps "
        "FROM (SELECT current_setting('podium_sqlcost.args')::jsonb AS v) a; "
        + loop.replace("<n>", str(warmup), 1)
        + " t0 := clock_timestamp(); "
        + loop.replace("<n>", str(calls), 1)
        + " PERFORM set_config('podium_sqlcost.us', "
        f"(extract(epoch FROM clock_timestamp() - t0) * 1e6 / {calls})::text, false); "
        "END $$"
    )


async def measure(dsn: str, calls: int, warmup: int, steps: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_SETUP)
        chain = await conn.fetchval(_CHAIN, steps)
        queued = await conn.fetchval(_CREATE, chain)
        running = await conn.fetchval(_CREATE, chain)
        # The second run's first step leased (attempt 1) and committed: the completion's.
        await conn.fetch(
            "SELECT * FROM podium_claim_steps_of('bench', 10, 60, ARRAY[$1::uuid])", running
        )
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        args = json.dumps({"r": str(queued), "c": str(running), "steps": json.loads(chain)})
        await conn.execute("SELECT set_config('podium_sqlcost.args', $1, false)", args)
        out: dict[str, Any] = {}
        for name, statement in _STATEMENTS.items():
            progress(f"sqlcost {name}")
            # The rolled-back calls leave dead row versions behind: gone before the next
            # statement's calls, so none pays for another's.
            await conn.execute("VACUUM")
            figure: float | None
            try:
                await conn.execute(_timing_block(statement, calls, warmup))
            except asyncpg.UndefinedFunctionError:  # another checkout's function signature
                figure = None
            else:
                value = await conn.fetchval("SELECT current_setting('podium_sqlcost.us')")
                figure = round(float(value), 1)
            group, _, key = name.partition(".")
            if key:
                out.setdefault(group, {})[key] = figure
            else:
                out[name] = figure
        writes = out["writes_us"].values()
        out["writes_us"]["sum"] = round(sum(w for w in writes if w is not None), 1)
        return out
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    admin = await asyncpg.connect(args.database_url)
    try:
        name, dsn = await create_database(admin, args.database_url)
        try:
            from podium.server.storage.migrations import migrate

            await migrate(dsn)
            figures = await measure(dsn, args.calls, args.warmup, args.steps)
        finally:
            await drop_database(admin, name)
        return {
            "benchmark": "sqlcost",
            "calls": args.calls,
            "steps": args.steps,
            "machine": await machine_info(admin),
            **figures,
        }
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_SERVER_URL)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(main_async(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
