-- 0019_active_steps: each run's active steps (queued, running, waiting for a retry),
-- by run.
-- podium: expand
--
-- A claim asks, for each run it visits, how many of its steps are running, which are
-- queued and whether a retry is due. With only the primary key's run_id prefix, each
-- question read every step of the run (W3's run of 1,001 steps, several times per
-- claim); and a plan a connection made while the table was small combined the key with
-- a full scan of orchestration_steps_queued_idx or _lease_idx, i.e. every queued or
-- running step of every run, and kept that plan as the table grew
-- (tests/integration/test_query_plans.py). With both columns in one index each
-- question reads the run's steps in that state only. A step's updates are not HOT
-- already (state is in the other partial indexes' predicates): the index costs an entry
-- when a step is queued and one when it starts, and nothing once it has ended.
CREATE INDEX orchestration_steps_active_idx
    ON orchestration_steps (run_id, state)
    WHERE state IN ('queued', 'running', 'waiting_retry');
