-- Concurrency keys (max_runs_per_key): at most max_runs_per_key runs sharing a key value
-- (orchestration_runs.concurrency_key, computed at StartRun) execute at once, across
-- every replica. A run is admitted when it starts (podium_start_run) if its key has
-- room; otherwise it stays running with key_admitted false and its steps pending (the
-- claim never sees it: it has no queued step), and run.waiting_for_key is emitted. When
-- an admitted run ends, the trigger at the end of this file admits the next waiting runs
-- of its key (priority first, then start order) in the same transaction and queues
-- their first steps. Both take a transaction advisory lock per (organization, key), so
-- the count of admitted runs they read is exact across replicas. Lock order: the ending
-- run (held by the caller), the key lock, then the waiting runs in admission order
-- (nothing else locks a waiting run and then a key: it has no running step).

-- The advisory lock of one key value of an organization.
CREATE OR REPLACE FUNCTION podium_key_lock(p_org text, p_key text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(1886350958, hashtext(p_org || chr(31) || p_key));
$$;

-- Whether run p_run (just started, locked by the caller) may execute now under its key:
-- fewer than p_max other admitted runs of the key are unfinished. When not, it is
-- marked waiting (key_admitted false) and run.waiting_for_key is emitted.
CREATE OR REPLACE FUNCTION podium_key_admits(
    p_run uuid, p_org text, p_key text, p_max integer
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_running integer;
BEGIN
    PERFORM podium_key_lock(p_org, p_key);
    SELECT count(*) INTO v_running
      FROM orchestration_runs r
     WHERE r.organization_id = p_org AND r.concurrency_key = p_key AND r.key_admitted
       AND r.state IN ('running', 'paused') AND r.id <> p_run;
    IF v_running < p_max AND NOT EXISTS (
           SELECT 1 FROM orchestration_runs w
            WHERE w.organization_id = p_org AND w.concurrency_key = p_key
              AND NOT w.key_admitted AND w.state = 'running' AND w.id <> p_run) THEN
        RETURN true;
    END IF;
    UPDATE orchestration_runs SET key_admitted = false WHERE id = p_run;
    PERFORM podium_emit_event(p_run, 'run.waiting_for_key', NULL, NULL, NULL,
                              jsonb_build_object('key', p_key, 'running', v_running,
                                                 'max_runs_per_key', p_max));
    RETURN false;
END
$$;

-- Admit the waiting runs of a key value while it has room, each under its own
-- max_runs_per_key, in order (priority, then created_at): key_admitted, run.admitted,
-- its first steps queued. Returns how many were admitted.
CREATE OR REPLACE FUNCTION podium_key_admit_waiting(p_org text, p_key text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_running integer;
    v_next record;
    v_count integer := 0;
BEGIN
    PERFORM podium_key_lock(p_org, p_key);
    SELECT count(*) INTO v_running
      FROM orchestration_runs r
     WHERE r.organization_id = p_org AND r.concurrency_key = p_key AND r.key_admitted
       AND r.state IN ('running', 'paused');
    LOOP
        SELECT w.id, w.max_runs_per_key INTO v_next
          FROM orchestration_runs w
         WHERE w.organization_id = p_org AND w.concurrency_key = p_key
           AND NOT w.key_admitted AND w.state = 'running'
         ORDER BY w.priority DESC, w.created_at, w.id
         LIMIT 1
           FOR UPDATE;
        EXIT WHEN NOT FOUND OR v_running >= v_next.max_runs_per_key;
        UPDATE orchestration_runs SET key_admitted = true, updated_at = now()
         WHERE id = v_next.id;
        PERFORM podium_emit_event(v_next.id, 'run.admitted', NULL, NULL, NULL,
                                  jsonb_build_object('key', p_key));
        PERFORM podium_queue_root_steps(v_next.id);
        v_running := v_running + 1;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;

-- Trigger: an admitted keyed run that ended (or whose key limit no longer holds it)
-- lets the next waiting runs of its key in.
CREATE OR REPLACE FUNCTION podium_key_run_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM podium_key_admit_waiting(NEW.organization_id, NEW.concurrency_key);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER orchestration_runs_key_ended
    AFTER UPDATE OF state ON orchestration_runs
    FOR EACH ROW
    WHEN (NEW.concurrency_key IS NOT NULL AND NEW.max_runs_per_key > 0 AND OLD.key_admitted
          AND OLD.state IN ('running', 'paused')
          AND NEW.state IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION podium_key_run_ended();
