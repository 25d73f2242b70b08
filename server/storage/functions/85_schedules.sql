-- Schedules and delayed run starts (StartRun.start_time).
--
-- A schedule's ticks are claimed by the Python schedule loop (engine/schedule_loop.py):
-- it locks the schedule row (FOR UPDATE SKIP LOCKED, so one replica claims a tick),
-- inserts the runs of the tick with podium_create_run and moves the schedule forward
-- in the same transaction (queries in server/storage/schedules.sql). The cron
-- arithmetic stays in Python (cronsim); what is here needs no cron.
-- Lock order: a delayed-start row, then its run (podium_start_run locks the run row).

-- Register the delayed start of a created run (same transaction as its creation) and
-- wake the schedule loops, which start it at p_start_at.
CREATE OR REPLACE FUNCTION podium_delay_run(p_run uuid, p_start_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orchestration_delayed_starts (run_id, start_at) VALUES (p_run, p_start_at)
    ON CONFLICT (run_id) DO NOTHING;
    PERFORM pg_notify('podium_schedules', '');
END
$$;

-- Start up to p_limit created runs whose delayed start is due (by the database's
-- clock). Each delayed-start row is deleted as it is taken, so a run is started once
-- whichever replica gets there; rows another replica holds are skipped. A run that is
-- no longer CREATED (cancelled, or started early by ContinueRun) is just forgotten.
-- Returns the ids of the runs started.
CREATE OR REPLACE FUNCTION podium_start_delayed_runs(p_limit integer) RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
BEGIN
    FOR v_run IN
        DELETE FROM orchestration_delayed_starts d
         WHERE d.run_id IN (SELECT x.run_id FROM orchestration_delayed_starts x
                             WHERE x.start_at <= now()
                             ORDER BY x.start_at
                             LIMIT p_limit
                               FOR UPDATE SKIP LOCKED)
        RETURNING d.run_id
    LOOP
        IF podium_start_run(v_run) THEN
            RETURN NEXT v_run;
        END IF;
    END LOOP;
END
$$;
