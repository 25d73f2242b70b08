-- 0002_running_runs_index: the running runs, oldest first.
--
-- podium_claim_steps starts from the running runs that have queued or due steps, in
-- (created_at, id) order. Without this index the planner reads every run (a Seq Scan
-- hashed against the queued steps) until the table is large enough for primary key
-- probes, so each claim cost grows with the history of finished runs; with it, each
-- claim reads only the running runs (tests/integration/test_query_plans.py).
CREATE INDEX orchestration_runs_running_idx
    ON orchestration_runs (created_at, id) WHERE state = 'running';
