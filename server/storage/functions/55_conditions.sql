-- Control flow of a step beyond the DAG: the iterations of a loop step (`loop:`).
-- Conditions (`when:`) need no SQL of their own: a false one is a `skipped` outcome
-- (podium_park_step gives the attempt back, podium_skip_step leaves the dependents).
-- Lock order: see 30_runs.sql.

-- One iteration of a loop step succeeded and its `until` does not hold yet (decided by
-- the executor, engine/loops.py): keep its output as the step's output and in the spec
-- (`loop_output`, which the next iteration's input may reference, `loop_iteration`),
-- end the attempt, give the next iteration the step's full attempts again, and queue
-- the step. Fenced like every completion (NULL when the attempt is stale). Called by
-- podium_park_step (outcome 'iterate'); the caller holds the run row lock. Returns the
-- run's state.
CREATE OR REPLACE FUNCTION podium_iterate_step(
    p_run uuid, p_step text, p_attempt integer, p_output jsonb, p_input jsonb,
    p_input_tokens bigint, p_output_tokens bigint, p_cost_usd numeric
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_iteration integer;
BEGIN
    UPDATE orchestration_steps
       SET state = 'queued',
           queued_at = clock_timestamp(),
           output = p_output,
           error = NULL,
           input = coalesce(p_input, input),
           spec = spec || jsonb_build_object(
               'loop_iteration', coalesce((spec ->> 'loop_iteration')::integer, 0) + 1,
               'loop_output', p_output),
           max_attempts = p_attempt
               + greatest(1, coalesce((spec -> 'on_failure' ->> 'max_attempts')::integer, 1)),
           next_attempt_at = NULL,
           lease_owner = NULL,
           lease_expires_at = NULL,
           input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens,
           cost_usd = cost_usd + p_cost_usd
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt AND state = 'running'
    RETURNING (spec ->> 'loop_iteration')::integer INTO v_iteration;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE step_attempts SET ended_at = now(), error = NULL
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt;
    UPDATE orchestration_runs
       SET input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens,
           cost_usd = cost_usd + p_cost_usd,
           updated_at = now()
     WHERE id = p_run;
    PERFORM podium_emit_event(p_run, 'step.queued', p_step, p_attempt, 'queued',
                              jsonb_build_object('iteration', v_iteration + 1,
                                                 'previous_output', p_output));
    PERFORM pg_notify('podium_work', '');
    RETURN (SELECT state FROM orchestration_runs WHERE id = p_run);
END
$$;
