-- 0002_engine: the durable engine's columns and its set-based SQL functions.
--
-- Lock order, followed by every function and repository statement that changes a run:
-- the run row (orchestration_runs) first, then its step rows. Claimers lock runs in
-- (created_at, id) order and completers sort their batches the same way, so concurrent
-- transactions never wait on each other in a cycle.

ALTER TABLE orchestration_steps
    ADD COLUMN input_refs text[] NOT NULL DEFAULT '{}',
    ADD COLUMN is_sink boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN orchestration_steps.input_refs IS
    'Ids of the steps whose outputs the input references (${steps.ID...}); their outputs '
    'are returned with the claim so dispatch needs no extra query.';
COMMENT ON COLUMN orchestration_steps.is_sink IS
    'No step depends on this one: its output is part of the run output.';

ALTER TABLE orchestration_runs
    ADD COLUMN steps_remaining integer NOT NULL DEFAULT 0 CHECK (steps_remaining >= 0);
COMMENT ON COLUMN orchestration_runs.steps_remaining IS
    'Steps not yet in a terminal state; the run completes when it reaches 0.';

ALTER TABLE agents
    ADD COLUMN source text NOT NULL DEFAULT 'registered'
        CHECK (source IN ('registered', 'static'));

-- Per-agent concurrency: running steps by agent.
CREATE INDEX orchestration_steps_running_agent_idx
    ON orchestration_steps (organization_id, agent) WHERE state = 'running';

-- Append one event to a run's log with the next gap-free sequence and notify
-- watchers. The caller holds (or takes here) the run row lock, which orders events.
CREATE FUNCTION podium_emit_event(
    p_run uuid, p_type text, p_step text, p_attempt integer, p_step_state text,
    p_payload jsonb
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_org text;
    v_state text;
BEGIN
    UPDATE orchestration_runs
       SET last_event_sequence = last_event_sequence + 1, updated_at = now()
     WHERE id = p_run
    RETURNING last_event_sequence, organization_id, state INTO v_seq, v_org, v_state;
    -- clock_timestamp(), not now(): a transaction that waited for a lock must not
    -- stamp its events earlier than events with lower sequences.
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         payload, created_at)
    VALUES (p_run, v_seq, v_org, p_type, p_step, p_attempt, v_state, p_step_state,
            coalesce(p_payload, '{}'), clock_timestamp());
    -- The payload is the run id only: PostgreSQL folds identical notifications of one
    -- transaction into one, and watchers read the log after their last sequence anyway.
    PERFORM pg_notify('podium_events', p_run::text);
    RETURN v_seq;
END
$$;

-- Append agent stream events (step.progress, step.output_chunk) of one attempt, already
-- coalesced by the replica, with the run's next sequence numbers. Fenced like a
-- completion: nothing is written unless the step is still running that attempt.
CREATE FUNCTION podium_append_step_events(
    p_run uuid, p_step text, p_attempt integer, p_types text[], p_payloads jsonb[]
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_org text;
    v_count integer := cardinality(p_types);
BEGIN
    PERFORM 1 FROM orchestration_runs WHERE id = p_run FOR UPDATE;
    PERFORM 1 FROM orchestration_steps
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt AND state = 'running';
    IF NOT FOUND OR v_count = 0 THEN
        RETURN false;
    END IF;
    UPDATE orchestration_runs
       SET last_event_sequence = last_event_sequence + v_count, updated_at = now()
     WHERE id = p_run
    RETURNING last_event_sequence, organization_id INTO v_seq, v_org;
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         payload, created_at)
    SELECT p_run, v_seq - v_count + e.ord, v_org, e.type, p_step, p_attempt, 'running',
           'running', e.payload, clock_timestamp()
      FROM unnest(p_types, p_payloads) WITH ORDINALITY AS e(type, payload, ord);
    PERFORM pg_notify('podium_events', p_run::text);
    RETURN true;
END
$$;

