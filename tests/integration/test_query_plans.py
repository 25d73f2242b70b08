"""The claim and complete paths, and WatchRuns' page query, use their indexes on a
large table.

100,000 steps (10,000 runs of 10 steps, most finished) are inserted set-based and
analysed; then podium_claim_steps and podium_complete_step run with auto_explain
logging the plan of every statement they execute (nested statements included) to
this connection as NOTICEs, with custom plans (the actual parameter values) where the
function lets PostgreSQL choose (podium_complete_step); the claim, a completion batch
and StartRun always use generic plans (the last test). No plan
may read orchestration_steps, orchestration_runs or step_attempts with a Seq Scan:
each call must cost what the rows it touches cost, not the size of the history.

The plans must also hold without fresh statistics: the claim (with a completion's eager
claim) and WatchRuns' page query run again on histories whose tables were never
analysed, with the plans a connection made while the tables were still empty.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

RUNS = 10_000
STEPS_PER_RUN = 10
RUNNING_RUNS = 50  # the last ones created; the others succeeded

_BIG_TABLES = frozenset({"orchestration_steps", "orchestration_runs", "step_attempts"})


def _history(running: int) -> str:
    """Every run of the history: succeeded, or (the last ``running``) running with step
    s1 running (attempt 1, leased), s2-s3 queued, s4 waiting for a retry that is due, and
    s5-s10 pending on s1. Foreign keys are not checked while inserting
    (session_replication_role = replica) to keep the setup fast; the rows satisfy them.
    Analysed at the end."""
    return f"""
SET session_replication_role = replica;
INSERT INTO orchestration_runs
    (id, organization_id, plan, state, max_parallel, steps_remaining, created_at,
     started_at, ended_at)
SELECT md5('run' || g)::uuid, 'default', '{{}}',
       CASE WHEN g > {RUNS - running} THEN 'running' ELSE 'succeeded' END, 4,
       CASE WHEN g > {RUNS - running} THEN {STEPS_PER_RUN} ELSE 0 END,
       now() - make_interval(secs => {RUNS} - g), now() - make_interval(secs => {RUNS} - g),
       CASE WHEN g <= {RUNS - running} THEN now() END
FROM generate_series(1, {RUNS}) g;
INSERT INTO orchestration_steps
    (run_id, step_id, organization_id, position, state, agent, depends_on,
     pending_dependencies, spec, attempt, lease_owner, lease_expires_at, next_attempt_at,
     queued_at, started_at, ended_at, output, conversation_id)
SELECT md5('run' || g)::uuid, 's' || k, 'default', k, t.state, 'echo',
       CASE WHEN t.state = 'pending' THEN ARRAY['s1'] ELSE '{{}}' END,
       CASE WHEN t.state = 'pending' THEN 1 ELSE 0 END,
       '{{}}',
       CASE WHEN t.state IN ('succeeded', 'running', 'waiting_retry') THEN 1 ELSE 0 END,
       CASE WHEN t.state = 'running' THEN 'replica-a' END,
       CASE WHEN t.state = 'running' THEN now() + interval '1 hour' END,
       CASE WHEN t.state = 'waiting_retry' THEN now() - interval '1 second' END,
       now(), now(), CASE WHEN t.state = 'succeeded' THEN now() END,
       CASE WHEN t.state = 'succeeded' THEN '{{"ok": true}}'::jsonb END,
       md5('conversation' || g || '.' || k)::uuid
FROM generate_series(1, {RUNS}) g, generate_series(1, {STEPS_PER_RUN}) k,
     LATERAL (SELECT CASE WHEN g <= {RUNS - running} THEN 'succeeded'
                          WHEN k = 1 THEN 'running'
                          WHEN k <= 3 THEN 'queued'
                          WHEN k = 4 THEN 'waiting_retry'
                          ELSE 'pending' END AS state) t;
INSERT INTO step_attempts (run_id, step_id, attempt, organization_id, agent)
SELECT run_id, step_id, 1, organization_id, agent FROM orchestration_steps WHERE attempt > 0
ON CONFLICT DO NOTHING;
SET session_replication_role = DEFAULT;
ANALYZE orchestration_runs, orchestration_steps, step_attempts;
"""


_SETUP = _history(RUNNING_RUNS)

_AUTO_EXPLAIN = """
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_format = json;
SET auto_explain.log_level = notice;
SET plan_cache_mode = force_custom_plan;
"""

_COMPLETE = "SELECT podium_complete_step($1, $2, 1, $3, $4, $5, NULL, $6, 10, 20, 0.001)"
# A completion batch of one success with its eager claim.
_COMPLETE_AND_CLAIM = """
SELECT * FROM podium_complete_steps(ARRAY[$1]::uuid[], ARRAY['s1'], ARRAY[1], ARRAY['succeeded'],
    ARRAY['{}'::jsonb], ARRAY[NULL::jsonb], ARRAY[NULL::jsonb], ARRAY[NULL::timestamptz],
    ARRAY[0::bigint], ARRAY[0::bigint], ARRAY[0::numeric], 'replica-a', 10, 60)
