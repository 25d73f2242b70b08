-- 0018_run_children: a run's events, attempts and conversations go with it by a
-- trigger, not by foreign keys checked on every insert.
-- podium: expand
--
-- A chain step inserts three or four orchestration_events rows, a step_attempts row
-- and a conversations row, and each insert checked its foreign key (a trigger call and
-- a row lock on the run's or the step's row): five of the seven checks a step paid,
-- about a tenth of PostgreSQL's CPU per step. Only the engine's functions write these
-- rows, for a run whose row they hold locked, so the checks never fail; what the keys
-- still gave is ON DELETE CASCADE when a run is deleted (retention, and a parent's
-- child runs, which cascade from it). A statement trigger on orchestration_runs now
-- deletes them instead (orchestration_runs_delete_children, functions/30_runs.sql,
-- applied by the same migrate call right after this file), so every release's
-- retention, older replicas' included, still deletes a run whole.
ALTER TABLE orchestration_events DROP CONSTRAINT IF EXISTS orchestration_events_run_id_fkey;
ALTER TABLE step_attempts DROP CONSTRAINT IF EXISTS step_attempts_run_id_step_id_fkey;
ALTER TABLE conversations DROP CONSTRAINT IF EXISTS conversations_run_id_fkey;
