-- 0015_perf: a run's pending steps, found without reading its other steps.
-- podium: expand
--
-- A success promotes the dependents whose last dependency it was: the pending steps of
-- its run that depend on it (podium_record_outcome, 50_complete.sql). Without this index
-- that statement read every step of the run (the primary key's run_id prefix), so a
-- run of N parallel steps and a join paid N x N for its completions. A step is pending
-- only until its dependencies are done, so the index stays small.
CREATE INDEX orchestration_steps_pending_idx
    ON orchestration_steps (run_id) WHERE state = 'pending';