"""
# A completion batch of two successes of two runs (the set-based path,
# podium_complete_successes) with its eager claim.
_COMPLETE_BATCH_AND_CLAIM = """
SELECT * FROM podium_complete_steps(ARRAY[$1, $2]::uuid[], ARRAY['s1', 's1'], ARRAY[1, 1],
    ARRAY['succeeded', 'succeeded'], ARRAY['{}'::jsonb, '{}'::jsonb],
    ARRAY[NULL::jsonb, NULL::jsonb], ARRAY[NULL::jsonb, NULL::jsonb],
    ARRAY[NULL::timestamptz, NULL::timestamptz], ARRAY[0::bigint, 0::bigint],
    ARRAY[0::bigint, 0::bigint], ARRAY[0::numeric, 0::numeric], 'replica-a', 20, 60)
"""
# The statements of the set-based path whose plans the tests check.
_BATCH_STATEMENTS = (
    "generate_subscripts(p_runs, 1)",  # the fenced update of the batch's steps
    "d.step_id = ANY (s.depends_on)",  # promote the dependents
    "UPDATE step_attempts a SET ended_at",  # the attempts
    "UPDATE orchestration_runs r SET input_tokens = r.input_tokens + m.input_tokens",
)


# How a claim takes a run's queued steps: in one statement when their agent has no
# limits (the fast path), else one by one (an agent with max_concurrency).
_CLAIM_PATHS = {
    False: "LIMIT least(v_free, p_limit - v_picked)",
    True: "FOR UPDATE OF s SKIP LOCKED",
}


async def _limit_agent(conn: asyncpg.Connection[asyncpg.Record], limited: bool) -> None:
    """With ``limited``, the steps' agent gets a max_concurrency (the claim's loop)."""
    if limited:
        await conn.execute(
            "INSERT INTO agents (organization_id, name, endpoint, max_concurrency)"
            " VALUES ('default', 'echo', '127.0.0.1:1', 100000)"
        )


async def _batch_plans(conn: asyncpg.Connection[asyncpg.Record]) -> list[dict[str, Any]]:
    """The set-based completion of s1 of two running runs (made runnable s5-s10 each),
    with its eager claim; returns its plans."""
    fourth, fifth = [
        await conn.fetchval("SELECT md5('run' || $1::text)::uuid", str(RUNS - k)) for k in (3, 4)
    ]
    batch, plans = await _plans_of(conn, _COMPLETE_BATCH_AND_CLAIM, fourth, fifth)
    plans = list(plans)
    assert len(batch) > 1 and batch[-1]["states"] == ["running", "running"]
    texts = _query_texts(plans)
    for statement in _BATCH_STATEMENTS:
        assert statement in texts, f"no plan logged for the statement with {statement!r}"
    return plans


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _outline(node: dict[str, Any], depth: int = 0) -> list[str]:
    line = "  " * depth + " ".join(
        str(node[key]) for key in ("Node Type", "Relation Name", "Index Name") if key in node
    )
    return [line] + [row for child in node.get("Plans", []) for row in _outline(child, depth + 1)]


_ROWS_READ = """
SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0)
  FROM pg_stat_xact_user_tables WHERE relname = ANY ($1::text[])