-- Move a created run to running: run.started, then queue every step without
-- dependencies (steps are created pending) with a step.queued event each.
CREATE FUNCTION podium_start_run(p_run uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_base bigint;
    v_count integer;
BEGIN
    UPDATE orchestration_runs
       SET state = 'running', started_at = coalesce(started_at, now()), updated_at = now()
     WHERE id = p_run AND state = 'created';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM podium_emit_event(p_run, 'run.started', NULL, NULL, NULL, '{}');
    UPDATE orchestration_steps
       SET state = 'queued', queued_at = clock_timestamp()
     WHERE run_id = p_run AND state = 'pending' AND pending_dependencies = 0;
    SELECT last_event_sequence INTO v_base FROM orchestration_runs WHERE id = p_run;
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         created_at)
    SELECT s.run_id, v_base + row_number() OVER (ORDER BY s.position), s.organization_id,
           'step.queued', s.step_id, 0, 'running', 'queued', clock_timestamp()
      FROM orchestration_steps s
     WHERE s.run_id = p_run AND s.state = 'queued';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE orchestration_runs SET last_event_sequence = v_base + v_count WHERE id = p_run;
    IF v_count > 0 THEN
        PERFORM pg_notify('podium_events', p_run::text);
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN true;
END
$$;

-- Claim up to p_limit runnable steps for p_owner, leasing them for p_lease_seconds.
--
-- Claimers are serialized by a transaction advisory lock, so the counts they read
-- (running steps per run and per agent) are exact across replicas. Inside, each
-- candidate run is locked, its due retries re-queued, and its queued steps taken
-- FOR UPDATE SKIP LOCKED while the run's max_parallel and the agents' max_concurrency
-- allow. A skill is routed to the least busy agent offering it. Each claimed step gets
-- attempt + 1 (the fencing token), a step_attempts row, its conversation and a
-- step.started event; its resolved-reference outputs come back with it.
CREATE FUNCTION podium_claim_steps(p_owner text, p_limit integer, p_lease_seconds double precision)
RETURNS TABLE (
    run_id uuid, step_id text, attempt integer, organization_id text, agent text,
    skill text, endpoint text, agent_timeout_seconds double precision, protocol text,
    task_id uuid, conversation_id uuid, spec jsonb, timeout_seconds double precision,
    max_attempts integer, run_input jsonb, upstream jsonb, labels jsonb,
    definition_name text, definition_version integer, run_created_at timestamptz,
    run_started_at timestamptz, trace_context jsonb
)
LANGUAGE plpgsql AS $$
DECLARE
    v_run record;
    v_step record;
    v_agent record;
    v_free integer;
    v_picked integer := 0;
    v_used jsonb := '{}';
    v_attempt integer;
    v_task uuid;
    v_started_ids text[];
    v_started_attempts integer[];
    v_started_agents text[];
    v_seq bigint;
    v_now timestamptz;
