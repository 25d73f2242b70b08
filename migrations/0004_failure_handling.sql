-- 0004_failure_handling: what happens after a step's last attempt (skip, failure review),
-- human checkpoints (approvals), ContinueRun on a waiting run, ResumeRun, ForkRun, and
-- sub-orchestrations (child runs).
--
-- Lock order stays the one of 0002: the run row first, then its step rows, then its
-- approvals. A parent run is always locked before its child runs; a child never locks
-- its parent (a finished child is noticed by the parent's scheduler sweep, see
-- podium_finished_children in server/storage/runs.sql).

ALTER TABLE orchestration_runs
    ADD COLUMN depth integer NOT NULL DEFAULT 0 CHECK (depth >= 0);
COMMENT ON COLUMN orchestration_runs.depth IS
    'Nesting depth of a sub-orchestration: 0 for a top-level run, parent depth + 1 for a child.';

ALTER TABLE orchestration_runs
    ADD COLUMN forked_from_run_id uuid REFERENCES orchestration_runs (id) ON DELETE SET NULL;
COMMENT ON COLUMN orchestration_runs.forked_from_run_id IS
    'ForkRun: the finished run whose outputs upstream of the forked steps were copied.';

-- The parent's sweep: running steps that wait on a child run.
CREATE INDEX orchestration_steps_child_idx
    ON orchestration_steps (child_run_id) WHERE state = 'running' AND child_run_id IS NOT NULL;

-- An A2A agent's question (INPUT_REQUIRED) parks its step like an approval.
ALTER TABLE human_approvals DROP CONSTRAINT human_approvals_kind_check;
ALTER TABLE human_approvals ADD CONSTRAINT human_approvals_kind_check
    CHECK (kind IN ('checkpoint_before', 'checkpoint_after', 'failure_review', 'input_required'));

-- Pending approvals of a run (cancelled with it).
CREATE INDEX human_approvals_run_pending_idx
    ON human_approvals (run_id) WHERE state = 'pending';

