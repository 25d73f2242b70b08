-- Durable timers (sleep steps) and external events (wait_for_event steps, SendEvent).
-- Lock order: an event's (organization, name, key) advisory lock, then runs (oldest
-- first, as the claim), then their steps (see 30_runs.sql).
--
-- A waiting step holds no lease and no agent slot: it is parked as waiting_retry with
-- next_attempt_at = its deadline (NULL: no deadline), so the claim's due-retry path
-- re-queues it when the deadline passes or when an event makes it due at once. The park
-- gives the claim's attempt number back (no agent was called). Its deadline is written
-- into spec.wake_at once, by the first claim, so later claims (after a restart, a lost
-- lease or a delivery) keep it; a delivered event is written into spec.received_event.

-- Serialize everything about one (organization, name, key): a step starting to wait and
-- an event being sent cannot miss each other.
CREATE OR REPLACE FUNCTION podium_lock_event_key(p_org text, p_name text, p_key text)
RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_org || chr(31) || p_name || chr(31) || p_key, 1886350958));
$$;

-- Fence a timer call like a completion (the step runs this attempt, claimed with this
-- task id) and lock the run, then the step. Returns the step's spec, NULL when fenced.
CREATE OR REPLACE FUNCTION podium_lock_waiting_step(
    p_run uuid, p_step text, p_attempt integer, p_task uuid
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_spec jsonb;
BEGIN
    PERFORM 1 FROM orchestration_runs WHERE id = p_run FOR UPDATE;
    SELECT s.spec INTO v_spec FROM orchestration_steps s
     WHERE s.run_id = p_run AND s.step_id = p_step AND s.attempt = p_attempt
       AND s.state = 'running'
       FOR UPDATE;
    IF NOT FOUND OR NOT EXISTS (
           SELECT 1 FROM step_attempts a
            WHERE a.run_id = p_run AND a.step_id = p_step AND a.attempt = p_attempt
              AND a.task_id = p_task) THEN
        RETURN NULL;
    END IF;
    RETURN v_spec;
END
$$;

-- Park a running step (locked and fenced by the caller) until p_wake_at: the attempt is
-- given back, the lease dropped, spec.wake_at kept; a step.waiting event says why.
CREATE OR REPLACE FUNCTION podium_park_waiting(
    p_run uuid, p_step text, p_attempt integer, p_wake_at timestamptz, p_payload jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM step_attempts
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt;
    UPDATE orchestration_steps
       SET state = 'waiting_retry', attempt = p_attempt - 1, next_attempt_at = p_wake_at,
           lease_owner = NULL, lease_expires_at = NULL, error = NULL
     WHERE run_id = p_run AND step_id = p_step;
    PERFORM podium_emit_event(
        p_run, 'step.waiting', p_step, NULLIF(p_attempt - 1, 0), 'waiting_retry',
        p_payload || CASE WHEN p_wake_at IS NULL THEN '{}'::jsonb
                          ELSE jsonb_build_object('until', p_wake_at) END);
END
$$;

-- A claimed sleep step: 'due' when its deadline passed (the caller completes it),
-- 'waiting' when it was parked until then, 'stale' when fenced. The deadline is
-- p_until, or p_seconds after the first claim, fixed in spec.wake_at by the first call.
CREATE OR REPLACE FUNCTION podium_sleep_step(
    p_run uuid, p_step text, p_attempt integer, p_task uuid, p_seconds double precision,
    p_until timestamptz
) RETURNS TABLE (status text, wake_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_spec jsonb;
    v_wake timestamptz;
BEGIN
    v_spec := podium_lock_waiting_step(p_run, p_step, p_attempt, p_task);
    IF v_spec IS NULL THEN
        RETURN QUERY SELECT 'stale'::text, NULL::timestamptz;
        RETURN;
    END IF;
    v_wake := coalesce((v_spec ->> 'wake_at')::timestamptz, p_until,
                       clock_timestamp() + make_interval(secs => p_seconds));
    IF v_wake <= clock_timestamp() THEN
        RETURN QUERY SELECT 'due'::text, v_wake;
        RETURN;
    END IF;
    UPDATE orchestration_steps s SET spec = s.spec || jsonb_build_object('wake_at', v_wake)
     WHERE s.run_id = p_run AND s.step_id = p_step;
    PERFORM podium_park_waiting(p_run, p_step, p_attempt, v_wake, '{"kind": "sleep"}');
    RETURN QUERY SELECT 'waiting'::text, v_wake;
END
$$;

-- A claimed wait_for_event step: 'received' with the event (delivered by SendEvent
-- while it was parked, or taken now from the kept events: the earliest unexpired one
-- with this name and key), 'timeout' when its deadline passed without one, 'waiting'
-- when it was parked (registered in event_waits, until its deadline), 'stale' when
-- fenced. The deadline is p_timeout_seconds (0: none) after the first claim.
CREATE OR REPLACE FUNCTION podium_wait_event(
    p_run uuid, p_step text, p_attempt integer, p_task uuid, p_org text, p_name text,
    p_key text, p_timeout_seconds double precision
) RETURNS TABLE (status text, event jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_spec jsonb;
    v_wake timestamptz;
    v_event jsonb;
    v_found record;
BEGIN
    PERFORM podium_lock_event_key(p_org, p_name, p_key);
    v_spec := podium_lock_waiting_step(p_run, p_step, p_attempt, p_task);
    IF v_spec IS NULL THEN
        RETURN QUERY SELECT 'stale'::text, NULL::jsonb;
        RETURN;
    END IF;
    IF v_spec ? 'received_event' THEN
        DELETE FROM event_waits WHERE run_id = p_run AND step_id = p_step;
        RETURN QUERY SELECT 'received'::text, v_spec -> 'received_event';
        RETURN;
    END IF;
    SELECT e.event_id, e.payload, e.received_at INTO v_found FROM external_events e
     WHERE e.organization_id = p_org AND e.name = p_name AND e.key = p_key
       AND e.expires_at > now()
     ORDER BY e.received_at, e.event_id
     LIMIT 1;
    IF FOUND THEN
        v_event := jsonb_build_object('event_id', v_found.event_id, 'name', p_name,
                                      'key', p_key, 'payload', v_found.payload,
                                      'received_at', v_found.received_at);
        UPDATE orchestration_steps s
           SET spec = s.spec || jsonb_build_object('received_event', v_event)
         WHERE s.run_id = p_run AND s.step_id = p_step;
        DELETE FROM event_waits WHERE run_id = p_run AND step_id = p_step;
        PERFORM podium_emit_event(p_run, 'event.received', p_step, p_attempt, 'running',
                                  jsonb_build_object('event_id', v_found.event_id,
                                                     'name', p_name, 'key', p_key));
        RETURN QUERY SELECT 'received'::text, v_event;
        RETURN;
    END IF;
    v_wake := coalesce((v_spec ->> 'wake_at')::timestamptz,
                       CASE WHEN p_timeout_seconds > 0
                            THEN clock_timestamp() + make_interval(secs => p_timeout_seconds)
                       END);
    IF v_wake IS NOT NULL AND v_wake <= clock_timestamp() THEN
        DELETE FROM event_waits WHERE run_id = p_run AND step_id = p_step;
        RETURN QUERY SELECT 'timeout'::text, NULL::jsonb;
        RETURN;
    END IF;
    IF v_wake IS NOT NULL THEN
        UPDATE orchestration_steps s SET spec = s.spec || jsonb_build_object('wake_at', v_wake)
         WHERE s.run_id = p_run AND s.step_id = p_step;
    END IF;
    INSERT INTO event_waits (run_id, step_id, organization_id, name, key)
    VALUES (p_run, p_step, p_org, p_name, p_key)
    ON CONFLICT (run_id, step_id) DO UPDATE
       SET organization_id = EXCLUDED.organization_id, name = EXCLUDED.name,
           key = EXCLUDED.key, since = now();
    PERFORM podium_park_waiting(p_run, p_step, p_attempt, v_wake,
                                jsonb_build_object('kind', 'wait_for_event',
                                                   'event', p_name, 'key', p_key));
    RETURN QUERY SELECT 'waiting'::text, NULL::jsonb;
END
$$;

-- SendEvent: keep the event until now() + p_retention_seconds and deliver it to every
-- parked step of the organization waiting for its name and key, once each: the event is
-- written into the step's spec.received_event and the step made due at once (the claim
-- re-queues it, the executor completes it with the event). Idempotent by event id: a
-- known id changes nothing (duplicate = true, with the first send's count). Also
-- removes a few expired events and waits of steps no longer parked.
CREATE OR REPLACE FUNCTION podium_send_event(
    p_org text, p_event_id text, p_name text, p_key text, p_payload jsonb,
    p_retention_seconds double precision
) RETURNS TABLE (duplicate boolean, delivered integer, expires_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_received timestamptz;
    v_expires timestamptz;
    v_event jsonb;
    v_wait record;
    v_attempt integer;
    v_count integer := 0;
BEGIN
    PERFORM podium_lock_event_key(p_org, p_name, p_key);
    DELETE FROM external_events x
     WHERE x.ctid IN (SELECT o.ctid FROM external_events o
                       WHERE o.expires_at < now() LIMIT 100);
    INSERT INTO external_events AS e
        (organization_id, event_id, name, key, payload, received_at, expires_at)
    VALUES (p_org, p_event_id, p_name, p_key, coalesce(p_payload, '{}'), now(),
            now() + make_interval(secs => p_retention_seconds))
    ON CONFLICT (organization_id, event_id) DO NOTHING
    RETURNING e.received_at, e.expires_at INTO v_received, v_expires;
    IF NOT FOUND THEN
        RETURN QUERY SELECT true, e.delivered_steps, e.expires_at FROM external_events e
                      WHERE e.organization_id = p_org AND e.event_id = p_event_id;
        RETURN;
    END IF;
    v_event := jsonb_build_object('event_id', p_event_id, 'name', p_name, 'key', p_key,
                                  'payload', coalesce(p_payload, '{}'),
                                  'received_at', v_received);
    FOR v_wait IN
        SELECT w.run_id, w.step_id FROM event_waits w
          JOIN orchestration_runs r ON r.id = w.run_id
         WHERE w.organization_id = p_org AND w.name = p_name AND w.key = p_key
         ORDER BY r.created_at, r.id, w.step_id
    LOOP
        PERFORM 1 FROM orchestration_runs WHERE id = v_wait.run_id FOR UPDATE;
        UPDATE orchestration_steps s
           SET spec = s.spec || jsonb_build_object('received_event', v_event),
               next_attempt_at = now()
         WHERE s.run_id = v_wait.run_id AND s.step_id = v_wait.step_id
           AND s.state = 'waiting_retry' AND NOT (s.spec ? 'received_event')
        RETURNING s.attempt INTO v_attempt;
        IF FOUND THEN
            PERFORM podium_emit_event(v_wait.run_id, 'event.received', v_wait.step_id,
                                      NULLIF(v_attempt, 0), 'waiting_retry',
                                      jsonb_build_object('event_id', p_event_id,
                                                         'name', p_name, 'key', p_key));
            v_count := v_count + 1;
        END IF;
        DELETE FROM event_waits WHERE run_id = v_wait.run_id AND step_id = v_wait.step_id;
    END LOOP;
    IF v_count > 0 THEN
        UPDATE external_events e SET delivered_steps = v_count
         WHERE e.organization_id = p_org AND e.event_id = p_event_id;
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN QUERY SELECT false, v_count, v_expires;
END
$$;