BEGIN
    IF p_limit <= 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(1886350957, 1);
    FOR v_run IN
        SELECT r.id, r.max_parallel, r.organization_id, r.input, r.labels,
               r.definition_name, r.definition_version, r.created_at, r.started_at,
               r.trace_context
          FROM orchestration_runs r
         WHERE r.state = 'running'
           AND r.id IN (SELECT q.run_id FROM orchestration_steps q WHERE q.state = 'queued'
                        UNION
                        SELECT w.run_id FROM orchestration_steps w
                         WHERE w.state = 'waiting_retry' AND w.next_attempt_at <= now())
         ORDER BY r.created_at, r.id
           FOR UPDATE OF r
    LOOP
        EXIT WHEN v_picked >= p_limit;
        UPDATE orchestration_steps w
           SET state = 'queued', queued_at = now(), next_attempt_at = NULL
         WHERE w.run_id = v_run.id AND w.state = 'waiting_retry' AND w.next_attempt_at <= now();
        SELECT v_run.max_parallel - count(*) INTO v_free
          FROM orchestration_steps x WHERE x.run_id = v_run.id AND x.state = 'running';
        CONTINUE WHEN v_free <= 0;
        v_started_ids := '{}';
        v_started_attempts := '{}';
        v_started_agents := '{}';
        FOR v_step IN
            SELECT s.step_id, s.agent, s.skill, s.input_refs
              FROM orchestration_steps s
             WHERE s.run_id = v_run.id AND s.state = 'queued'
             ORDER BY s.queued_at, s.position
               FOR UPDATE OF s SKIP LOCKED
        LOOP
            EXIT WHEN v_free <= 0 OR v_picked >= p_limit;
            SELECT NULL::text AS name, NULL::text AS endpoint,
                   NULL::double precision AS default_timeout_seconds, NULL::text AS protocol,
                   0 AS max_concurrency, 0::bigint AS busy
              INTO v_agent;
            IF v_step.skill IS NOT NULL THEN
                -- The least busy agent offering the skill that has a free slot.
                SELECT c.name, c.endpoint, c.default_timeout_seconds, c.protocol,
                       c.max_concurrency, c.busy
                  INTO v_agent
                  FROM (SELECT a.name, a.endpoint, a.default_timeout_seconds, a.protocol,
                               a.max_concurrency,
                               (SELECT count(*) FROM orchestration_steps b
                                 WHERE b.state = 'running'
                                   AND b.organization_id = a.organization_id
                                   AND b.agent = a.name)
                               + coalesce((v_used ->> a.name)::integer, 0) AS busy
                          FROM agents a
                         WHERE a.organization_id = v_run.organization_id
                           AND v_step.skill = ANY (a.skills)) c
                 WHERE c.max_concurrency = 0 OR c.busy < c.max_concurrency
                 ORDER BY c.busy, c.name
                 LIMIT 1;
                IF NOT FOUND AND EXISTS (SELECT 1 FROM agents a
                                          WHERE a.organization_id = v_run.organization_id
                                            AND v_step.skill = ANY (a.skills)) THEN
                    CONTINUE;  -- every agent with the skill is full: stays queued
                END IF;
            ELSIF v_step.agent IS NOT NULL THEN
                SELECT a.name, a.endpoint, a.default_timeout_seconds, a.protocol,
                       a.max_concurrency,
                       CASE WHEN a.max_concurrency > 0 THEN
                           (SELECT count(*) FROM orchestration_steps b
                             WHERE b.state = 'running' AND b.organization_id = a.organization_id
                               AND b.agent = a.name)
                           + coalesce((v_used ->> a.name)::integer, 0)
                       ELSE 0 END AS busy
                  INTO v_agent
                  FROM agents a
                 WHERE a.organization_id = v_run.organization_id AND a.name = v_step.agent;
                IF FOUND AND v_agent.max_concurrency > 0 AND v_agent.busy >= v_agent.max_concurrency THEN
                    CONTINUE;  -- the agent is full: stays queued
                END IF;
            END IF;
            -- clock_timestamp(), not now(): this claim may have waited for the
            -- completion that made the step runnable; it starts after that ended.
            v_now := clock_timestamp();
            -- Unknown agents and skills without agents are claimed anyway: the executor
            -- fails them with a clear error instead of leaving them queued forever.
            UPDATE orchestration_steps s
               SET state = 'running',
                   attempt = s.attempt + 1,
                   agent = coalesce(v_agent.name, s.agent),
                   lease_owner = p_owner,
                   lease_expires_at = v_now + make_interval(secs => p_lease_seconds),
                   started_at = coalesce(s.started_at, v_now),
                   error = NULL
             WHERE s.run_id = v_run.id AND s.step_id = v_step.step_id
            RETURNING s.attempt INTO v_attempt;
            INSERT INTO step_attempts
                (run_id, step_id, attempt, organization_id, agent, started_at)
            VALUES (v_run.id, v_step.step_id, v_attempt, v_run.organization_id,
                    coalesce(v_agent.name, v_step.agent), v_now)
            RETURNING step_attempts.task_id INTO v_task;
            IF v_attempt = 1 THEN
                -- The step's conversation, kept across its attempts (and ContinueRun).
                INSERT INTO conversations (id, organization_id, run_id, step_id, agent)
                SELECT s.conversation_id, v_run.organization_id, v_run.id, v_step.step_id,
                       coalesce(v_agent.name, v_step.agent)
                  FROM orchestration_steps s
                 WHERE s.run_id = v_run.id AND s.step_id = v_step.step_id
                ON CONFLICT (id) DO NOTHING;
            END IF;
            v_started_ids := v_started_ids || v_step.step_id;
            v_started_attempts := v_started_attempts || v_attempt;
            v_started_agents := v_started_agents || coalesce(v_agent.name, v_step.agent);
            IF v_agent.name IS NOT NULL THEN
                v_used := jsonb_set(v_used, ARRAY[v_agent.name],
                                    to_jsonb(coalesce((v_used ->> v_agent.name)::integer, 0) + 1));
            END IF;
            v_free := v_free - 1;
            v_picked := v_picked + 1;
            RETURN QUERY
            SELECT s.run_id, s.step_id, s.attempt, s.organization_id, s.agent, s.skill,
                   v_agent.endpoint::text, v_agent.default_timeout_seconds::double precision,
                   v_agent.protocol::text, v_task, s.conversation_id, s.spec, s.timeout_seconds,
                   s.max_attempts, v_run.input,
                   (SELECT coalesce(jsonb_object_agg(u.step_id, u.output), '{}'::jsonb)
                      FROM orchestration_steps u
                     WHERE u.run_id = s.run_id AND u.step_id = ANY (s.input_refs)),
                   v_run.labels, v_run.definition_name, v_run.definition_version,
                   v_run.created_at, v_run.started_at, v_run.trace_context
              FROM orchestration_steps s
             WHERE s.run_id = v_run.id AND s.step_id = v_step.step_id;
        END LOOP;
        IF cardinality(v_started_ids) > 0 THEN
            -- One step.started event per claimed step, numbered with one run update.
            UPDATE orchestration_runs
               SET last_event_sequence = last_event_sequence + cardinality(v_started_ids),
                   updated_at = now()
             WHERE id = v_run.id
            RETURNING last_event_sequence INTO v_seq;
            INSERT INTO orchestration_events
                (run_id, sequence, organization_id, type, step_id, attempt, run_state,
                 step_state, payload, created_at)
            SELECT v_run.id, v_seq - cardinality(v_started_ids) + e.ord, v_run.organization_id,
                   'step.started', e.step_id, e.attempt, 'running', 'running',
                   CASE WHEN e.agent IS NULL THEN '{}'::jsonb
                        ELSE jsonb_build_object('agent', e.agent) END,
                   clock_timestamp()
              FROM unnest(v_started_ids, v_started_attempts, v_started_agents)
                   WITH ORDINALITY AS e(step_id, attempt, agent, ord);
            PERFORM pg_notify('podium_events', v_run.id::text);
        END IF;
    END LOOP;