"""


async def _reads_and_plans(
    conn: asyncpg.Connection[asyncpg.Record], query: str, *args: object
) -> tuple[list[asyncpg.Record], int, list[dict[str, Any]]]:
    """Run ``query`` in a transaction: its rows, the rows it read from the big tables
    (sequentially or through an index) and its plans."""
    messages: list[str] = []

    def listener(_conn: object, message: Any) -> None:
        messages.append(message.message)

    conn.add_log_listener(listener)
    try:
        async with conn.transaction():
            before = await conn.fetchval(_ROWS_READ, sorted(_BIG_TABLES))
            rows = await conn.fetch(query, *args)
            read = await conn.fetchval(_ROWS_READ, sorted(_BIG_TABLES)) - before
    finally:
        conn.remove_log_listener(listener)
    plans = [json.loads(m[m.index("{") :]) for m in messages if "{" in m]
    return rows, read, plans


async def _plans_of(conn: asyncpg.Connection[asyncpg.Record], query: str, *args: object) -> Any:
    """Run ``query`` in a transaction; return its result and every plan it logged."""
    rows, _, plans = await _reads_and_plans(conn, query, *args)
    return rows, plans


def _seq_scans(plans: list[dict[str, Any]]) -> list[str]:
    problems = []
    for plan in plans:
        scans = {
            node["Relation Name"]
            for node in _nodes(plan["Plan"])
            if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in _BIG_TABLES
        }
        if scans:
            query = " ".join(plan["Query Text"].split())
            problems.append(
                f"Seq Scan on {sorted(scans)} in: {query}\n" + "\n".join(_outline(plan["Plan"]))
            )
    return problems


def _whole_index_scans(plans: list[dict[str, Any]]) -> list[str]:
    """The scans of a big table's index with no condition on its columns: they read
    every entry of the index (for a partial index, e.g. every queued step of every run)."""
    problems = []
    for plan in plans:
        scans = {
            node["Index Name"]
            for node in _nodes(plan["Plan"])
            if node["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
            and node["Index Name"].startswith(tuple(_BIG_TABLES))
            and "Index Cond" not in node
        }
        if scans:
            query = " ".join(plan["Query Text"].split())
            problems.append(
                f"whole {sorted(scans)} in: {query}\n" + "\n".join(_outline(plan["Plan"]))
            )
    return problems


async def _explain_kept_plans(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """auto_explain on ``conn`` with the plan cache as the server runs it (generic plans
    once they are not worse); skips the test where auto_explain cannot be loaded."""
    try:
        await conn.execute(_AUTO_EXPLAIN + "SET plan_cache_mode = auto;")
    except (asyncpg.UndefinedFileError, asyncpg.InsufficientPrivilegeError) as exc:
        pytest.skip(f"auto_explain cannot be loaded on this server: {exc}")


def _query_texts(plans: list[dict[str, Any]]) -> str:
    return "\n".join(" ".join(plan["Query Text"].split()) for plan in plans)


@pytest.fixture
async def big_database(database_url: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(_SETUP)
        try:
            await conn.execute(_AUTO_EXPLAIN)
        except (asyncpg.UndefinedFileError, asyncpg.InsufficientPrivilegeError) as exc:
            pytest.skip(f"auto_explain cannot be loaded on this server: {exc}")
        yield conn
    finally:
        await conn.close()


@pytest.mark.parametrize("limited", [False, True], ids=["unlimited", "limited"])
async def test_claim_and_complete_use_indexes(
    big_database: asyncpg.Connection[asyncpg.Record], limited: bool
) -> None:
    conn = big_database
    await _limit_agent(conn, limited)
    assert await conn.fetchval("SELECT count(*) FROM orchestration_steps") == (RUNS * STEPS_PER_RUN)

    claimed, claim_plans = await _plans_of(
        conn, "SELECT * FROM podium_claim_steps('replica-b', 20, 60)"
    )
    assert len(claimed) == 20  # the oldest running runs: 4 runnable steps each

    newest = await conn.fetchval("SELECT md5('run' || $1::text)::uuid", str(RUNS))
    older = await conn.fetchval("SELECT md5('run' || $1::text)::uuid", str(RUNS - 1))
    succeeded, success_plans = await _plans_of(
        conn, _COMPLETE, newest, "s1", "succeeded", '{"text": "done"}', None, None
    )
    assert succeeded[0][0] == "running"  # s5-s10 are queued now
    in_a_minute = datetime.now(UTC) + timedelta(minutes=1)
    retried, retry_plans = await _plans_of(
        conn, _COMPLETE, older, "s1", "retry", None, '{"code": "X"}', in_a_minute
    )
    assert retried[0][0] == "running"
    third = await conn.fetchval("SELECT md5('run' || $1::text)::uuid", str(RUNS - 2))
    eager, eager_plans = await _plans_of(conn, _COMPLETE_AND_CLAIM, third)
    assert len(eager) > 1 and eager[-1]["states"] == ["running"]  # steps claimed, then states
    batch_plans = await _batch_plans(conn)

    plans = claim_plans + success_plans + retry_plans + eager_plans + batch_plans
    texts = _query_texts(plans)
    for statement in (
        "FOR UPDATE OF r",  # claim: the candidate runs
        _CLAIM_PATHS[limited],  # claim: a run's queued steps
        "x.state = 'running'",  # claim: a run's running steps
        "UPDATE orchestration_steps s SET state = 'running'",  # claim: lease a step
        "AND attempt = p_attempt AND state = 'running'",  # complete: the fenced update
        "p_step = ANY (d.depends_on)",  # complete: promote dependents
        "UPDATE step_attempts SET ended_at",  # complete: the attempt
        "AS share_key FROM unnest(p_runs)",  # the eager claim: the batch's runs' shares
    ):
        assert statement in texts, f"no plan logged for the statement with {statement!r}"
    problems = _seq_scans(plans)
    assert not problems, "\n\n".join(problems)


# --------------------------------------------------------------------------- WatchRuns

EVENT_RUNS = 10_000
EVENTS_PER_RUN = 12  # 120,000 events, all but the last minute's old

# A history of events on tables whose statistics were never gathered (no ANALYZE,
# autovacuum off for them): what a new deployment's WatchRuns reads before the first
# autovacuum analyses them.
_EVENTS_NO_AUTOVACUUM = """
ALTER TABLE orchestration_runs SET (autovacuum_enabled = false);
ALTER TABLE orchestration_events SET (autovacuum_enabled = false);
"""
_EVENTS_SETUP = f"""
SET session_replication_role = replica;
INSERT INTO orchestration_runs
    (id, organization_id, plan, state, max_parallel, steps_remaining, created_at,
     started_at, ended_at)
