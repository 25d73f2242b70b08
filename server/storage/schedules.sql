-- Schedules and delayed run starts (see server/storage/functions/85_schedules.sql).

-- insert_schedule --
-- $1 org, $2 definition_name, $3 definition_version, $4 cron, $5 time_zone,
-- $6 interval_seconds, $7 jitter_seconds, $8 overlap_policy, $9 catch_up_policy,
-- $10 max_catch_up_runs, $11 input, $12 labels, $13 next_tick_at, $14 next_fire_at,
-- $15 id
INSERT INTO orchestration_schedules
    (id, organization_id, definition_name, definition_version, cron, time_zone,
     interval_seconds, jitter_seconds, overlap_policy, catch_up_policy,
     max_catch_up_runs, input, labels, next_tick_at, next_fire_at)
VALUES ($15, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
RETURNING *

-- get_schedule --
-- $1 id, $2 org
SELECT * FROM orchestration_schedules WHERE id = $1 AND organization_id = $2

-- list_schedules --
-- Oldest first, keyset on (created_at, id).
-- $1 org, $2 definition_name (NULL = any), $3 after created_at, $4 after id, $5 limit
SELECT * FROM orchestration_schedules
WHERE organization_id = $1
  AND ($2::text IS NULL OR definition_name = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
ORDER BY created_at, id
LIMIT $5

-- lock_schedule --
-- A schedule row for a change (pause, resume) with the database's clock.
-- $1 id, $2 org
SELECT s.*, now() AS db_now FROM orchestration_schedules s
WHERE id = $1 AND organization_id = $2
FOR UPDATE

-- set_schedule_paused --
-- $1 id, $2 paused, $3 next_tick_at, $4 next_fire_at
UPDATE orchestration_schedules
SET paused = $2, next_tick_at = $3, next_fire_at = $4, buffered_tick_at = NULL,
    updated_at = now()
WHERE id = $1
RETURNING *

-- delete_schedule --
-- $1 id, $2 org
DELETE FROM orchestration_schedules WHERE id = $1 AND organization_id = $2 RETURNING id

-- due_schedules --
-- Schedules whose next tick is due by the database's clock, or holding a buffered tick
-- (fired once the previous run ends). Not locked: each is claimed by claim_schedule.
-- $1 limit
SELECT id FROM orchestration_schedules
WHERE NOT paused AND (next_fire_at <= now() OR buffered_tick_at IS NOT NULL)
ORDER BY next_fire_at
LIMIT $1

-- claim_schedule --
-- Lock one schedule for its tick; another replica holding it makes this return no row
-- (it is claiming the same tick). With the database's now() and the state of the run
-- the schedule started last (NULL when there is none or it was deleted).
-- $1 id
SELECT s.*, now() AS db_now, r.state AS last_run_state
FROM orchestration_schedules s
LEFT JOIN orchestration_runs r ON r.id = s.last_run_id
WHERE s.id = $1 AND NOT s.paused
FOR UPDATE OF s SKIP LOCKED

-- advance_schedule --
-- The claimed tick's effect: the next tick, the buffered tick, the last run.
-- $1 id, $2 next_tick_at, $3 next_fire_at, $4 buffered_tick_at, $5 last_fire_at,
-- $6 last_run_id, $7 runs started now
UPDATE orchestration_schedules
SET next_tick_at = $2, next_fire_at = $3, buffered_tick_at = $4,
    last_fire_at = coalesce($5, last_fire_at), last_run_id = coalesce($6, last_run_id),
    runs_started = runs_started + $7, updated_at = now()
WHERE id = $1

-- next_schedule_wake --
-- Seconds until the earliest due time of an unpaused schedule or a delayed start (NULL:
-- none), and whether a buffered tick waits (polled).
SELECT extract(epoch FROM least(
           (SELECT min(next_fire_at) FROM orchestration_schedules WHERE NOT paused),
           (SELECT min(start_at) FROM orchestration_delayed_starts)) - now())::float8
           AS seconds,
       EXISTS (SELECT 1 FROM orchestration_schedules
               WHERE buffered_tick_at IS NOT NULL AND NOT paused) AS buffered

-- start_delayed_runs --
-- $1 limit
SELECT podium_start_delayed_runs($1) AS run_id

-- delay_run --
-- $1 run_id, $2 start_at
SELECT podium_delay_run($1, $2)

-- notify_schedules --
-- Wake every replica's schedule loop (on commit): a schedule was created or resumed.
SELECT pg_notify('podium_schedules', '')
