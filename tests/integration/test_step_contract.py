"""The step contract (``storage/steps.py``) against the SQL functions of a migrated
database: the outcomes ``podium_complete_step`` handles are exactly :class:`Outcome`, and
every ``spec`` key the functions read or write is one :class:`StepSpec` knows. Adding an
outcome or a key on one side only fails here."""

from __future__ import annotations

import re

from podium.server.storage.database import Database
from podium.server.storage.steps import (
    Answer,
    CachePolicy,
    CheckpointPolicy,
    FailurePolicy,
    OrchestrationTarget,
    Outcome,
    Rollback,
    SleepSpec,
    StepLoop,
    StepSpec,
    WaitForEventSpec,
)

# The functions that take an attempt's outcome (podium_record_outcome, behind
# podium_complete_step and podium_complete_steps, hands the parking outcomes to
# podium_park_step).
OUTCOME_FUNCTIONS = ("podium_record_outcome", "podium_park_step")


async def _sources(db: Database, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """The PL/pgSQL source of the podium_* functions (or of ``names``), comments removed."""
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT p.proname, p.prosrc FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = current_schema() AND p.proname LIKE 'podium\\_%'"
        )
    sources = {r["proname"]: re.sub(r"--[^\n]*", "", r["prosrc"]) for r in rows}
    if names is None:
        return sources
    missing = set(names) - set(sources)
    assert not missing, f"functions not found: {sorted(missing)}"
    return {name: sources[name] for name in names}


def _outcome_literals(source: str) -> set[str]:
    """The literals ``p_outcome`` is compared with: ``p_outcome = 'x'``,
    ``p_outcome [NOT] IN ('x', ...)`` and ``CASE p_outcome WHEN 'x' ...``."""
    found = set(re.findall(r"p_outcome\s*(?:=|<>|!=)\s*'(\w+)'", source))
    for listed in re.findall(r"p_outcome\s+(?:NOT\s+)?IN\s*\(([^)]*)\)", source, re.I):
        found.update(re.findall(r"'(\w+)'", listed))
    for body in re.findall(r"CASE\s+p_outcome\s+(.*?)\bEND\b", source, re.I | re.S):
        found.update(re.findall(r"WHEN\s+'(\w+)'", body, re.I))
    return found


async def test_the_outcome_enum_is_what_the_sql_functions_handle(db: Database) -> None:
    sources = await _sources(db, OUTCOME_FUNCTIONS)
    handled = set().union(*(_outcome_literals(s) for s in sources.values()))
    assert handled == {o.value for o in Outcome}


def _spec_keys(source: str) -> set[str]:
    """Top-level ``spec`` keys a function reads (``spec -> 'k'``, ``spec ->> 'k'``),
    removes (``spec - 'k'``) or writes (``jsonb_set(spec, '{k}', ...)``,
    ``spec || jsonb_build_object('k', ...)``)."""
    keys = set(re.findall(r"\bspec\s*(?:->>|->|-)\s*'(\w+)'", source))
    keys.update(re.findall(r"jsonb_set\(\s*spec\s*,\s*'\{(\w+)", source))
    keys.update(re.findall(r"spec\s*\|\|\s*jsonb_build_object\(\s*'(\w+)'", source))
    keys.update(re.findall(r"jsonb_build_object\(\s*'(approved_input)'", source))
    return keys


async def test_every_spec_key_the_sql_uses_is_in_the_step_spec(db: Database) -> None:
    full = StepSpec(
        id="s",
        agent="a",
        skill="k",
        orchestration=OrchestrationTarget("child", 1),
        depends_on=("x",),
        input={},
        checkpoint=CheckpointPolicy(),
        on_failure=FailurePolicy(),
        timeout_seconds=1.0,
        caching=CachePolicy(1.0, (), {"plan_sha256": "0"}, {"agent": "a"}),
        description="d",
        rollback=Rollback("h"),
        bypass_cache=True,
        approved_input={},
        checkpoint_passed=True,
        answer=Answer(1, "t", {}),
        sleep=SleepSpec(seconds=1.0),
        wait_for_event=WaitForEventSpec("e"),
        wake_at="2026-01-01T00:00:00Z",
        received_event={},
        when="true",
        run_metadata={},
        loop=StepLoop("true", 2),
        loop_iteration=1,
        loop_output={},
        routing={},
        refused_agents=("a",),
    )
    known = set(full.to_json())
    used = set().union(*(_spec_keys(s) for s in (await _sources(db)).values()))
    # The functions that amend the spec must be seen, or the regexes went stale.
    assert {"checkpoint_passed", "approved_input", "answer", "on_failure"} <= used
    assert used <= known, f"spec keys the SQL uses that StepSpec does not: {used - known}"
