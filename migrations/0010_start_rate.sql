-- 0010_start_rate: the per-organization StartRun rate limit (PODIUM_START_RUN_RATE).
--
-- One row per organization and fixed window; StartRun counts itself into the current
-- window with one upsert (exact across replicas) and deletes the organization's older
-- windows in the same statement, so the table holds at most one row per organization.
CREATE TABLE start_run_windows (
    organization_id  text NOT NULL REFERENCES organizations (id),
    window_start     timestamptz NOT NULL,
    started          integer NOT NULL,
    PRIMARY KEY (organization_id, window_start)
);
COMMENT ON TABLE start_run_windows IS
    'StartRun calls per organization in the current fixed window of '
    'PODIUM_START_RUN_RATE (older windows are deleted by the next call).';
