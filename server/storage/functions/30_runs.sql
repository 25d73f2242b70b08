-- A run's life cycle: create (StartRun, ForkRun, a sub-orchestration's child run), start,
-- continue, resume, fork, cancel and fail.
--
-- Lock order, followed by every function and repository statement that changes a run:
-- the run row (orchestration_runs) first, then its step rows, then its approvals.
-- Claimers lock runs in (created_at, id) order and completers sort their batches the
-- same way, so concurrent transactions never wait on each other in a cycle. A parent
-- run is always locked before its child runs; a child never locks its parent (a
-- finished child is noticed by the parent's scheduler sweep, see
-- podium_finished_children in server/storage/runs.sql, woken by the trigger at the end
-- of this file).
--
-- podium_create_run does in one round trip what StartRun needs (insert the run and its
-- steps, run.created, podium_fork_steps for a fork, podium_start_run) and returns what
-- the StartRun response needs that the caller does not already hold (ids, states,
-- times, conversations, copied outputs), so the server does not read the run back.

-- Create a run with its steps (p_steps: a JSON array of objects, as insert_steps takes
-- them), emit run.created, copy p_copy's outputs from p_forked_from (ForkRun) and start
-- it when p_start (written started at once when nothing comes between: the same rows
-- and events as podium_start_run's, without updating the rows just inserted). Idempotent on (p_org, p_request_id): when that run exists nothing is
-- written and its id comes back with created = false (the caller reads its state).
-- One row: the run's generated fields, then, when p_return_steps, what its steps hold
-- that the caller did not send, as parallel arrays in no particular order (step_ids[i]
-- is the step of every other array's [i]; NULL arrays without p_return_steps).
DROP FUNCTION IF EXISTS podium_create_run(
    text, text, integer, jsonb, jsonb, jsonb, jsonb, text, integer, boolean, text, jsonb,
    uuid, text, integer, uuid, text[], jsonb, boolean, boolean);
CREATE OR REPLACE FUNCTION podium_create_run(
    p_org text, p_definition_name text, p_definition_version integer, p_plan jsonb,
    p_input jsonb, p_metadata jsonb, p_labels jsonb, p_request_id text,
    p_max_parallel integer, p_bypass_cache boolean, p_webhook_url text,
    p_trace_context jsonb, p_parent_run uuid, p_parent_step text, p_depth integer,
    p_forked_from uuid, p_copy text[], p_steps jsonb, p_start boolean,
    p_return_steps boolean, p_keying jsonb DEFAULT NULL
) RETURNS TABLE (
    run_id uuid, created boolean, state text, run_attempt integer,
    last_event_sequence bigint, created_at timestamptz, started_at timestamptz,
    step_ids text[], step_states text[], step_attempts integer[],
    conversation_ids uuid[], queued_at timestamptz[], step_started_at timestamptz[],
    step_ended_at timestamptz[], step_inputs jsonb[], step_outputs jsonb[]
)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan  -- as podium_complete_steps, 50_complete.sql
AS $$
#variable_conflict use_column
DECLARE
    v_run uuid;
    v_count integer := jsonb_array_length(p_steps);
    v_budget jsonb := p_plan -> 'execution' -> 'budget';
    v_budget_run uuid;
    v_key text := p_keying ->> 'key';
    v_priority smallint := coalesce((p_keying ->> 'priority')::smallint, 0);
    -- Started at once (no fork to copy first, no key limit to wait for): the run is
    -- inserted running and its first steps queued, with run.started and step.queued,
    -- instead of being inserted created and pending and updated by podium_start_run.
    v_direct boolean := p_start AND p_forked_from IS NULL
        AND (v_key IS NULL OR coalesce((p_keying ->> 'max_runs_per_key')::integer, 0) = 0);
    v_roots integer := 0;
BEGIN
    IF v_direct THEN
        SELECT count(*) INTO v_roots FROM jsonb_to_recordset(p_steps)
               AS s(state text, pending_dependencies integer)
         WHERE s.state = 'pending' AND s.pending_dependencies = 0;
    END IF;
    IF p_parent_run IS NOT NULL THEN  -- a child run draws on its parent's budget
        SELECT r.budget_run_id INTO v_budget_run FROM orchestration_runs r
         WHERE r.id = p_parent_run;
    END IF;
    IF coalesce((v_budget ->> 'max_tokens')::bigint, 0) = 0
       AND coalesce((v_budget ->> 'max_cost_usd')::numeric, 0) = 0 THEN
        v_budget := NULL;  -- no limit: no budget of its own
    END IF;
    -- The run with its first event, run.created (sequence 1), in one statement.
    WITH run AS (
        INSERT INTO orchestration_runs
            (organization_id, definition_name, definition_version, plan, state, input,
             metadata, labels, request_id, max_parallel, bypass_cache, webhook_url,
             steps_remaining, trace_context, parent_run_id, parent_step_id, depth,
             forked_from_run_id, concurrency_key, priority, max_runs_per_key,
             max_steps_per_key, last_event_sequence, started_at)
        VALUES (p_org, p_definition_name, p_definition_version, p_plan,
                CASE WHEN v_direct THEN 'running' ELSE 'created' END, p_input,
                p_metadata, p_labels, p_request_id, p_max_parallel, p_bypass_cache,
                p_webhook_url, v_count, p_trace_context, p_parent_run, p_parent_step,
                p_depth, p_forked_from, v_key, v_priority,
                coalesce((p_keying ->> 'max_runs_per_key')::integer, 0),
                coalesce((p_keying ->> 'max_steps_per_key')::integer, 0),
                CASE WHEN v_direct THEN 2 + v_roots ELSE 1 END,
                CASE WHEN v_direct THEN now() END)
        ON CONFLICT (organization_id, request_id) DO NOTHING
        RETURNING id
    ), created AS (
        INSERT INTO orchestration_events
            (run_id, sequence, organization_id, type, run_state, payload, created_at)
        SELECT run.id, 1, p_org, 'run.created', 'created',
               CASE WHEN p_forked_from IS NULL THEN jsonb_build_object('steps', v_count)
                    ELSE jsonb_build_object('steps', v_count,
                                            'forked_from_run_id', p_forked_from)
               END,
               clock_timestamp()
          FROM run
        UNION ALL
        SELECT run.id, 2, p_org, 'run.started', 'running', '{}'::jsonb, clock_timestamp()
          FROM run WHERE v_direct
    )
    SELECT run.id INTO v_run FROM run;
    IF v_run IS NULL THEN
        RETURN QUERY
        SELECT r.id, false, r.state, r.run_attempt, r.last_event_sequence, r.created_at,
               r.started_at, NULL::text[], NULL::text[], NULL::integer[], NULL::uuid[],
               NULL::timestamptz[], NULL::timestamptz[], NULL::timestamptz[],
               NULL::jsonb[], NULL::jsonb[]
          FROM orchestration_runs r
         WHERE r.organization_id = p_org AND r.request_id = p_request_id;
        RETURN;
    END IF;
    -- Budgets (65_budgets.sql): the parent's budget if it has one (the outermost budget
    -- governs), else the run's own. Its steps are marked `budgeted` so the executor
    -- checks the budget before dispatching them (podium_budget_gate).
    IF v_budget_run IS NULL AND v_budget IS NOT NULL THEN
        v_budget_run := v_run;
        INSERT INTO run_budgets (run_id, organization_id, max_tokens, max_cost_usd, on_exceed)
        VALUES (v_run, p_org, coalesce((v_budget ->> 'max_tokens')::bigint, 0),
                coalesce((v_budget ->> 'max_cost_usd')::numeric, 0),
                CASE WHEN v_budget ->> 'on_exceed' = 'ON_EXCEED_FAIL' THEN 'fail'
                     ELSE 'pause' END);
    END IF;
    IF v_budget_run IS NOT NULL THEN
        UPDATE orchestration_runs SET budget_run_id = v_budget_run WHERE id = v_run;
    END IF;
    -- The steps and, started at once, the step.queued events of the first ones
    -- (numbered after run.started, by position, as podium_queue_root_steps does).
    WITH src AS (
        SELECT t.*, v_direct AND t.state = 'pending' AND t.pending_dependencies = 0 AS first
          FROM jsonb_to_recordset(p_steps) AS t(
               step_id text, position integer, state text, agent text, skill text,
               depends_on text[], pending_dependencies integer, spec jsonb,
               max_attempts integer, timeout_seconds double precision, input_refs text[],
               is_sink boolean)
    ), inserted AS (
        INSERT INTO orchestration_steps
            (run_id, step_id, organization_id, position, state, agent, skill, depends_on,
             pending_dependencies, spec, max_attempts, timeout_seconds, queued_at,
             conversation_id, input_refs, is_sink, concurrency_key, priority)
        SELECT v_run, s.step_id, p_org, s.position,
               CASE WHEN s.first THEN 'queued' ELSE s.state END, s.agent, s.skill,
               s.depends_on, s.pending_dependencies,
               CASE WHEN v_budget_run IS NULL THEN s.spec
                    ELSE s.spec || '{"budgeted": true}'::jsonb END,
               s.max_attempts, s.timeout_seconds,
               CASE WHEN s.first OR s.state = 'queued' THEN clock_timestamp() END,
               gen_random_uuid(), s.input_refs, s.is_sink, coalesce(v_key, ''), v_priority
          FROM src s
    )
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state,
         step_state, created_at)
    SELECT v_run, 2 + row_number() OVER (ORDER BY s.position), p_org, 'step.queued',
           s.step_id, 0, 'running', 'queued', clock_timestamp()
      FROM src s
     WHERE s.first;
    PERFORM podium_notify_events(v_run, p_org);  -- run.created (and the start's events)
    IF v_direct THEN
        IF v_roots > 0 THEN
            PERFORM podium_notify_work(v_run);  -- as podium_queue_root_steps
        END IF;
    ELSE
        IF p_forked_from IS NOT NULL THEN
            PERFORM podium_fork_steps(v_run, p_forked_from, p_copy);
        END IF;
        IF p_start THEN
            PERFORM podium_start_run(v_run);
        END IF;
    END IF;
    RETURN QUERY
    SELECT r.id, true, r.state, r.run_attempt, r.last_event_sequence, r.created_at,
           r.started_at, s.ids, s.states, s.attempts, s.conversations, s.queued,
           s.started, s.ended, s.inputs, s.outputs
      FROM orchestration_runs r,
           (SELECT array_agg(t.step_id) AS ids, array_agg(t.state) AS states,
                   array_agg(t.attempt) AS attempts,
                   array_agg(t.conversation_id) AS conversations,
                   array_agg(t.queued_at) AS queued, array_agg(t.started_at) AS started,
                   array_agg(t.ended_at) AS ended, array_agg(t.input) AS inputs,
                   array_agg(t.output) AS outputs
              FROM orchestration_steps t
             WHERE t.run_id = v_run AND p_return_steps) s
     WHERE r.id = v_run;
END
$$;

-- Move a created run to running: run.started, then, when its concurrency key admits it
-- (podium_key_admits, 46_keys.sql), queue every step without dependencies (steps are
-- created pending) with a step.queued event each; otherwise the run waits for its key
-- (key_admitted false, run.waiting_for_key) with its steps pending.
CREATE OR REPLACE FUNCTION podium_start_run(p_run uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run record;
BEGIN
    -- The state and run.started, in one statement.
    WITH run AS (
        UPDATE orchestration_runs
           SET state = 'running', started_at = coalesce(started_at, now()),
               updated_at = now(), last_event_sequence = last_event_sequence + 1
         WHERE id = p_run AND state = 'created'
        RETURNING organization_id, concurrency_key, max_runs_per_key, last_event_sequence
    ), started AS (
        INSERT INTO orchestration_events
            (run_id, sequence, organization_id, type, run_state, payload, created_at)
        SELECT p_run, run.last_event_sequence, run.organization_id, 'run.started',
               'running', '{}', clock_timestamp()
          FROM run
    )
    SELECT run.organization_id, run.concurrency_key, run.max_runs_per_key INTO v_run
      FROM run;
    IF v_run.organization_id IS NULL THEN
        RETURN false;
    END IF;
    PERFORM podium_notify_events(p_run, v_run.organization_id);
    IF v_run.max_runs_per_key > 0 AND v_run.concurrency_key IS NOT NULL
       AND NOT podium_key_admits(p_run, v_run.organization_id, v_run.concurrency_key,
                                 v_run.max_runs_per_key) THEN
        RETURN true;
    END IF;
    PERFORM podium_queue_root_steps(p_run);
    RETURN true;
END
$$;

-- NOTIFY podium_work (the claimers) for run p_run's newly queued steps, unless the
-- transaction set podium.defer_work_notify (podium_create_run_and_claim, which notifies
-- podium_work itself only when its eager claim leaves work).
CREATE OR REPLACE FUNCTION podium_notify_work(p_run uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('podium.defer_work_notify', true), '') <> 'on' THEN
        PERFORM pg_notify('podium_work', p_run::text);
    END IF;
END
$$;

-- Queue every pending step of a run without unfinished dependencies (its first steps at
-- its start or admission; whatever a skip, a decision or a resume left free, through
-- podium_refresh_run), with a step.queued event each (by position, with the step's
-- attempt and the run's state, numbered with one run update); NOTIFY when there are
-- any (podium_notify_work). Returns how many were queued.
CREATE OR REPLACE FUNCTION podium_queue_root_steps(p_run uuid) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    -- The steps, their step.queued events and the run's sequence, in one statement.
    WITH queued AS (
        UPDATE orchestration_steps
           SET state = 'queued', queued_at = clock_timestamp()
         WHERE run_id = p_run AND state = 'pending' AND pending_dependencies = 0
        RETURNING step_id, attempt, position
    ), run AS (
        UPDATE orchestration_runs
           SET last_event_sequence = last_event_sequence + (SELECT count(*) FROM queued)
         WHERE id = p_run AND EXISTS (SELECT 1 FROM queued)
        RETURNING last_event_sequence - (SELECT count(*) FROM queued) AS base,
                  organization_id, state
    ), events AS (
        INSERT INTO orchestration_events
            (run_id, sequence, organization_id, type, step_id, attempt, run_state,
             step_state, created_at)
        SELECT p_run, run.base + row_number() OVER (ORDER BY q.position),
               run.organization_id, 'step.queued', q.step_id, q.attempt, run.state,
               'queued', clock_timestamp()
          FROM queued q, run
        RETURNING 1
    )
    SELECT count(*) INTO v_count FROM events;
    IF v_count > 0 THEN
        PERFORM podium_notify_events(p_run);
        PERFORM podium_notify_work(p_run);
    END IF;
    RETURN v_count;
END
$$;

-- ContinueRun: start a created run, or give more input to a running run that waits on
-- a checkpoint (the input is merged over the run's; steps resolved later see it) or on
-- an agent's question (A2A INPUT_REQUIRED: the input is the answer sent to the agent).
-- Returns 'started', 'continued', the run's state when neither applies, or NULL when the
-- run does not exist.
CREATE OR REPLACE FUNCTION podium_continue_run(p_run uuid, p_org text, p_input jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_answer record;
BEGIN
    SELECT state INTO v_state FROM orchestration_runs
     WHERE id = p_run AND organization_id = p_org FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_state = 'created' THEN
        IF p_input IS NOT NULL THEN
            UPDATE orchestration_runs SET input = input || p_input WHERE id = p_run;
        END IF;
        PERFORM podium_start_run(p_run);
        RETURN 'started';
    END IF;
    IF v_state IN ('running', 'paused') AND EXISTS (
           SELECT 1 FROM human_approvals a
            WHERE a.run_id = p_run AND a.state = 'pending'
              AND a.kind IN ('checkpoint_before', 'checkpoint_after', 'input_required')) THEN
        PERFORM podium_emit_event(
            p_run, 'run.continued', NULL, NULL, NULL,
            jsonb_build_object('input_keys',
                               coalesce((SELECT jsonb_agg(k) FROM jsonb_object_keys(
                                            coalesce(p_input, '{}'::jsonb)) k), '[]')));
        -- Steps waiting for input (A2A INPUT_REQUIRED) get p_input as their answer.
        FOR v_answer IN
            SELECT a.id FROM human_approvals a
             WHERE a.run_id = p_run AND a.state = 'pending' AND a.kind = 'input_required'
             ORDER BY a.created_at, a.id
        LOOP
            PERFORM podium_decide_approval(p_org, v_answer.id, 'approve', 'ContinueRun', '',
                                           NULL, 'decided', coalesce(p_input, '{}'::jsonb),
                                           NULL, NULL);
        END LOOP;
        IF p_input IS NOT NULL AND EXISTS (
               SELECT 1 FROM human_approvals a
                WHERE a.run_id = p_run AND a.state = 'pending'
                  AND a.kind IN ('checkpoint_before', 'checkpoint_after')) THEN
            UPDATE orchestration_runs SET input = input || p_input, updated_at = now()
             WHERE id = p_run;
        END IF;
        RETURN 'continued';
    END IF;
    RETURN v_state;
END
$$;

-- ResumeRun: a failed or cancelled run runs again. Its failed, cancelled and skipped
-- steps and every step downstream of them go back to pending (succeeded steps keep
-- their outputs; a loop step starts its iterations over); attempts keep counting (they
-- fence late results) and each re-run step gets its full max_attempts again;
-- run_attempt + 1. Returns the run's state before the
-- call (the caller refuses anything but failed or cancelled), 'child' for the child run of
-- a sub-orchestration (resumed through its parent), NULL when it does not exist.
CREATE OR REPLACE FUNCTION podium_resume_run(p_run uuid, p_org text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_attempt integer;
    v_parent uuid;
BEGIN
    SELECT state, parent_run_id INTO v_state, v_parent FROM orchestration_runs
     WHERE id = p_run AND organization_id = p_org FOR UPDATE;
    IF NOT FOUND OR v_state NOT IN ('failed', 'cancelled') THEN
        RETURN v_state;
    END IF;
    IF v_parent IS NOT NULL THEN
        -- A child run is re-run through its parent (ResumeRun of the parent starts a new
        -- child): resumed alone, nobody would wait for it.
        RETURN 'child';
    END IF;
    WITH RECURSIVE redo (step_id) AS (
        SELECT s.step_id FROM orchestration_steps s
         WHERE s.run_id = p_run AND s.state <> 'succeeded'
        UNION
        SELECT d.step_id FROM orchestration_steps d
          JOIN redo r ON r.step_id = ANY (d.depends_on)
         WHERE d.run_id = p_run
    )
    UPDATE orchestration_steps s
       SET state = 'pending', output = NULL, error = NULL, ended_at = NULL,
           next_attempt_at = NULL, queued_at = NULL, lease_owner = NULL,
           lease_expires_at = NULL, approval_id = NULL, child_run_id = NULL,
           cached = false, cache_source_run_id = NULL,
           spec = s.spec - 'checkpoint_passed' - 'approved_input' - 'answer' - 'wake_at'
                    - 'received_event'
                    - 'loop_iteration' - 'loop_output',  -- a loop step starts over
           max_attempts = s.attempt
               + greatest(1, coalesce((s.spec -> 'on_failure' ->> 'max_attempts')::integer, 1))
      FROM redo r
     WHERE s.run_id = p_run AND s.step_id = r.step_id;
    UPDATE orchestration_runs
       SET state = 'running', run_attempt = run_attempt + 1, error = NULL, ended_at = NULL,
           rollback_hints = NULL, output = NULL, started_at = coalesce(started_at, now()),
           updated_at = now(),
           key_admitted = true  -- a resumed run is not held by its concurrency key
     WHERE id = p_run
    RETURNING run_attempt INTO v_attempt;
    PERFORM podium_emit_event(p_run, 'run.resumed', NULL, NULL, NULL,
                              jsonb_build_object('run_attempt', v_attempt,
                                                 'previous_state', v_state));
    PERFORM podium_refresh_run(p_run);
    RETURN v_state;
END
$$;

-- ForkRun: in a new run (created, not started, in the caller's transaction), mark the
-- steps of p_copy succeeded with the outputs (and inputs) they had in the finished run
-- p_source, each with a step.completed event naming that run; re-count the others'
-- dependencies and the steps left. The caller then starts the run, which queues the
-- re-executed steps whose dependencies are all copied. Returns the steps copied.
CREATE OR REPLACE FUNCTION podium_fork_steps(p_run uuid, p_source uuid, p_copy text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_count integer := 0;
BEGIN
    FOR v_step IN
        UPDATE orchestration_steps s
           SET state = 'succeeded', output = src.output, input = src.input,
               queued_at = now(), started_at = now(), ended_at = now()
          FROM orchestration_steps src
         WHERE s.run_id = p_run AND s.step_id = ANY (p_copy)
           AND src.run_id = p_source AND src.step_id = s.step_id AND src.state = 'succeeded'
        RETURNING s.step_id, s.output, s.position
    LOOP
        PERFORM podium_emit_event(p_run, 'step.completed', v_step.step_id, 0, 'succeeded',
                                  jsonb_build_object('output', v_step.output,
                                                     'copied_from_run_id', p_source));
        v_count := v_count + 1;
    END LOOP;
    PERFORM podium_recount_dependencies(p_run);
    UPDATE orchestration_runs
       SET steps_remaining = (SELECT count(*) FROM orchestration_steps
                               WHERE run_id = p_run AND state <> 'succeeded')
     WHERE id = p_run;
    RETURN v_count;
END
$$;

-- Cancel a run: every unfinished step is cancelled (a late result is then fenced),
-- run.cancelled is emitted and every replica is told to cancel the run's agent calls.
-- Returns the run's state afterwards, or NULL when the run does not exist.
CREATE OR REPLACE FUNCTION podium_cancel_run(p_run uuid, p_org text, p_reason text) RETURNS text
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

-- Cancel the unfinished child runs step p_step of run p_run started (the runs its agent
-- started with the attempt's step credential: they end with the attempt that started
-- them), with their descendants. The caller holds the run row lock (parent before
-- child). Returns how many it cancelled.
CREATE OR REPLACE FUNCTION podium_cancel_step_children(p_run uuid, p_step text, p_reason text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_child record;
    v_count integer := 0;
BEGIN
    FOR v_child IN
        SELECT c.id, c.organization_id FROM orchestration_runs c
         WHERE c.parent_run_id = p_run AND c.parent_step_id = p_step
           AND c.state IN ('created', 'running', 'paused')
         ORDER BY c.created_at, c.id
    LOOP
        PERFORM podium_cancel_run(v_child.id, v_child.organization_id, p_reason);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;

-- Cancel every unfinished step of a run (the caller holds the run row lock), with a
-- step.cancelled event each carrying the state the run is moving to, written
-- set-based so a large run costs one statement; also cancel its pending approvals and
-- its unfinished child runs (parent before child: the lock order).
CREATE OR REPLACE FUNCTION podium_cancel_steps(p_run uuid, p_run_state text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_base bigint;
    v_count integer;
    v_child record;
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
    UPDATE human_approvals SET state = 'cancelled'
     WHERE run_id = p_run AND state = 'pending';
    -- Lock every unfinished descendant (children, theirs, ...) first, in one statement
    -- in (created_at, id) order, the order claimers and completers lock runs in: the
    -- depth-first walk below would lock a grandchild before an uncle created earlier.
    PERFORM 1 FROM orchestration_runs r
     WHERE r.id IN (WITH RECURSIVE below (id) AS (
                        SELECT c.id FROM orchestration_runs c
                         WHERE c.parent_run_id = p_run
                           AND c.state IN ('created', 'running', 'paused')
                        UNION
                        SELECT c.id FROM orchestration_runs c
                          JOIN below b ON c.parent_run_id = b.id
                         WHERE c.state IN ('created', 'running', 'paused'))
                    SELECT below.id FROM below)
     ORDER BY r.created_at, r.id
       FOR UPDATE OF r;
    FOR v_child IN
        SELECT c.id, c.organization_id FROM orchestration_runs c
         WHERE c.parent_run_id = p_run AND c.state IN ('created', 'running', 'paused')
         ORDER BY c.created_at, c.id
    LOOP
        PERFORM podium_cancel_run(v_child.id, v_child.organization_id,
                                  format('its parent run %s', p_run_state));
    END LOOP;
    RETURN v_count;
END
$$;

-- Fail a run whose step failed for good: cancel what is left, record the error and the
-- rollback hints of the completed steps (newest first, then the definition's), emit
-- run.failed and tell every replica to cancel the run's agent calls. The caller holds
-- the run row lock.
CREATE OR REPLACE FUNCTION podium_fail_run(p_run uuid, p_step text, p_error jsonb) RETURNS void
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

-- A child run that finished wakes the schedulers: their sweep completes the parent's
-- step waiting on it (podium_finished_children), in a transaction of its own, so a
-- child never locks its parent.
CREATE OR REPLACE FUNCTION podium_notify_child_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('podium_work', 'child');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER orchestration_runs_child_finished
    AFTER UPDATE OF state ON orchestration_runs
    FOR EACH ROW
    WHEN (NEW.parent_run_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION podium_notify_child_finished();

-- A run's events, attempts and conversations go with it: deleting runs (retention, a
-- parent's child runs by their foreign key's cascade) deletes theirs in the same
-- statement. They have no foreign key of their own (migration 0018_run_children): only
-- the engine writes them, for a run it holds locked, and each insert would pay the
-- check.
CREATE OR REPLACE FUNCTION podium_delete_run_children() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM orchestration_events e USING deleted_runs d WHERE e.run_id = d.id;
    DELETE FROM step_attempts a USING deleted_runs d WHERE a.run_id = d.id;
    DELETE FROM conversations c USING deleted_runs d WHERE c.run_id = d.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER orchestration_runs_delete_children
    AFTER DELETE ON orchestration_runs
    REFERENCING OLD TABLE AS deleted_runs
    FOR EACH STATEMENT EXECUTE FUNCTION podium_delete_run_children();