END
$$;

-- Cancel every unfinished step of a run (the caller holds the run row lock), with a
-- step.cancelled event each carrying the state the run is moving to, written
-- set-based so a large run costs one statement.
CREATE FUNCTION podium_cancel_steps(p_run uuid, p_run_state text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_base bigint;
    v_count integer;
BEGIN
    SELECT last_event_sequence INTO v_base FROM orchestration_runs WHERE id = p_run;
    WITH cancelled AS (
        UPDATE orchestration_steps
           SET state = 'cancelled', ended_at = now(), lease_owner = NULL,
               lease_expires_at = NULL
         WHERE run_id = p_run
           AND state IN ('pending', 'queued', 'running', 'waiting_retry', 'awaiting_approval')
        RETURNING run_id, step_id, organization_id, position, attempt
    )
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         created_at)
    SELECT c.run_id, v_base + row_number() OVER (ORDER BY c.position), c.organization_id,
           'step.cancelled', c.step_id, c.attempt, p_run_state, 'cancelled', clock_timestamp()
      FROM cancelled c;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE orchestration_runs SET last_event_sequence = v_base + v_count WHERE id = p_run;
    RETURN v_count;
END
$$;

-- Fail a run whose step failed for good: cancel what is left, record the error and the
-- rollback hints of the completed steps (newest first, then the definition's), emit
-- run.failed and tell every replica to cancel the run's agent calls. The caller holds
-- the run row lock.
CREATE FUNCTION podium_fail_run(p_run uuid, p_step text, p_error jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM podium_cancel_steps(p_run, 'failed');
    UPDATE step_attempts
       SET ended_at = now(), error = '{"code": "CANCELLED", "message": "the run failed"}'
     WHERE run_id = p_run AND ended_at IS NULL;
    UPDATE orchestration_runs r
       SET state = 'failed', ended_at = now(), updated_at = now(), steps_remaining = 0,
           error = coalesce(p_error, '{}'::jsonb) || jsonb_build_object('step_id', p_step),
           rollback_hints = (
               SELECT coalesce(jsonb_agg(h.hint ORDER BY h.ord), '[]'::jsonb)
                 FROM (SELECT s.spec -> 'rollback' ->> 'hint' AS hint, s.ended_at AS ended,
                              row_number() OVER (ORDER BY s.ended_at DESC, s.position DESC) AS ord
                         FROM orchestration_steps s
                        WHERE s.run_id = p_run AND s.state = 'succeeded'
                          AND s.spec -> 'rollback' ->> 'hint' <> ''
                       UNION ALL
                       SELECT r2.plan -> 'error_handling' -> 'rollback' ->> 'hint', NULL,
                              1000000000
                         FROM orchestration_runs r2
                        WHERE r2.id = p_run
                          AND r2.plan -> 'error_handling' -> 'rollback' ->> 'hint' <> '') h
           )
     WHERE r.id = p_run;
    PERFORM podium_emit_event(p_run, 'run.failed', p_step, NULL, NULL,
                              jsonb_build_object('error', p_error));
    PERFORM pg_notify('podium_cancel', p_run::text);
END
$$;

-- Record the outcome of one attempt, fenced: nothing happens unless the step is still
-- running that attempt (a late result from a stale attempt or a cancelled run changes
-- nothing; returns false). p_outcome: 'succeeded', 'failed' (final) or 'retry' (waits
-- until p_next_attempt_at). Success promotes dependents whose last dependency this was
-- and completes the run after its last step; failure fails the run. Returns the run's
-- state afterwards ('succeeded' or 'failed' when this outcome ended it), NULL when fenced.
CREATE FUNCTION podium_complete_step(
    p_run uuid, p_step text, p_attempt integer, p_outcome text, p_output jsonb,
    p_error jsonb, p_input jsonb, p_next_attempt_at timestamptz,
    p_input_tokens bigint, p_output_tokens bigint, p_cost_usd numeric
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text := CASE p_outcome WHEN 'retry' THEN 'waiting_retry' ELSE p_outcome END;
    v_queued text[];
    v_count integer;
    v_done boolean;
    v_seq bigint;
    v_org text;
    v_run_state text;
BEGIN
    PERFORM 1 FROM orchestration_runs WHERE id = p_run FOR UPDATE;
    UPDATE orchestration_steps
       SET state = v_state,
           output = CASE WHEN v_state = 'succeeded' THEN p_output END,
           error = p_error,
           input = coalesce(p_input, input),
           ended_at = CASE WHEN v_state = 'waiting_retry' THEN NULL ELSE now() END,
           next_attempt_at = p_next_attempt_at,
           lease_owner = NULL,
           lease_expires_at = NULL,
           input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens,
           cost_usd = cost_usd + p_cost_usd
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt AND state = 'running';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE step_attempts SET ended_at = now(), error = p_error
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt;

    IF v_state = 'failed' THEN
        UPDATE orchestration_runs
           SET input_tokens = input_tokens + p_input_tokens,
               output_tokens = output_tokens + p_output_tokens,
               cost_usd = cost_usd + p_cost_usd
         WHERE id = p_run;
        PERFORM podium_emit_event(p_run, 'step.failed', p_step, p_attempt, v_state,
                                  jsonb_build_object('error', p_error));
        PERFORM podium_fail_run(p_run, p_step, p_error);
        RETURN 'failed';
    END IF;

    IF v_state = 'succeeded' THEN
        -- Dependents whose last dependency this was become runnable.
        WITH promoted AS (
            UPDATE orchestration_steps d
               SET pending_dependencies = d.pending_dependencies - 1,
                   state = CASE WHEN d.pending_dependencies = 1 THEN 'queued' ELSE d.state END,
                   queued_at = CASE WHEN d.pending_dependencies = 1 THEN clock_timestamp()
                                    ELSE d.queued_at END
             WHERE d.run_id = p_run AND d.state = 'pending' AND p_step = ANY (d.depends_on)
            RETURNING d.step_id, d.state, d.position
        )
        SELECT coalesce(array_agg(step_id ORDER BY position) FILTER (WHERE state = 'queued'),
                        '{}')
          INTO v_queued FROM promoted;
    ELSE
        v_queued := '{}';
    END IF;
    v_count := cardinality(v_queued);

    -- One update of the run row: usage, progress, the events' sequence numbers, and
    -- completion after its last step (output = the outputs of the sink steps).
    UPDATE orchestration_runs r
       SET input_tokens = r.input_tokens + p_input_tokens,
           output_tokens = r.output_tokens + p_output_tokens,
           cost_usd = r.cost_usd + p_cost_usd,
           steps_remaining = r.steps_remaining - CASE WHEN v_state = 'succeeded' THEN 1 ELSE 0 END,
           last_event_sequence = r.last_event_sequence + 1 + v_count
               + CASE WHEN v_state = 'succeeded' AND r.steps_remaining = 1 THEN 1 ELSE 0 END,
           state = CASE WHEN v_state = 'succeeded' AND r.steps_remaining = 1 THEN 'succeeded'
                        ELSE r.state END,
           ended_at = CASE WHEN v_state = 'succeeded' AND r.steps_remaining = 1 THEN now()
                           ELSE r.ended_at END,
           output = CASE WHEN v_state = 'succeeded' AND r.steps_remaining = 1 THEN
                        (SELECT coalesce(jsonb_object_agg(s.step_id, s.output), '{}'::jsonb)
                           FROM orchestration_steps s WHERE s.run_id = p_run AND s.is_sink)
                    ELSE r.output END,
           updated_at = now()
     WHERE r.id = p_run
    RETURNING r.last_event_sequence, r.organization_id, r.state, r.steps_remaining = 0
         INTO v_seq, v_org, v_run_state, v_done;
    v_done := v_done AND v_state = 'succeeded';

    -- The events of this transition, numbered after the previous last sequence.
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         payload, created_at)
    SELECT p_run, v_seq - 1 - v_count - CASE WHEN v_done THEN 1 ELSE 0 END + e.ord, v_org,
           e.type, e.step_id, e.attempt,
           CASE WHEN e.type = 'run.completed' THEN v_run_state ELSE 'running' END,
           e.step_state, e.payload, clock_timestamp()
      FROM (SELECT 1::bigint AS ord,
                   CASE v_state WHEN 'succeeded' THEN 'step.completed'
                                ELSE 'step.retrying' END AS type,
                   p_step AS step_id, p_attempt AS attempt, v_state AS step_state,
                   CASE v_state
                       WHEN 'succeeded' THEN jsonb_build_object('output', p_output)
                       ELSE jsonb_build_object('error', p_error,
                                               'next_attempt', p_attempt + 1,
                                               'next_attempt_at', p_next_attempt_at)
                   END AS payload
            UNION ALL
            SELECT 1 + q.ord, 'step.queued', q.step_id, 0, 'queued', '{}'::jsonb
              FROM unnest(v_queued) WITH ORDINALITY AS q(step_id, ord)
            UNION ALL
            SELECT 2 + v_count, 'run.completed', NULL, NULL, NULL, '{}'::jsonb
             WHERE v_done) e;
    PERFORM pg_notify('podium_events', p_run::text);
    IF v_count > 0 OR v_state = 'waiting_retry' THEN
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN v_run_state;
END
$$;

-- Cancel a run: every unfinished step is cancelled (a late result is then fenced),
-- run.cancelled is emitted and every replica is told to cancel the run's agent calls.
-- Returns the run's state afterwards, or NULL when the run does not exist.
CREATE FUNCTION podium_cancel_run(p_run uuid, p_org text, p_reason text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
BEGIN
    SELECT state INTO v_state FROM orchestration_runs
     WHERE id = p_run AND organization_id = p_org FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_state IN ('succeeded', 'failed', 'cancelled') THEN
        RETURN v_state;
    END IF;
    PERFORM podium_cancel_steps(p_run, 'cancelled');
    UPDATE step_attempts
       SET ended_at = now(),
           error = jsonb_build_object('code', 'CANCELLED', 'message', 'the run was cancelled')
     WHERE run_id = p_run AND ended_at IS NULL;
    UPDATE orchestration_runs
       SET state = 'cancelled', ended_at = now(), updated_at = now(), steps_remaining = 0,
           error = jsonb_build_object('code', 'CANCELLED',
                                      'message', coalesce(nullif(p_reason, ''), 'cancelled'))
     WHERE id = p_run;
    PERFORM podium_emit_event(p_run, 'run.cancelled', NULL, NULL, NULL,
                              jsonb_build_object('reason', p_reason));
    PERFORM pg_notify('podium_cancel', p_run::text);
    RETURN 'cancelled';
END
$$;

-- Return steps whose lease expired (their replica died or stalled) to the queue.
-- Their attempt stays counted; the next claim takes attempt + 1, so a late result of
-- the expired attempt is fenced. A lost lease is rarely the step's fault, so it may
-- happen twice beyond max_attempts; a step that keeps losing it (e.g. it crashes its
-- replica every time) then fails with LEASE_EXPIRED instead of looping forever.
-- Returns the number of steps re-queued or failed.
CREATE FUNCTION podium_requeue_expired(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_run record;
    v_step record;
    v_count integer := 0;
    v_error jsonb := '{"code": "LEASE_EXPIRED", "message": "every attempt lost its lease (the replica executing it stopped renewing)", "retryable": false}';
BEGIN
    FOR v_run IN
        SELECT r.id FROM orchestration_runs r
         WHERE r.id IN (SELECT e.run_id FROM orchestration_steps e
                         WHERE e.state = 'running' AND e.lease_expires_at < now()
                         LIMIT p_limit)
         ORDER BY r.created_at, r.id
           FOR UPDATE OF r SKIP LOCKED
    LOOP
        FOR v_step IN
            UPDATE orchestration_steps s
               SET state = 'queued', queued_at = now(), lease_owner = NULL,
                   lease_expires_at = NULL
             WHERE s.run_id = v_run.id AND s.state = 'running' AND s.lease_expires_at < now()
               AND s.attempt < s.max_attempts + 2
            RETURNING s.step_id, s.attempt
        LOOP
            UPDATE step_attempts
               SET ended_at = now(),
                   error = '{"code": "LEASE_EXPIRED", "message": "the replica executing this attempt stopped renewing its lease", "retryable": true}'
             WHERE run_id = v_run.id AND step_id = v_step.step_id AND attempt = v_step.attempt;
            PERFORM podium_emit_event(v_run.id, 'step.queued', v_step.step_id, v_step.attempt,
                                      'queued', '{"reason": "lease_expired"}');
            v_count := v_count + 1;
        END LOOP;
        FOR v_step IN
            UPDATE orchestration_steps s
               SET state = 'failed', ended_at = now(), lease_owner = NULL,
                   lease_expires_at = NULL, error = v_error
             WHERE s.run_id = v_run.id AND s.state = 'running' AND s.lease_expires_at < now()
            RETURNING s.step_id, s.attempt
        LOOP
            UPDATE step_attempts SET ended_at = now(), error = v_error
             WHERE run_id = v_run.id AND step_id = v_step.step_id AND attempt = v_step.attempt;
            PERFORM podium_emit_event(v_run.id, 'step.failed', v_step.step_id, v_step.attempt,
                                      'failed', jsonb_build_object('error', v_error));
            PERFORM podium_fail_run(v_run.id, v_step.step_id, v_error);
            v_count := v_count + 1;
            EXIT;  -- the run failed: its other steps are cancelled
        END LOOP;
    END LOOP;
    IF v_count > 0 THEN
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN v_count;
END
$$;
