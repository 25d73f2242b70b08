-- 0004_schedules: schedules (cron or interval) and delayed run starts.
--
-- A schedule's next tick is claimed by the replica that locks its row (FOR UPDATE SKIP
-- LOCKED) while next_fire_at <= now(): it inserts the tick's run(s) and moves
-- next_tick_at / next_fire_at forward in the same transaction. A run started by a tick
-- has request_id 'schedule:<id>:<tick>', so a replayed tick finds the existing run.
CREATE TABLE orchestration_schedules (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id     text NOT NULL REFERENCES organizations (id),
    definition_name     text NOT NULL,
    definition_version  integer NOT NULL DEFAULT 0 CHECK (definition_version >= 0),
    cron                text,
    time_zone           text NOT NULL DEFAULT 'UTC',
    interval_seconds    double precision CHECK (interval_seconds >= 1),
    jitter_seconds      double precision NOT NULL DEFAULT 0 CHECK (jitter_seconds >= 0),
    overlap_policy      text NOT NULL CHECK (overlap_policy IN ('skip', 'buffer_one', 'allow')),
    catch_up_policy     text NOT NULL CHECK (catch_up_policy IN ('skip', 'run_once', 'run_all')),
    max_catch_up_runs   integer NOT NULL CHECK (max_catch_up_runs > 0),
    input               jsonb NOT NULL DEFAULT '{}',
    labels              jsonb NOT NULL DEFAULT '{}',
    paused              boolean NOT NULL DEFAULT false,
    -- The nominal time of the next tick, and when it fires (the tick plus its jitter).
    next_tick_at        timestamptz NOT NULL,
    next_fire_at        timestamptz NOT NULL,
    -- OVERLAP_POLICY_BUFFER_ONE: a tick waiting for the previous run to finish.
    buffered_tick_at    timestamptz,
    last_fire_at        timestamptz,
    last_run_id         uuid REFERENCES orchestration_runs (id) ON DELETE SET NULL,
    runs_started        bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orchestration_schedules_spec_check CHECK ((cron IS NULL) <> (interval_seconds IS NULL))
);
COMMENT ON TABLE orchestration_schedules IS
    'Schedules starting runs of a definition on a cron expression or an interval.';

-- The schedule loops' query: the unpaused schedules, soonest first.
CREATE INDEX orchestration_schedules_due_idx
    ON orchestration_schedules (next_fire_at) WHERE NOT paused;
CREATE INDEX orchestration_schedules_buffered_idx
    ON orchestration_schedules (buffered_tick_at) WHERE buffered_tick_at IS NOT NULL;
CREATE INDEX orchestration_schedules_org_idx
    ON orchestration_schedules (organization_id, created_at, id);
-- Deleting runs (retention) sets last_run_id to NULL: find the rows by index.
CREATE INDEX orchestration_schedules_last_run_idx
    ON orchestration_schedules (last_run_id) WHERE last_run_id IS NOT NULL;

-- StartRun.start_time: a run created now (CREATED) that a replica starts at start_at.
-- The row is deleted when the run starts (or when it is deleted).
CREATE TABLE orchestration_delayed_starts (
    run_id    uuid PRIMARY KEY REFERENCES orchestration_runs (id) ON DELETE CASCADE,
    start_at  timestamptz NOT NULL
);
CREATE INDEX orchestration_delayed_starts_due_idx ON orchestration_delayed_starts (start_at);
