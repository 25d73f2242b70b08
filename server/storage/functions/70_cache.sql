-- The step-output cache's lookups, stores and single flight.
--
-- step_cache holds successful outputs by (organization, cache key); the key is
-- computed by the replica (server/engine/cache.py: SHA-256 of a canonical JSON
-- document). step_cache_flights records, per key, the one step attempt that is calling
-- the agent for it right now, so identical steps on any replica wait for its output
-- instead of calling the agent too. A flight is alive while its attempt is running:
-- no lease of its own, the step's lease covers it (a dead replica's step leaves
-- 'running' when its lease expires, and the flight is taken over).

-- Look up a cache key for a running step attempt, in one round trip. Returns one row:
--   'hit'   the entry exists and has not expired: the step is marked cached (fenced
--           like a completion) and step.cached is emitted. output is NULL when
--           p_known_created equals the entry's created_at (the replica's in-process
--           copy is current), else the stored output.
--   'lead'  no entry, and this attempt now owns the key's flight: call the agent, then
--           podium_cache_release.
--   'wait'  no entry, and another running attempt owns the flight: wait for
--           NOTIFY podium_cache (payload: the key) or a timer, then look up again.
--   'stale' the entry exists but this attempt is no longer running (fenced).
-- An expired entry is ignored and deleted. Only a hit writes what others must never see
-- lost (its event's sequence number): the other answers commit without waiting for the
-- WAL flush (a lost flight is taken over, like a dead one; a later synchronous commit
-- flushes it anyway).
CREATE OR REPLACE FUNCTION podium_cache_lookup(
    p_org text, p_key text, p_run uuid, p_step text, p_attempt integer,
    p_known_created timestamptz
) RETURNS TABLE (
    status text, output jsonb, source_run_id uuid, created_at timestamptz,
    expires_at timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
    v_entry record;
    v_found boolean;
BEGIN
    SELECT c.output, c.source_run_id, c.created_at, c.expires_at INTO v_entry
      FROM step_cache c
     WHERE c.organization_id = p_org AND c.cache_key = p_key;
    v_found := FOUND;
    IF v_found AND v_entry.expires_at <= now() THEN
        DELETE FROM step_cache c
         WHERE c.organization_id = p_org AND c.cache_key = p_key AND c.expires_at <= now();
        v_found := false;
    END IF;
    IF NOT v_found THEN
        -- Take the flight when nobody holds it, or when its attempt no longer runs
        -- (finished without an output, cancelled, or its replica died).
        INSERT INTO step_cache_flights AS f (organization_id, cache_key, run_id, step_id, attempt)
        VALUES (p_org, p_key, p_run, p_step, p_attempt)
        ON CONFLICT (organization_id, cache_key) DO UPDATE
           SET run_id = excluded.run_id, step_id = excluded.step_id,
               attempt = excluded.attempt, started_at = now()
         WHERE (f.run_id = excluded.run_id AND f.step_id = excluded.step_id)
            OR NOT EXISTS (SELECT 1 FROM orchestration_steps s
                            WHERE s.run_id = f.run_id AND s.step_id = f.step_id
                              AND s.attempt = f.attempt AND s.state = 'running');
        IF NOT FOUND THEN
            PERFORM set_config('synchronous_commit', 'off', true);
            RETURN QUERY SELECT 'wait'::text, NULL::jsonb, NULL::uuid, NULL::timestamptz,
                                NULL::timestamptz;
            RETURN;
        END IF;
        -- A leader may have stored the output and left the flight between the first
        -- read and the insert: read again (a new snapshot) before calling the agent.
        SELECT c.output, c.source_run_id, c.created_at, c.expires_at INTO v_entry
          FROM step_cache c
         WHERE c.organization_id = p_org AND c.cache_key = p_key
           AND (c.expires_at IS NULL OR c.expires_at > now());
        IF NOT FOUND THEN
            -- An earlier attempt of this step may have been marked cached before its
            -- replica died: this attempt calls the agent, so the flag goes.
            UPDATE orchestration_steps s
               SET cached = false, cache_source_run_id = NULL
             WHERE s.run_id = p_run AND s.step_id = p_step AND s.cached;
            PERFORM set_config('synchronous_commit', 'off', true);
            RETURN QUERY SELECT 'lead'::text, NULL::jsonb, NULL::uuid, NULL::timestamptz,
                                NULL::timestamptz;
            RETURN;
        END IF;
        DELETE FROM step_cache_flights f
         WHERE f.organization_id = p_org AND f.cache_key = p_key AND f.run_id = p_run
           AND f.step_id = p_step AND f.attempt = p_attempt;
    END IF;
    -- A hit: mark the step (run row first: the lock order of every transition).
    PERFORM 1 FROM orchestration_runs r WHERE r.id = p_run FOR UPDATE;
    UPDATE orchestration_steps s
       SET cached = true, cache_source_run_id = v_entry.source_run_id
     WHERE s.run_id = p_run AND s.step_id = p_step AND s.attempt = p_attempt
       AND s.state = 'running';
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'stale'::text, NULL::jsonb, NULL::uuid, NULL::timestamptz,
                            NULL::timestamptz;
        RETURN;
    END IF;
    -- The usage the hit saved: that of the attempt that computed the entry (its last
    -- attempt; none when its run was deleted). The hit itself reports no usage.
    WITH saved AS (
        UPDATE step_attempts a
           SET cached = true,
               saved_input_tokens = coalesce(src.input_tokens, 0),
               saved_output_tokens = coalesce(src.output_tokens, 0),
               saved_cost_usd = coalesce(src.cost_usd, 0)
          FROM (SELECT NULL::integer AS n) one
          LEFT JOIN LATERAL (
               SELECT x.input_tokens, x.output_tokens, x.cost_usd
                 FROM step_cache c
                 JOIN step_attempts x ON x.run_id = c.source_run_id AND x.step_id = c.step_id
                WHERE c.organization_id = p_org AND c.cache_key = p_key
                ORDER BY x.attempt DESC LIMIT 1) src ON true
         WHERE a.run_id = p_run AND a.step_id = p_step AND a.attempt = p_attempt
        RETURNING a.saved_input_tokens, a.saved_output_tokens, a.saved_cost_usd
    )
    UPDATE orchestration_runs r
       SET saved_input_tokens = r.saved_input_tokens + saved.saved_input_tokens,
           saved_output_tokens = r.saved_output_tokens + saved.saved_output_tokens,
           saved_cost_usd = r.saved_cost_usd + saved.saved_cost_usd
      FROM saved
     WHERE r.id = p_run;
    PERFORM podium_emit_event(
        p_run, 'step.cached', p_step, p_attempt, 'running',
        jsonb_build_object('source_run_id', v_entry.source_run_id,
                           'cache_key', p_key,
                           'cached_at', v_entry.created_at,
                           'expires_at', v_entry.expires_at));
    RETURN QUERY
    SELECT 'hit'::text,
           CASE WHEN v_entry.created_at = p_known_created THEN NULL ELSE v_entry.output END,
           v_entry.source_run_id, v_entry.created_at, v_entry.expires_at;
END
$$;

-- The leader of a flight is done: store its output (p_output NULL when the attempt did
-- not succeed: nothing is stored), leave the flight and wake the waiters. Each store
-- also deletes up to 16 expired entries, so expired rows never accumulate faster than
-- they are written. p_ttl_seconds NULL or 0: the entry does not expire. Returns the
-- stored entry's created_at (its version), NULL when nothing was stored. Commits without
-- waiting for the WAL flush: a lost entry is only a later miss, and a hit on it commits
-- synchronously, which flushes it first.
CREATE OR REPLACE FUNCTION podium_cache_release(
    p_org text, p_key text, p_run uuid, p_step text, p_attempt integer, p_output jsonb,
    p_definition_name text, p_definition_version integer, p_ttl_seconds double precision
) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_created timestamptz;
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF p_output IS NOT NULL THEN
        DELETE FROM step_cache c
         USING (SELECT e.organization_id, e.cache_key FROM step_cache e
                 WHERE e.expires_at < now()
                 ORDER BY e.expires_at
                 LIMIT 16
                   FOR UPDATE SKIP LOCKED) x
         WHERE c.organization_id = x.organization_id AND c.cache_key = x.cache_key;
        INSERT INTO step_cache AS c
            (organization_id, cache_key, definition_name, definition_version, step_id,
             output, source_run_id, created_at, expires_at)
        VALUES (p_org, p_key, p_definition_name, p_definition_version, p_step, p_output,
                p_run, v_now,
                CASE WHEN p_ttl_seconds > 0 THEN v_now + make_interval(secs => p_ttl_seconds) END)
        ON CONFLICT (organization_id, cache_key) DO UPDATE
           SET definition_name = excluded.definition_name,
               definition_version = excluded.definition_version,
               step_id = excluded.step_id, output = excluded.output,
               source_run_id = excluded.source_run_id, created_at = excluded.created_at,
               expires_at = excluded.expires_at
        RETURNING c.created_at INTO v_created;
    END IF;
    DELETE FROM step_cache_flights f
     WHERE f.organization_id = p_org AND f.cache_key = p_key AND f.run_id = p_run
       AND f.step_id = p_step AND f.attempt = p_attempt;
    PERFORM pg_notify('podium_cache', p_key);
    RETURN v_created;
END
$$;