SELECT md5('run' || g)::uuid, 'default', '{{}}', 'succeeded', 4, 0,
       now() - make_interval(secs => {EVENT_RUNS} - g), now(), now()
FROM generate_series(1, {EVENT_RUNS}) g;
INSERT INTO orchestration_events
    (run_id, sequence, organization_id, type, step_id, run_state, created_at)
SELECT md5('run' || g)::uuid, k, 'default', 'step.completed', 's' || k, 'running',
       now() - make_interval(secs => {EVENT_RUNS} - g)
FROM generate_series(1, {EVENT_RUNS}) g, generate_series(1, {EVENTS_PER_RUN}) k;
SET session_replication_role = DEFAULT;
"""

_EVENT_TABLES = frozenset({"orchestration_events", "orchestration_runs"})


async def _kept_statement(
    database_url: str, name: str
) -> tuple[asyncpg.Connection[asyncpg.Record], Any, list[Any]]:
    """A connection logging its plans, with the storage query ``name`` prepared on it as
    the server runs it (one prepared statement per connection: asyncpg's cache) while the
    event tables are empty, never to be analysed (autovacuum off first: an ALTER TABLE
    would drop the plan); and the ids of the last 20 runs of the history to come."""
    from podium.server.storage.queries import QUERIES

    await _fill(database_url, _EVENTS_NO_AUTOVACUUM)
    conn = await asyncpg.connect(database_url)
    try:
        await _explain_kept_plans(conn)
        statement = await conn.prepare(QUERIES[name])
        recent = [
            await conn.fetchval("SELECT md5('run' || $1::text)::uuid", str(EVENT_RUNS - i))
            for i in range(20)
        ]
    except BaseException:
        await conn.close()
        raise
    return conn, statement, recent


async def test_watch_org_events_uses_indexes_without_statistics(database_url: str) -> None:
    """WatchRuns' page query on 120,000 events whose tables were never analysed, with
    the plan a long-lived stream keeps (prepared while the tables were still empty, then
    read again after they filled up): index scans only, no Seq Scan of the events or
    the runs."""
    conn, statement, recent = await _kept_statement(database_url, "watch_org_events")
    try:
        arguments: tuple[Any, ...] = (
            "default",
            datetime.now(UTC) - timedelta(seconds=5),
            recent,
            [EVENTS_PER_RUN] * len(recent),
            None,
            [],
            "{}",
            100,
        )
        # A stream opened on a new database reads the (empty) tables a few times: the
        # session may then keep a generic plan made for empty tables.
        for _ in range(8):
            await statement.fetch(*arguments)
        # Written by another connection: SET session_replication_role on this one would
        # drop its plans.
        await _fill(database_url, _EVENTS_SETUP)
        assert await conn.fetchval("SELECT count(*) FROM orchestration_events") == (
            EVENT_RUNS * EVENTS_PER_RUN
        )
        assert not await conn.fetchval(
            "SELECT coalesce(max(last_analyze), max(last_autoanalyze)) FROM pg_stat_user_tables "
            "WHERE relname IN ('orchestration_events', 'orchestration_runs')"
        )
        messages: list[str] = []

        def listener(_conn: object, message: Any) -> None:
            messages.append(message.message)

        conn.add_log_listener(listener)
        try:
            for _ in range(2):  # the plan it keeps
                await statement.fetch(*arguments)
        finally:
            conn.remove_log_listener(listener)
        plans = [json.loads(m[m.index("{") :]) for m in messages if "{" in m]
        assert plans
        problems = []
        for plan in plans:
            scans = {
                node["Relation Name"]
                for node in _nodes(plan["Plan"])
                if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in _EVENT_TABLES
            }
            if scans:
                problems.append(
                    f"Seq Scan on {sorted(scans)} ({plan['Plan'].get('Actual Total Time')} ms)\n"
                    + "\n".join(_outline(plan["Plan"]))
                )
        assert not problems, "\n\n".join(problems)
    finally:
        await conn.close()


async def test_watch_last_sequences_probes_runs_without_statistics(database_url: str) -> None:
    """The event hub's fallback poll (the last sequence of each watched run) with the
    plan a replica's connection keeps from empty tables, after 10,000 runs were written:
    a probe per run, no Seq Scan of the runs (which every poll would repeat)."""
    conn, statement, watched = await _kept_statement(database_url, "watch_last_sequences")
    try:
        for _ in range(8):  # a poll while the tables are empty
            assert await statement.fetch([str(u) for u in watched]) == []
        await _fill(database_url, _EVENTS_SETUP)
        messages: list[str] = []

        def listener(_conn: object, message: Any) -> None:
            messages.append(message.message)

        conn.add_log_listener(listener)
        try:
            rows = await statement.fetch([str(u) for u in watched])
        finally:
            conn.remove_log_listener(listener)
        assert len(rows) == len(watched)
        plans = [json.loads(m[m.index("{") :]) for m in messages if "{" in m]
        assert plans
        problems = _seq_scans(plans)
        assert not problems, "\n\n".join(problems)
    finally:
        await conn.close()


# A keyed history: the running runs get two key values, priorities and step limits
# (copied onto their steps as StartRun does), so the claim ranks shares, counts a key's
# running steps, and the eager claim probes for other shares' queued steps.
_KEYED = """
UPDATE orchestration_runs
   SET concurrency_key = 'k' || (abs(hashtext(id::text)) % 2), max_steps_per_key = 50,
       max_runs_per_key = 1000, priority = abs(hashtext(id::text)) % 3
 WHERE state = 'running';
UPDATE orchestration_steps s
   SET concurrency_key = r.concurrency_key, priority = r.priority
  FROM orchestration_runs r
 WHERE r.id = s.run_id AND r.state = 'running';
ANALYZE orchestration_runs, orchestration_steps;
"""


async def test_keyed_claim_fair_share_and_admission_use_indexes(
    big_database: asyncpg.Connection[asyncpg.Record],
) -> None:
    """With concurrency keys, priorities and max_steps_per_key on the running runs, the
    claim (ranking shares), the eager claim (probing other shares' queued steps), and the
    admission of a keyed run at start and at the end of another read no big table with a
    Seq Scan."""
    conn = big_database
    await conn.execute(_KEYED)
    claimed, claim_plans = await _plans_of(
        conn, "SELECT * FROM podium_claim_steps('replica-b', 20, 60)"
    )
    assert len(claimed) == 20
    priorities = await conn.fetch(
        "SELECT DISTINCT r.priority FROM orchestration_runs r WHERE r.id = ANY ($1::uuid[])",
        [row["run_id"] for row in claimed],
    )
    assert {row["priority"] for row in priorities} == {2}  # the highest priority first
    third = await conn.fetchval("SELECT md5('run' || $1::text)::uuid", str(RUNS - 2))
    _, eager_plans = await _plans_of(conn, _COMPLETE_AND_CLAIM, third)
    # Admission: a created keyed run started over its key's limit waits; ending an
    # admitted run of the key admits it (the trigger).
    waiting = await conn.fetchval(
        "INSERT INTO orchestration_runs (organization_id, plan, state, concurrency_key,"
        " max_runs_per_key, steps_remaining) VALUES ('default', '{}', 'created', 'k0', 1, 0)"
        " RETURNING id"
    )
    _, start_plans = await _plans_of(conn, "SELECT podium_start_run($1)", waiting)
    assert not await conn.fetchval(
        "SELECT key_admitted FROM orchestration_runs WHERE id = $1", waiting
    )
    _, end_plans = await _plans_of(
        conn,
        "UPDATE orchestration_runs SET state = 'cancelled' WHERE id IN (SELECT id FROM"
        " orchestration_runs WHERE concurrency_key = 'k0' AND key_admitted"
        " AND state = 'running')",
    )
    assert await conn.fetchval("SELECT key_admitted FROM orchestration_runs WHERE id = $1", waiting)
    plans = claim_plans + eager_plans + start_plans + end_plans
    texts = _query_texts(plans)
    for statement in (
        "row_number() OVER",  # claim: the shares' ranks
        "p.priority > m.priority",  # eager claim: a higher priority waits
        "k.concurrency_key = v_run.concurrency_key",  # max_steps_per_key
        "r.key_admitted AND r.state IN",  # admission: the key's admitted runs
        "NOT w.key_admitted AND w.state = 'running'",  # release: the next waiting run
    ):
        assert statement in texts, f"no plan logged for the statement with {statement!r}"
    problems = _seq_scans(plans)
    assert not problems, "\n\n".join(problems)


# ------------------------------------------------------- the claim without statistics


_NO_AUTOVACUUM = "".join(
    f"ALTER TABLE {table} SET (autovacuum_enabled = false);\n" for table in sorted(_BIG_TABLES)
)
"""Statistics never gathered on the big tables (autovacuum off for them): run before a
connection makes the plans a test checks, since an ALTER TABLE drops every cached plan
of its table (they would be made again, on the filled tables)."""


def _unanalysed(history: str) -> str:
    """``history`` without its ANALYZE (run :data:`_NO_AUTOVACUUM` first)."""
    return history.replace("ANALYZE orchestration_runs, orchestration_steps, step_attempts;", "")


async def _fill(url: str, setup: str) -> None:
    """Run ``setup`` on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(setup)
    finally:
        await conn.close()


# The history of test_claim_and_complete_use_indexes, never analysed.
_SETUP_UNANALYSED = _unanalysed(_SETUP)


@pytest.mark.parametrize("limited", [False, True], ids=["unlimited", "limited"])
async def test_claim_uses_indexes_without_statistics(database_url: str, limited: bool) -> None:
    """The claim (its candidate query over every run with runnable work, then a run's
    steps) and a completion with its eager claim, on 100,000 steps whose tables were
    never analysed, with the plans a replica's connection keeps: made while the tables
    were empty or small (a new deployment's first claims, the last of which takes the
    first steps of three small runs), then used after they filled up. No Seq Scan of the
    steps, runs or attempts, and no scan of a whole index of one for a run's steps."""
    await _fill(database_url, _NO_AUTOVACUUM)
    conn = await asyncpg.connect(database_url)
    try:
        await _explain_kept_plans(conn)
        await _limit_agent(conn, limited)
        await conn.execute("SET auto_explain.log_min_duration = -1")  # quiet while small
        for _ in range(8):  # a replica's first claims, on the empty tables
            assert await conn.fetch("SELECT * FROM podium_claim_steps('replica-b', 20, 60)") == []
        await conn.execute(_SMALL_RUNS.replace("{n}", "3") + _SMALL_RUNS_QUEUED)
        assert len(await conn.fetch("SELECT * FROM podium_claim_steps('replica-b', 20, 60)")) == 3
        # Another connection writes the history: SET session_replication_role on this
        # one would drop its plans (PostgreSQL resets a session's plan cache then).
        await _fill(database_url, _SETUP_UNANALYSED)
        await conn.execute("SET auto_explain.log_min_duration = 0")
        assert await conn.fetchval("SELECT count(*) FROM orchestration_steps") == (
            RUNS * STEPS_PER_RUN + 9
        )
        assert not await conn.fetchval(
            "SELECT coalesce(max(last_analyze), max(last_autoanalyze)) FROM pg_stat_user_tables "
            "WHERE relname = ANY ($1::text[])",
            sorted(_BIG_TABLES),
        )
        claimed, claim_plans = await _plans_of(
            conn, "SELECT * FROM podium_claim_steps('replica-b', 20, 60)"
        )
        assert len(claimed) == 20  # the oldest running runs: 4 runnable steps each
        third = await conn.fetchval("SELECT md5('run' || $1::text)::uuid", str(RUNS - 2))
        eager, eager_plans = await _plans_of(conn, _COMPLETE_AND_CLAIM, third)
        assert len(eager) > 1 and eager[-1]["states"] == ["running"]
        plans = claim_plans + eager_plans + await _batch_plans(conn)
        texts = _query_texts(plans)
        for statement in (
            "row_number() OVER",  # claim: the candidate runs, ranked by share
            _CLAIM_PATHS[limited],  # claim: a run's queued steps
            "AS share_key FROM unnest(p_runs)",  # the eager claim: the batch's runs' shares
        ):
            assert statement in texts, f"no plan logged for the statement with {statement!r}"
        # The candidate query walks the running runs with queued work by design.
        per_run = [p for p in plans if "PARTITION BY x.priority" not in p["Query Text"]]
        problems = _seq_scans(plans) + _whole_index_scans(per_run)
        assert not problems, "\n\n".join(problems)
    finally:
        await conn.close()


async def test_lease_renewal_probes_its_steps_without_statistics(database_url: str) -> None:
    """A replica's lease renewal (every third of a lease) with the plan its connection
    keeps from empty tables, on 100,000 steps never analysed: a primary-key probe per
    attempt it holds, no Seq Scan of the steps. Its 50 running attempts are held."""
    from podium.server.storage.queries import QUERIES

    await _fill(database_url, _NO_AUTOVACUUM)
    conn = await asyncpg.connect(database_url)
    try:
        await _explain_kept_plans(conn)
        await conn.execute("SET auto_explain.log_min_duration = -1")  # quiet while small
        renew = QUERIES["renew_held_leases"]
        for _ in range(8):  # a replica's renewals on the empty tables
            assert await conn.fetch(renew, "replica-a", 60, [], [], []) == []
        await _fill(database_url, _SETUP_UNANALYSED)
        await conn.execute("SET auto_explain.log_min_duration = 0")
        runs = [
            await conn.fetchval("SELECT md5('run' || $1::text)::uuid", str(RUNS - i))
            for i in range(RUNNING_RUNS)
        ]
        held, plans = await _plans_of(
            conn, renew, "replica-a", 60, runs, ["s1"] * len(runs), [1] * len(runs)
        )
        assert sorted(tuple(row) for row in held) == sorted((r, "s1", 1) for r in runs)
        assert "FOR UPDATE SKIP LOCKED" in _query_texts(plans)
        problems = _seq_scans(plans) + _whole_index_scans(plans)
        assert not problems, "\n\n".join(problems)
    finally:
        await conn.close()


async def test_refresh_of_a_large_fan_out_reads_each_step_a_bounded_number_of_times(
    database_url: str,
) -> None:
    """The slow path's re-count (after a skip, an approval or a resume) probes each
    dependency by key: its row reads grow with the run's steps, not with their square
    (``step_id = ANY (depends_on)`` over the run's steps read 4,000,000 rows here)."""
    width = 2_000
    conn = await asyncpg.connect(database_url)
    try:
        run_id = await conn.fetchval(
            "INSERT INTO orchestration_runs (organization_id, plan, state, max_parallel,"
            " steps_remaining) VALUES ('default', '{}', 'running', 4, $1) RETURNING id",
            width + 1,
        )
        await conn.execute(
            "INSERT INTO orchestration_steps (run_id, step_id, organization_id, position,"
            " state, depends_on, pending_dependencies, spec, conversation_id)"
            " SELECT $1::uuid, 'root', 'default', 0, 'succeeded', '{}', 0, '{}'::jsonb,"
            "        gen_random_uuid()"
            " UNION ALL"
            " SELECT $1::uuid, 'leaf' || k, 'default', k, 'pending', ARRAY['root'], 1, '{}'::jsonb,"
            "        gen_random_uuid() FROM generate_series(1, $2) k",
            run_id,
            width,
        )
        steps = ["orchestration_steps"]
        async with conn.transaction():
            before = await conn.fetchval(_ROWS_READ, steps)
            state = await conn.fetchval("SELECT podium_refresh_run($1)", run_id)
            after = await conn.fetchval(_ROWS_READ, steps)
            queued = await conn.fetchval(
                "SELECT count(*) FROM orchestration_steps WHERE run_id = $1 AND state = 'queued'",
                run_id,
            )
            events = await conn.fetch(
                "SELECT sequence, step_id FROM orchestration_events WHERE run_id = $1"
                " ORDER BY sequence",
                run_id,
            )
        assert state == "running"
        assert queued == width
        assert [e["step_id"] for e in events] == [f"leaf{k}" for k in range(1, width + 1)]
        assert [e["sequence"] for e in events] == list(range(1, width + 1))
        assert after - before < 20 * width, f"{after - before} rows read for {width} steps"
    finally:
        await conn.close()


# ------------------------------------- completions with plans made on small tables

ACTIVE_RUNS = 2_000  # 12,000 pending, 4,000 queued and 2,000 running steps
ROWS_READ_BOUND = 1_000

# Small running runs (id md5('small' || g), g up to {n}): s1 running (attempt 1, leased
# to replica-a), s2-s3 pending on s1: what a new deployment's first completions find.
_SMALL_RUNS = """
INSERT INTO orchestration_runs
    (id, organization_id, plan, state, max_parallel, steps_remaining, created_at, started_at)
SELECT md5('small' || g)::uuid, 'default', '{}', 'running', 4, 3, now(), now()
FROM generate_series(1, {n}) g;
INSERT INTO orchestration_steps
    (run_id, step_id, organization_id, position, state, agent, depends_on,
     pending_dependencies, spec, attempt, lease_owner, lease_expires_at, started_at,
     conversation_id)
SELECT md5('small' || g)::uuid, 's' || k, 'default', k,
       CASE WHEN k = 1 THEN 'running' ELSE 'pending' END, 'echo',
       CASE WHEN k = 1 THEN '{}'::text[] ELSE ARRAY['s1'] END,
       CASE WHEN k = 1 THEN 0 ELSE 1 END, '{}',
       CASE WHEN k = 1 THEN 1 ELSE 0 END, CASE WHEN k = 1 THEN 'replica-a' END,
       CASE WHEN k = 1 THEN now() + interval '1 hour' END, now(),
       md5('small conversation' || g || '.' || k)::uuid
FROM generate_series(1, {n}) g, generate_series(1, 3) k;
INSERT INTO step_attempts (run_id, step_id, attempt, organization_id, agent)
SELECT run_id, step_id, 1, organization_id, agent FROM orchestration_steps
 WHERE run_id IN (SELECT md5('small' || g)::uuid FROM generate_series(1, {n}) g)
   AND attempt > 0;
"""


# The small runs' first steps queued instead of running, for a claim to take.
_SMALL_RUNS_QUEUED = """
UPDATE orchestration_steps
   SET state = 'queued', attempt = 0, lease_owner = NULL, lease_expires_at = NULL,
       queued_at = now()
 WHERE step_id = 's1' AND run_id IN (SELECT md5('small' || g)::uuid FROM generate_series(1, 3) g);
DELETE FROM step_attempts
 WHERE run_id IN (SELECT md5('small' || g)::uuid FROM generate_series(1, 3) g);
"""


@pytest.mark.parametrize("small", [3, 150], ids=["one_page", "a_few_pages"])
async def test_completions_keep_bounded_plans_made_on_small_tables(
    database_url: str, small: int
) -> None:
    """A replica's first completions (one run, then a batch of two with the set-based
    path) make their plans while the tables hold ``small`` small runs (a page of each
    table; a few pages, where a hash join over a sequential scan looks cheaper than one
    index probe per row, as a benchmark's first rounds or a pooled connection opened
    under load find them); the history then grows
    to 100,000 steps, 2,000 runs of them running, never analysed (written by another
    connection, so this one keeps its plans). The same completions with their eager
    claims, and the webhook deliveries of their events (a target is configured), then
    read the rows of their own runs, not every run's or every pending step's: no Seq
    Scan of a big table, no scan of a whole index of one, and a bounded number of rows
    read."""
    await _fill(database_url, _NO_AUTOVACUUM)
    conn = await asyncpg.connect(database_url)
    try:
        await _explain_kept_plans(conn)
        await conn.execute("SET auto_explain.log_min_duration = -1")  # quiet while small
        await conn.execute(_SMALL_RUNS.replace("{n}", str(small)))
        # A webhook target: each event insert then writes its deliveries, in statements
        # planned here too (podium_enqueue_webhooks, the events' trigger).
        await conn.execute(
            "INSERT INTO webhook_targets (organization_id, url)"
            " VALUES ('default', 'https://hooks.example/podium')"
        )
        first = [
            await conn.fetchval("SELECT md5('small' || $1::text)::uuid", str(g)) for g in (1, 2, 3)
        ]
        batch = await conn.fetch(_COMPLETE_BATCH_AND_CLAIM, first[0], first[1])
        assert batch[-1]["states"] == ["running", "running"] and len(batch) == 5
        single = await conn.fetch(_COMPLETE_AND_CLAIM, first[2])
        assert single[-1]["states"] == ["running"] and len(single) == 3

        await _fill(database_url, _unanalysed(_history(ACTIVE_RUNS)))
        await conn.execute("SET auto_explain.log_min_duration = 0")
        runs = [
            await conn.fetchval("SELECT md5('run' || $1::text)::uuid", str(RUNS - k))
            for k in range(3)
        ]
        reads: dict[str, int] = {}
        rows, reads["batch"], batch_plans = await _reads_and_plans(
            conn, _COMPLETE_BATCH_AND_CLAIM, runs[0], runs[1]
        )
        assert rows[-1]["states"] == ["running", "running"]
        assert len(rows) > 1  # steps claimed
        rows, reads["single"], single_plans = await _reads_and_plans(
            conn, _COMPLETE_AND_CLAIM, runs[2]
        )
        assert rows[-1]["states"] == ["running"] and len(rows) > 1
        plans = batch_plans + single_plans
        texts = _query_texts(plans)
        for statement in (
            *_BATCH_STATEMENTS,
            "UPDATE orchestration_steps s SET state = 'running'",
            "WHERE s.run_id = o.run_id AND s.step_id = o.step_id",  # the wake's probes
            "INSERT INTO webhook_deliveries",  # the events' trigger
        ):
            assert statement in texts, f"no plan logged for the statement with {statement!r}"
        problems = _seq_scans(plans) + _whole_index_scans(plans)
        assert not problems, "\n\n".join(problems)
        assert all(n < ROWS_READ_BOUND for n in reads.values()), reads
    finally:
        await conn.close()


# The statements a replica sends for every run and step, by the function they call.
_HOT_ENTRY_POINTS = (
    "podium_complete_steps",  # a completion batch and its eager claim
    "podium_create_run",  # StartRun
    "podium_create_run_and_claim",  # StartRun with its eager claim
    "podium_claim_steps",  # the claim loop
)


async def test_the_hot_path_runs_on_generic_plans(database_url: str) -> None:
    """The hot path's functions run with ``plan_cache_mode = force_generic_plan``, so
    the plans the tests above check are the ones the server runs. With the default,
    each pooled connection plans a PL/pgSQL statement again on each of its first five
    executions, and for good when the custom plans look cheaper than the generic one,
    which statements over arrays do: StartRun's claim of its first step took 2.6 ms
    instead of 1.0 on a replica whose ten connections each served a few StartRuns."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT proname, proconfig FROM pg_proc WHERE proname = ANY($1::text[])",
            list(_HOT_ENTRY_POINTS),
        )
    finally:
        await conn.close()
    settings = {row["proname"]: row["proconfig"] or [] for row in rows}
    assert sorted(settings) == sorted(_HOT_ENTRY_POINTS)
    not_generic = [
        name
        for name, config in settings.items()
        if "plan_cache_mode=force_generic_plan" not in config
    ]
    assert not not_generic, f"functions planned per call on the hot path: {not_generic}"
