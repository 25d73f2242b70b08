-- 0007_deploy: retention of whole finished runs, and the hot tables laid out for HOT
-- updates.
--
-- Run retention (PODIUM_RUN_RETENTION_DAYS, server/events/retention.py) deletes
-- finished top-level runs oldest first; their child runs, steps, attempts, events,
-- conversations, deliverables and the rest go with them through ON DELETE CASCADE.
-- orchestration_runs_ended_idx is the walk of that pass, in (ended_at, id) order over
-- the top-level runs that have ended only. The two other indexes serve the cascades:
-- without them each deleted run would read the whole of step_cache_flights, and the
-- ON DELETE SET NULL of forked_from_run_id the whole of orchestration_runs.
CREATE INDEX orchestration_runs_ended_idx
    ON orchestration_runs (ended_at, id)
    WHERE parent_run_id IS NULL AND ended_at IS NOT NULL;
CREATE INDEX orchestration_runs_forked_from_idx
    ON orchestration_runs (forked_from_run_id) WHERE forked_from_run_id IS NOT NULL;
CREATE INDEX step_cache_flights_run_idx ON step_cache_flights (run_id);

-- A run row is updated with every event of the run (last_event_sequence, updated_at).
-- Leaving a fifth of each page free lets an update that changes no indexed column
-- write the new row version on the same page (a HOT update: no index entries, pruned
-- without VACUUM): under a steady load of 5-step runs the HOT share of run updates
-- rose by about 0.09 (medians 0.525 -> 0.614; figures in docs/operations.md).
-- fillfactor applies to pages written from now on; existing pages keep their layout
-- until rewritten.
-- Steps get no fillfactor: every step update changes its state, a column of the
-- partial indexes' predicates, so none can be HOT (0 in every measured load),
-- and free space would only make the largest table larger.
-- The autovacuum settings make the tables that are updated and (with run retention)
-- deleted in bulk vacuumed and analyzed after 5 % of their rows changed rather than
-- the default 20 % / 10 %.
ALTER TABLE orchestration_runs SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
ALTER TABLE orchestration_steps SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
ALTER TABLE orchestration_events SET (autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE step_attempts SET (autovacuum_vacuum_scale_factor = 0.05);