-- Re-count the unfinished dependencies of every pending step of a run from the rows (a
-- skipped dependency counts as finished). The caller holds the run row lock.
CREATE FUNCTION podium_recount_dependencies(p_run uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE orchestration_steps s
       SET pending_dependencies = (
               SELECT count(*) FROM orchestration_steps u
                WHERE u.run_id = p_run AND u.step_id = ANY (s.depends_on)
                  AND u.state NOT IN ('succeeded', 'skipped'))
     WHERE s.run_id = p_run AND s.state = 'pending';
END
$$;

-- Re-count every pending step's unfinished dependencies (a skipped dependency counts as
-- finished: its dependents see a null output), queue those with none left, and complete
-- the run when no step is left unfinished. The slow path after a skip, an approval or a
-- resume; the hot path (a plain success) keeps the incremental counts of
-- podium_complete_step. The caller holds the run row lock. Returns the run's state.
CREATE FUNCTION podium_refresh_run(p_run uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_queued integer := 0;
    v_remaining integer;
    v_state text;
BEGIN
    PERFORM podium_recount_dependencies(p_run);
    FOR v_step IN
        UPDATE orchestration_steps s
           SET state = 'queued', queued_at = clock_timestamp()
         WHERE s.run_id = p_run AND s.state = 'pending' AND s.pending_dependencies = 0
        RETURNING s.step_id, s.attempt, s.position
    LOOP
        PERFORM podium_emit_event(p_run, 'step.queued', v_step.step_id, v_step.attempt,
                                  'queued', '{}');
        v_queued := v_queued + 1;
    END LOOP;
    SELECT count(*) INTO v_remaining FROM orchestration_steps
     WHERE run_id = p_run
       AND state NOT IN ('succeeded', 'skipped', 'failed', 'cancelled');
    UPDATE orchestration_runs r
       SET steps_remaining = v_remaining,
           state = CASE WHEN v_remaining = 0 AND r.state = 'running' THEN 'succeeded'
                        ELSE r.state END,
           ended_at = CASE WHEN v_remaining = 0 AND r.state = 'running' THEN now()
                           ELSE r.ended_at END,
           output = CASE WHEN v_remaining = 0 AND r.state = 'running' THEN
                        (SELECT coalesce(jsonb_object_agg(s.step_id, s.output), '{}'::jsonb)
                           FROM orchestration_steps s WHERE s.run_id = p_run AND s.is_sink)
                    ELSE r.output END,
           updated_at = now()
     WHERE r.id = p_run
    RETURNING r.state INTO v_state;
    IF v_remaining = 0 AND v_state = 'succeeded' THEN
        PERFORM podium_emit_event(p_run, 'run.completed', NULL, NULL, NULL, '{}');
    ELSIF v_remaining > 0 AND v_queued = 0 AND v_state = 'running' THEN
        IF podium_pause_if_held(p_run) THEN
            v_state := 'paused';
        END IF;
    END IF;
    IF v_queued > 0 THEN
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN v_state;
END
$$;

-- A running run whose remaining steps are all held by a human (awaiting approval, or
-- pending behind such a step: nothing queued, running or waiting for a retry) becomes
-- `paused` with a run.paused event. Any decision makes it running again
-- (podium_decide_approval). The caller holds the run row lock. Returns whether it paused.
CREATE FUNCTION podium_pause_if_held(p_run uuid) RETURNS boolean
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

-- Skip every (transitive) dependent of a skipped step whose failure policy says
-- skip_dependents; they are all still pending. The caller holds the run row lock.
CREATE FUNCTION podium_skip_dependents(p_run uuid, p_step text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_count integer := 0;
    v_error jsonb := jsonb_build_object(
        'code', 'UPSTREAM_SKIPPED',
        'message', format('step %s was skipped and its policy skips its dependents', p_step),
        'retryable', false);
BEGIN
    FOR v_step IN
        WITH RECURSIVE below (step_id) AS (
            SELECT d.step_id FROM orchestration_steps d
             WHERE d.run_id = p_run AND p_step = ANY (d.depends_on)
            UNION
            SELECT d.step_id FROM orchestration_steps d
              JOIN below b ON b.step_id = ANY (d.depends_on)
             WHERE d.run_id = p_run
        )
        UPDATE orchestration_steps s
           SET state = 'skipped', ended_at = now(), error = v_error
          FROM below b
         WHERE s.run_id = p_run AND s.step_id = b.step_id AND s.state = 'pending'
        RETURNING s.step_id, s.attempt, s.position
    LOOP
        PERFORM podium_emit_event(p_run, 'step.skipped', v_step.step_id, v_step.attempt,
                                  'skipped', jsonb_build_object('error', v_error));
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;

-- Skip one step (its error kept for operators), then its dependents when its policy
-- says so, then refresh the run. The caller holds the run row lock and has already
-- moved the step out of its previous state. Returns the run's state.
CREATE FUNCTION podium_skip_step(p_run uuid, p_step text, p_error jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer;
    v_skip_deps boolean;
BEGIN
    UPDATE orchestration_steps
       SET state = 'skipped', ended_at = now(), error = p_error, output = NULL,
           approval_id = NULL, lease_owner = NULL, lease_expires_at = NULL
     WHERE run_id = p_run AND step_id = p_step
    RETURNING attempt, coalesce((spec -> 'on_failure' ->> 'skip_dependents')::boolean, false)
         INTO v_attempt, v_skip_deps;
    PERFORM podium_emit_event(p_run, 'step.skipped', p_step, v_attempt, 'skipped',
                              jsonb_build_object('error', p_error));
    IF v_skip_deps THEN
        PERFORM podium_skip_dependents(p_run, p_step);
    END IF;
    RETURN podium_refresh_run(p_run);
END
$$;

-- Fail one step for good and, with it, the run. The caller holds the run row lock.
CREATE FUNCTION podium_fail_step(p_run uuid, p_step text, p_error jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer;
BEGIN
    UPDATE orchestration_steps
       SET state = 'failed', ended_at = now(), error = p_error, approval_id = NULL,
           lease_owner = NULL, lease_expires_at = NULL
     WHERE run_id = p_run AND step_id = p_step
    RETURNING attempt INTO v_attempt;
    PERFORM podium_emit_event(p_run, 'step.failed', p_step, v_attempt, 'failed',
                              jsonb_build_object('error', p_error));
    PERFORM podium_fail_run(p_run, p_step, p_error);
    RETURN 'failed';
END
$$;

-- Record an attempt outcome that parks or skips the step instead of finishing it the
-- hot way (called by podium_complete_step, which holds the run row lock):
--   checkpoint_before  the input was resolved, the agent not called: the attempt is
--                      given back and the step waits on a checkpoint_before approval
--                      (p_output = {"task_id": the claim's task id}, its fence);
--   checkpoint_after   the agent succeeded: the output is kept and the step waits on a
--                      checkpoint_after approval before its dependents see it;
--   review             the last attempt failed and the policy says notify_human: the
--                      step waits on a failure_review approval (retry, skip or fail);
--   skipped            the last attempt failed and the policy says allow_skip;
--   input_required     an A2A agent asked for more input (INPUT_REQUIRED): the step
--                      waits on an input_required approval whose subject (p_output) is
--                      the question and the A2A task id; the answer (DecideApproval
--                      APPROVE with input, or ContinueRun) continues that task.
-- Fenced like every completion. Returns the run's state, NULL when fenced.
CREATE FUNCTION podium_park_step(
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
    IF p_outcome = 'checkpoint_before' THEN
        -- No agent was called: this was not an attempt.
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

-- Decide a pending approval (p_state 'decided'), or apply its default action on expiry
-- (p_state 'expired'). Lock order: the run, then the approval. Returns a status:
--   'ok'                 decided now;
--   'unchanged'          already decided with the same request_id and decision (a
--                        retried call);
--   'not_found', 'already_decided', 'already_expired', 'already_cancelled',
--   'invalid_decision'   (the decision does not fit the approval's kind),
--   'forbidden'          (the actor is not one of the approvers).
-- p_input: on approval, more input for the step (merged over its resolved input when
-- it runs; checkpoint_before) or a replacement output (checkpoint_after).
CREATE FUNCTION podium_decide_approval(
    p_org text, p_approval uuid, p_decision text, p_actor text, p_comment text,
    p_request_id text, p_state text, p_input jsonb
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
    IF p_state = 'decided' AND cardinality(v_a.approvers) > 0
       AND NOT (coalesce(p_actor, '') = ANY (v_a.approvers)) THEN
        RETURN 'forbidden';
    END IF;
    UPDATE human_approvals
       SET state = p_state, decision = p_decision, actor = p_actor, comment = p_comment,
           request_id = p_request_id, decided_at = now()
     WHERE id = p_approval;
    -- A decision lets the run go on (podium_refresh_run pauses it again if every
    -- remaining step is still held).
    UPDATE orchestration_runs SET state = 'running', updated_at = now()
     WHERE id = v_run AND state = 'paused';
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
CREATE FUNCTION podium_expire_approvals(p_limit integer) RETURNS integer
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
               'podium', 'expired', NULL, 'expired', NULL) = 'ok' THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END
$$;

-- ContinueRun: start a created run, or give more input to a running run that waits on
-- a checkpoint (the input is merged over the run's; steps resolved later see it) or on
-- an agent's question (A2A INPUT_REQUIRED: the input is the answer sent to the agent).
-- Returns 'started', 'continued', the run's state when neither applies, or NULL when the
-- run does not exist.
CREATE FUNCTION podium_continue_run(p_run uuid, p_org text, p_input jsonb) RETURNS text
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
                                           NULL, 'decided', coalesce(p_input, '{}'::jsonb));
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
-- their outputs); attempts keep counting (they fence late results) and each re-run step
-- gets its full max_attempts again; run_attempt + 1. Returns the run's state before the
-- call (the caller refuses anything but failed or cancelled), 'child' for the child run of
-- a sub-orchestration (resumed through its parent), NULL when it does not exist.
CREATE FUNCTION podium_resume_run(p_run uuid, p_org text) RETURNS text
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
           spec = s.spec - 'checkpoint_passed' - 'approved_input' - 'answer',
           max_attempts = s.attempt
               + greatest(1, coalesce((s.spec -> 'on_failure' ->> 'max_attempts')::integer, 1))
      FROM redo r
     WHERE s.run_id = p_run AND s.step_id = r.step_id;
    UPDATE orchestration_runs
       SET state = 'running', run_attempt = run_attempt + 1, error = NULL, ended_at = NULL,
           rollback_hints = NULL, output = NULL, started_at = coalesce(started_at, now()),
           updated_at = now()
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
CREATE FUNCTION podium_fork_steps(p_run uuid, p_source uuid, p_copy text[]) RETURNS integer
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

-- podium_cancel_steps (0002) now also cancels the run's pending approvals and its
-- unfinished child runs (parent before child: the lock order).
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

-- podium_complete_step (0002), now also taking the outcomes of podium_park_step:
-- Record the outcome of one attempt, fenced: nothing happens unless the step is still
-- running that attempt (a late result from a stale attempt or a cancelled run changes
-- nothing; returns NULL). p_outcome: 'succeeded', 'failed' (final), 'retry' (waits
-- until p_next_attempt_at), or 'checkpoint_before', 'checkpoint_after', 'review',
-- 'skipped' (see podium_park_step). Success promotes dependents whose last dependency this was
-- and completes the run after its last step; failure fails the run. Returns the run's
-- state afterwards ('succeeded' or 'failed' when this outcome ended it), NULL when fenced.
CREATE OR REPLACE FUNCTION podium_complete_step(
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
    IF p_outcome NOT IN ('succeeded', 'failed', 'retry') THEN
        RETURN podium_park_step(p_run, p_step, p_attempt, p_outcome, p_output, p_error,
                                p_input, p_input_tokens, p_output_tokens, p_cost_usd);
    END IF;
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
    -- Only a run with a pending approval can end up held by humans (a probe of a
    -- small partial index; nothing else on the hot path).
    IF v_state = 'succeeded' AND v_count = 0 AND NOT v_done
       AND EXISTS (SELECT 1 FROM human_approvals
                    WHERE run_id = p_run AND state = 'pending') THEN
        IF podium_pause_if_held(p_run) THEN
            v_run_state := 'paused';
        END IF;
    END IF;
    PERFORM pg_notify('podium_events', p_run::text);
    IF v_count > 0 OR v_state = 'waiting_retry' THEN
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN v_run_state;
END
$$;

-- A child run that finished wakes the schedulers: their sweep completes the parent's
-- step waiting on it (podium_finished_children), in a transaction of its own, so a
-- child never locks its parent.
CREATE FUNCTION podium_notify_child_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('podium_work', 'child');
    RETURN NULL;
END
$$;

CREATE TRIGGER orchestration_runs_child_finished
    AFTER UPDATE OF state ON orchestration_runs
    FOR EACH ROW
    WHEN (NEW.parent_run_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION podium_notify_child_finished();
