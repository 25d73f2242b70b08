-- Human approvals: checkpoints before/after a step, failure reviews and an A2A agent's
-- question (input_required) park a step; a decision or an expiry moves it on.
-- Lock order: the run, then its steps, then the approval (see 30_runs.sql).

-- Record an attempt outcome that parks or skips the step instead of finishing it the
-- hot way (called by podium_complete_step, which holds the run row lock):
--   checkpoint_before  the input was resolved, the agent not called: the attempt is
--                      given back and the step waits on a checkpoint_before approval
--                      (p_output = {"task_id": the claim's task id}, its fence);
--   checkpoint_after   the agent succeeded: the output is kept and the step waits on a
--                      checkpoint_after approval before its dependents see it;
--   review             the last attempt failed and the policy says notify_human: the
--                      step waits on a failure_review approval (retry, skip or fail);
--   skipped            the last attempt failed and the policy says allow_skip, or the
--                      step's condition is false (error code CONDITION_FALSE: the
--                      agent was not called, the attempt is given back);
--   iterate            an iteration of a loop step succeeded and its `until` does not
--                      hold yet: podium_iterate_step queues the step again;
--   input_required     an A2A agent asked for more input (INPUT_REQUIRED): the step
--                      waits on an input_required approval whose subject (p_output) is
--                      the question and the A2A task id; the answer (DecideApproval
--                      APPROVE with input, or ContinueRun) continues that task.
-- Fenced like every completion. Returns the run's state, NULL when fenced.
CREATE OR REPLACE FUNCTION podium_park_step(
    p_run uuid, p_step text, p_attempt integer, p_outcome text, p_output jsonb,
    p_error jsonb, p_input jsonb, p_input_tokens bigint, p_output_tokens bigint,
    p_cost_usd numeric
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_cp jsonb;
    v_kind text;
    v_subject jsonb;
    v_approval uuid;
    v_prompt text;
    v_expires double precision;
BEGIN
    IF p_outcome = 'iterate' THEN  -- a loop step runs again (55_conditions.sql)
        RETURN podium_iterate_step(p_run, p_step, p_attempt, p_output, p_input,
                                   p_input_tokens, p_output_tokens, p_cost_usd);
    END IF;
    SELECT s.organization_id, s.spec, s.conversation_id INTO v_step
      FROM orchestration_steps s
     WHERE s.run_id = p_run AND s.step_id = p_step AND s.attempt = p_attempt
       AND s.state = 'running'
       FOR UPDATE;
    -- A checkpoint_before park gives its attempt number back, so the attempt dispatched
    -- after the approval runs under the same number: a late copy of the park (a batch
    -- retried after an unconfirmed commit) must not park that approved attempt again.
    IF NOT FOUND OR (p_outcome = 'checkpoint_before'
                     AND coalesce((v_step.spec ->> 'checkpoint_passed')::boolean, false)) THEN
        RETURN NULL;
    END IF;
    -- The attempt number alone cannot fence a checkpoint_before park (it is reused, also
    -- after a ResumeRun that clears checkpoint_passed): the park names the task id of its
    -- claim (p_output.task_id), and only the attempt row of that claim matches.
    IF p_outcome = 'checkpoint_before' AND NOT EXISTS (
           SELECT 1 FROM step_attempts a
            WHERE a.run_id = p_run AND a.step_id = p_step AND a.attempt = p_attempt
              AND a.task_id::text = p_output ->> 'task_id') THEN
        RETURN NULL;
    END IF;
    UPDATE orchestration_runs
       SET input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens,
           cost_usd = cost_usd + p_cost_usd
     WHERE id = p_run;
    IF p_outcome = 'checkpoint_before'
       OR (p_outcome = 'skipped' AND p_error ->> 'code' = 'CONDITION_FALSE') THEN
        -- No agent was called: this was not an attempt (a checkpoint, or a step whose
        -- condition is false).
        DELETE FROM step_attempts
         WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt;
        UPDATE orchestration_steps
           SET attempt = p_attempt - 1,
               started_at = CASE WHEN p_attempt = 1 THEN NULL ELSE started_at END
         WHERE run_id = p_run AND step_id = p_step;
    ELSE
        UPDATE step_attempts SET ended_at = now(), error = p_error
         WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt;
    END IF;
    UPDATE orchestration_steps
       SET input = coalesce(p_input, input),
           output = CASE WHEN p_outcome = 'checkpoint_after' THEN p_output END,
           error = p_error,
           lease_owner = NULL,
           lease_expires_at = NULL,
           input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens,
           cost_usd = cost_usd + p_cost_usd
     WHERE run_id = p_run AND step_id = p_step;

    IF p_outcome = 'skipped' THEN
        RETURN podium_skip_step(p_run, p_step, p_error);
    END IF;

    v_cp := coalesce(v_step.spec -> 'checkpoint', '{}'::jsonb);
    IF p_outcome = 'input_required' THEN
        v_kind := 'input_required';
        v_subject := p_output;
        v_prompt := coalesce(nullif(p_output ->> 'question', ''),
                             format('The agent of step %s needs more input.', p_step));
        v_expires := 0;
        v_cp := '{}'::jsonb;
    ELSIF p_outcome = 'review' THEN
        v_kind := 'failure_review';
        v_subject := jsonb_build_object('error', p_error, 'input', p_input);
        v_prompt := format('Step %s failed after its last attempt: %s. Retry, skip or fail?',
                           p_step, coalesce(p_error ->> 'message', 'unknown error'));
        v_expires := 0;
    ELSE
        v_kind := p_outcome;  -- checkpoint_before or checkpoint_after
        v_subject := CASE p_outcome WHEN 'checkpoint_before'
                         THEN jsonb_build_object('input', p_input)
                         ELSE jsonb_build_object('output', p_output) END;
        v_prompt := coalesce(nullif(v_cp ->> 'prompt', ''),
                             format('Approve step %s %s it runs?', p_step,
                                    CASE p_outcome WHEN 'checkpoint_before' THEN 'before'
                                                   ELSE 'after' END));
        v_expires := coalesce((v_cp ->> 'expires_after_seconds')::double precision, 0);
    END IF;
    INSERT INTO human_approvals
        (organization_id, run_id, step_id, kind, prompt, subject, approvers, expires_at,
         on_expiry, on_reject, conversation_id)
    VALUES (
        v_step.organization_id, p_run, p_step, v_kind, v_prompt, v_subject,
        CASE WHEN v_kind = 'failure_review' THEN '{}'::text[]
             ELSE ARRAY(SELECT jsonb_array_elements_text(coalesce(v_cp -> 'approvers',
                                                                  '[]'::jsonb))) END,
        CASE WHEN v_expires > 0 THEN now() + make_interval(secs => v_expires) END,
        CASE WHEN v_kind = 'failure_review' THEN 'fail'
             WHEN v_cp ->> 'on_expiry' = 'EXPIRY_ACTION_APPROVE' THEN 'approve'
             ELSE 'reject' END,
        CASE WHEN v_cp ->> 'on_reject' = 'REJECT_ACTION_SKIP' THEN 'skip' ELSE 'fail' END,
        v_step.conversation_id)
    RETURNING id INTO v_approval;
    UPDATE orchestration_steps
       SET state = 'awaiting_approval', approval_id = v_approval
     WHERE run_id = p_run AND step_id = p_step;
    PERFORM podium_emit_event(
        p_run, 'step.awaiting_approval', p_step,
        CASE WHEN p_outcome = 'checkpoint_before' THEN p_attempt - 1 ELSE p_attempt END,
        'awaiting_approval',
        jsonb_strip_nulls(jsonb_build_object('approval_id', v_approval, 'kind', v_kind,
                                             'prompt', v_prompt, 'error', p_error)));
    IF podium_pause_if_held(p_run) THEN
        RETURN 'paused';
    END IF;
    RETURN 'running';
END
$$;

-- A running run whose remaining steps are all held by a human (awaiting approval, or
-- pending behind such a step: nothing queued, running or waiting for a retry) becomes
-- `paused` with a run.paused event. Any decision makes it running again
-- (podium_decide_approval). The caller holds the run row lock. Returns whether it paused.
CREATE OR REPLACE FUNCTION podium_pause_if_held(p_run uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM orchestration_steps
                WHERE run_id = p_run AND state IN ('queued', 'running', 'waiting_retry'))
       OR NOT EXISTS (SELECT 1 FROM orchestration_steps
                       WHERE run_id = p_run AND state = 'awaiting_approval') THEN
        RETURN false;
    END IF;
    UPDATE orchestration_runs SET state = 'paused', updated_at = now()
     WHERE id = p_run AND state = 'running';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM podium_emit_event(
        p_run, 'run.paused', NULL, NULL, NULL,
        jsonb_build_object('awaiting', (SELECT jsonb_agg(step_id ORDER BY position)
                                          FROM orchestration_steps
                                         WHERE run_id = p_run
                                           AND state = 'awaiting_approval')));
    RETURN true;
END
$$;

-- Decide a pending approval (p_state 'decided'), or apply its default action on expiry
-- (p_state 'expired'). Lock order: the run, then the approval. Returns a status:
--   'ok'                 decided now;
--   'unchanged'          already decided with the same request_id and decision (a
--                        retried call);
--   'not_found', 'already_decided', 'already_expired', 'already_cancelled',
--   'invalid_decision'   (the decision does not fit the approval's kind),
--   'forbidden'          (the actor is not one of the approvers),
--   'budget_exceeded'    (approving a budget approval with these limits would leave
--                        the budget exhausted: 65_budgets.sql).
-- p_budget_max_tokens, p_budget_max_cost_usd: a budget approval's new limits (NULL keeps
-- a limit; ignored for other kinds).
-- p_input: on approval, more input for the step (merged over its resolved input when
-- it runs; checkpoint_before) or a replacement output (checkpoint_after).
CREATE OR REPLACE FUNCTION podium_decide_approval(
    p_org text, p_approval uuid, p_decision text, p_actor text, p_comment text,
    p_request_id text, p_state text, p_input jsonb, p_budget_max_tokens bigint DEFAULT NULL,
    p_budget_max_cost_usd numeric DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
    v_a record;
    v_action text;
    v_error jsonb;
BEGIN
    SELECT run_id INTO v_run FROM human_approvals
     WHERE id = p_approval AND organization_id = p_org;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    PERFORM 1 FROM orchestration_runs WHERE id = v_run FOR UPDATE;
    SELECT * INTO v_a FROM human_approvals WHERE id = p_approval FOR UPDATE;
    IF v_a.state <> 'pending' THEN
        IF p_request_id IS NOT NULL AND v_a.request_id = p_request_id
           AND v_a.decision = p_decision THEN
            RETURN 'unchanged';
        END IF;
        RETURN 'already_' || v_a.state;
    END IF;
    IF (v_a.kind = 'failure_review') <> (p_decision IN ('retry', 'skip', 'fail'))
       OR p_decision NOT IN ('approve', 'reject', 'retry', 'skip', 'fail') THEN
        RETURN 'invalid_decision';
    END IF;
    IF v_a.kind = 'budget' AND p_decision = 'approve'
       AND NOT podium_budget_room(v_run, p_budget_max_tokens, p_budget_max_cost_usd) THEN
        RETURN 'budget_exceeded';  -- 65_budgets.sql
    END IF;
    IF p_state = 'decided' AND cardinality(v_a.approvers) > 0
       AND NOT (coalesce(p_actor, '') = ANY (v_a.approvers)) THEN
        RETURN 'forbidden';
    END IF;
    UPDATE human_approvals
       SET state = p_state, decision = p_decision, actor = p_actor, comment = p_comment,
           request_id = p_request_id, decided_at = now()
     WHERE id = p_approval;
    -- A decision lets the run go on (podium_refresh_run pauses it again if every
    -- remaining step is still held), unless a budget approval still holds it.
    UPDATE orchestration_runs SET state = 'running', updated_at = now()
     WHERE id = v_run AND state = 'paused'
       AND NOT EXISTS (SELECT 1 FROM human_approvals b
                        WHERE b.run_id = v_run AND b.state = 'pending' AND b.kind = 'budget');
    IF v_a.kind = 'budget' THEN
        PERFORM podium_emit_event(
            v_run, 'approval.decided', v_a.step_id, NULL, NULL,
            jsonb_strip_nulls(jsonb_build_object(
                'approval_id', p_approval, 'decision', p_decision, 'actor', p_actor,
                'comment', nullif(p_comment, ''), 'kind', v_a.kind,
                'expired', CASE WHEN p_state = 'expired' THEN true END)));
        PERFORM podium_decide_budget(v_run, v_a.step_id, p_approval, p_decision,
                                     p_budget_max_tokens, p_budget_max_cost_usd);
        RETURN 'ok';
    END IF;
    UPDATE orchestration_steps SET approval_id = NULL
     WHERE run_id = v_run AND step_id = v_a.step_id;
    PERFORM podium_emit_event(
        v_run, 'approval.decided', v_a.step_id, NULL, 'awaiting_approval',
        jsonb_strip_nulls(jsonb_build_object(
            'approval_id', p_approval, 'decision', p_decision, 'actor', p_actor,
            'comment', nullif(p_comment, ''), 'kind', v_a.kind,
            'expired', CASE WHEN p_state = 'expired' THEN true END)));

    v_action := CASE
        WHEN p_decision = 'approve' AND v_a.kind = 'checkpoint_before' THEN 'queue'
        WHEN p_decision = 'approve' AND v_a.kind = 'input_required' THEN 'answer'
        WHEN p_decision = 'approve' THEN 'succeed'
        WHEN p_decision = 'reject' THEN coalesce(v_a.on_reject, 'fail')
        ELSE p_decision END;  -- retry, skip, fail
    IF v_a.kind = 'failure_review' THEN
        SELECT error INTO v_error FROM orchestration_steps
         WHERE run_id = v_run AND step_id = v_a.step_id;
    ELSE
        v_error := jsonb_build_object(
            'code', CASE WHEN p_state = 'expired' THEN 'APPROVAL_EXPIRED'
                         WHEN v_a.kind = 'input_required' THEN 'INPUT_REFUSED'
                         ELSE 'CHECKPOINT_REJECTED' END,
            'message', CASE WHEN p_state = 'expired'
                            THEN 'the checkpoint expired without a decision'
                            ELSE format('rejected by %s%s', coalesce(nullif(p_actor, ''), 'an approver'),
                                        coalesce(': ' || nullif(p_comment, ''), '')) END,
            'retryable', false);
    END IF;

    IF v_action = 'answer' THEN
        -- The next attempt continues the agent's task with the answer as its input.
        UPDATE orchestration_steps
           SET state = 'queued', queued_at = clock_timestamp(), error = NULL,
               max_attempts = greatest(max_attempts, attempt + 1),
               spec = spec || jsonb_build_object('answer', jsonb_build_object(
                   'attempt', attempt + 1,
                   'task_id', v_a.subject ->> 'task_id',
                   'input', coalesce(p_input, '{}'::jsonb)))
         WHERE run_id = v_run AND step_id = v_a.step_id;
        PERFORM podium_emit_event(v_run, 'step.queued', v_a.step_id, NULL, 'queued',
                                  '{"reason": "answered"}');
        PERFORM pg_notify('podium_work', '');
    ELSIF v_action IN ('queue', 'retry') THEN
        UPDATE orchestration_steps
           SET state = 'queued', queued_at = clock_timestamp(),
               spec = CASE WHEN v_action = 'queue'
                           THEN jsonb_set(spec, '{checkpoint_passed}', 'true')
                                || CASE WHEN p_input IS NOT NULL
                                        THEN jsonb_build_object('approved_input', p_input)
                                        ELSE '{}'::jsonb END
                           ELSE spec END,
               max_attempts = CASE WHEN v_action = 'retry' THEN attempt + 1
                                   ELSE max_attempts END
         WHERE run_id = v_run AND step_id = v_a.step_id;
        PERFORM podium_emit_event(v_run, 'step.queued', v_a.step_id, NULL, 'queued',
                                  jsonb_build_object('reason', p_decision));
        PERFORM pg_notify('podium_work', '');
    ELSIF v_action = 'succeed' THEN
        UPDATE orchestration_steps
           SET state = 'succeeded', ended_at = now(), error = NULL,
               output = coalesce(p_input, output)
         WHERE run_id = v_run AND step_id = v_a.step_id;
        PERFORM podium_emit_event(
            v_run, 'step.completed', v_a.step_id, NULL, 'succeeded',
            (SELECT jsonb_build_object('output', s.output) FROM orchestration_steps s
              WHERE s.run_id = v_run AND s.step_id = v_a.step_id));
        PERFORM podium_refresh_run(v_run);
    ELSIF v_action = 'skip' THEN
        PERFORM podium_skip_step(v_run, v_a.step_id, v_error);
    ELSE
        PERFORM podium_fail_step(v_run, v_a.step_id, v_error);
    END IF;
    RETURN 'ok';
END
$$;

-- Apply the default action of up to p_limit expired approvals (approve or reject for a
-- checkpoint as configured; fail for a failure review). Returns how many. Runs are
-- visited in the claimers' lock order.
CREATE OR REPLACE FUNCTION podium_expire_approvals(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_a record;
    v_count integer := 0;
BEGIN
    FOR v_a IN
        SELECT a.id, a.organization_id, a.kind, a.on_expiry
          FROM human_approvals a
          JOIN orchestration_runs r ON r.id = a.run_id
         WHERE a.state = 'pending' AND a.expires_at <= now()
         ORDER BY r.created_at, r.id, a.created_at
         LIMIT p_limit
    LOOP
        IF podium_decide_approval(
               v_a.organization_id, v_a.id,
               CASE WHEN v_a.kind = 'failure_review' THEN 'fail'
                    ELSE coalesce(v_a.on_expiry, 'reject') END,
               'podium', 'expired', NULL, 'expired', NULL, NULL, NULL) = 'ok' THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END
$$;
