-- 0006_start_run: StartRun (and ForkRun, and a sub-orchestration's child run) in one
-- round trip.
--
-- podium_create_run does in one call what RunsRepository.create did in five statements
-- of a transaction (insert the run, insert its steps, run.created, podium_fork_steps for
-- a fork, podium_start_run), and returns what the StartRun response needs that the
-- caller does not already hold (ids, states, times, conversations, copied outputs), so
-- the server no longer reads the run back with its steps in a second transaction.

-- Create a run with its steps (p_steps: a JSON array of objects, as insert_steps takes
-- them), emit run.created, copy p_copy's outputs from p_forked_from (ForkRun) and start
-- it when p_start. Idempotent on (p_org, p_request_id): when that run exists nothing is
-- written and its id comes back with created = false (the caller reads its state).
-- One row: the run's generated fields, then, when p_return_steps, what its steps hold
-- that the caller did not send, as parallel arrays in no particular order (step_ids[i]
-- is the step of every other array's [i]; NULL arrays without p_return_steps).
CREATE FUNCTION podium_create_run(
    p_org text, p_definition_name text, p_definition_version integer, p_plan jsonb,
    p_input jsonb, p_metadata jsonb, p_labels jsonb, p_request_id text,
    p_max_parallel integer, p_bypass_cache boolean, p_webhook_url text,
    p_trace_context jsonb, p_parent_run uuid, p_parent_step text, p_depth integer,
    p_forked_from uuid, p_copy text[], p_steps jsonb, p_start boolean,
    p_return_steps boolean
) RETURNS TABLE (
    run_id uuid, created boolean, state text, run_attempt integer,
    last_event_sequence bigint, created_at timestamptz, started_at timestamptz,
    step_ids text[], step_states text[], step_attempts integer[],
    conversation_ids uuid[], queued_at timestamptz[], step_started_at timestamptz[],
    step_ended_at timestamptz[], step_inputs jsonb[], step_outputs jsonb[]
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_run uuid;
    v_count integer := jsonb_array_length(p_steps);
BEGIN
    INSERT INTO orchestration_runs
        (organization_id, definition_name, definition_version, plan, state, input,
         metadata, labels, request_id, max_parallel, bypass_cache, webhook_url,
         steps_remaining, trace_context, parent_run_id, parent_step_id, depth,
         forked_from_run_id)
    VALUES (p_org, p_definition_name, p_definition_version, p_plan, 'created', p_input,
            p_metadata, p_labels, p_request_id, p_max_parallel, p_bypass_cache,
            p_webhook_url, v_count, p_trace_context, p_parent_run, p_parent_step, p_depth,
            p_forked_from)
    ON CONFLICT (organization_id, request_id) DO NOTHING
    RETURNING id INTO v_run;
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
    INSERT INTO orchestration_steps
        (run_id, step_id, organization_id, position, state, agent, skill, depends_on,
         pending_dependencies, spec, max_attempts, timeout_seconds, queued_at,
         conversation_id, input_refs, is_sink)
    SELECT v_run, s.step_id, p_org, s.position, s.state, s.agent, s.skill, s.depends_on,
           s.pending_dependencies, s.spec, s.max_attempts, s.timeout_seconds,
           CASE WHEN s.state = 'queued' THEN now() END, gen_random_uuid(), s.input_refs,
           s.is_sink
      FROM jsonb_to_recordset(p_steps) AS s(
           step_id text, position integer, state text, agent text, skill text,
           depends_on text[], pending_dependencies integer, spec jsonb,
           max_attempts integer, timeout_seconds double precision, input_refs text[],
           is_sink boolean);
    PERFORM podium_emit_event(
        v_run, 'run.created', NULL, NULL, NULL,
        CASE WHEN p_forked_from IS NULL THEN jsonb_build_object('steps', v_count)
             ELSE jsonb_build_object('steps', v_count, 'forked_from_run_id', p_forked_from)
        END);
    IF p_forked_from IS NOT NULL THEN
        PERFORM podium_fork_steps(v_run, p_forked_from, p_copy);
    END IF;
    IF p_start THEN
        PERFORM podium_start_run(v_run);
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
