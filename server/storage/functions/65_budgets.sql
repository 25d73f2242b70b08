-- Run budgets: a run whose plan has `execution.budget` gets a run_budgets row, and it and
-- its child runs carry its id in budget_run_id (podium_create_run). The usage of a
-- budget is the sum over those runs (orchestration_runs_budget_idx), read without a lock:
-- a completion of one run holds only that run's row lock, so completions of a parent
-- and its children never wait on each other, and each sum sees every completion
-- committed before it. Two completions of different runs of one budget committing at the
-- same moment may each miss the other's usage: the next completion or the dispatch check
-- (podium_budget_gate) sees both. Over-spend is bounded by the steps in flight when the
-- limit was reached. Lock order: the run row first (see 30_runs.sql); run_budgets rows
-- are only written by a decision, after its run row.

-- The usage and limits of budget p_budget. exceeded: a limit (> 0) is reached.
CREATE OR REPLACE FUNCTION podium_budget_state(
    p_budget uuid,
    OUT used_tokens bigint, OUT used_cost_usd numeric, OUT max_tokens bigint,
    OUT max_cost_usd numeric, OUT on_exceed text, OUT exceeded boolean
)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT b.max_tokens, b.max_cost_usd, b.on_exceed
      INTO max_tokens, max_cost_usd, on_exceed
      FROM run_budgets b WHERE b.run_id = p_budget;
    SELECT coalesce(sum(r.input_tokens + r.output_tokens), 0), coalesce(sum(r.cost_usd), 0)
      INTO used_tokens, used_cost_usd
      FROM orchestration_runs r WHERE r.budget_run_id = p_budget;
    exceeded := coalesce((max_tokens > 0 AND used_tokens >= max_tokens)
                         OR (max_cost_usd > 0 AND used_cost_usd >= max_cost_usd), false);
END
$$;

-- After an attempt of p_run was recorded (the caller holds the run row lock and the
-- run is p_state, running): when its budget is exhausted and no budget approval of the
-- run is pending, pause or fail the run (podium_budget_exceeded). Returns the run state.
CREATE OR REPLACE FUNCTION podium_budget_check(
    p_run uuid, p_step text, p_budget uuid, p_state text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    v := podium_budget_state(p_budget);
    IF NOT v.exceeded OR EXISTS (SELECT 1 FROM human_approvals a
                                  WHERE a.run_id = p_run AND a.state = 'pending'
                                    AND a.kind = 'budget') THEN
        RETURN p_state;
    END IF;
    RETURN podium_budget_exceeded(p_run, p_step, p_budget, v);
END
$$;

-- The budget of p_run (p_budget, in state v) is exhausted: run.budget_exceeded, then
-- on_exceed fail: the run fails with BUDGET_EXCEEDED (its running steps are cancelled);
-- pause: a pending approval of kind budget on the step p_step (the one whose attempt
-- reached the limit, or that was about to start), and the running run becomes paused
-- (no step of it is claimed until a decision). Returns the run's state.
CREATE OR REPLACE FUNCTION podium_budget_exceeded(
    p_run uuid, p_step text, p_budget uuid, v record
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_detail jsonb;
    v_approval uuid;
    v_message text;
BEGIN
    v_detail := jsonb_build_object(
        'budget_run_id', p_budget, 'used_tokens', v.used_tokens,
        'used_cost_usd', v.used_cost_usd, 'max_tokens', v.max_tokens,
        'max_cost_usd', v.max_cost_usd, 'on_exceed', v.on_exceed);
    v_message := format('the run used %s tokens and %s USD of its budget (%s)',
                        v.used_tokens, round(v.used_cost_usd, 6),
                        concat_ws(', ',
                                  CASE WHEN v.max_tokens > 0
                                       THEN format('max %s tokens', v.max_tokens) END,
                                  CASE WHEN v.max_cost_usd > 0
                                       THEN format('max %s USD', v.max_cost_usd) END));
    PERFORM podium_emit_event(p_run, 'run.budget_exceeded', p_step, NULL, NULL, v_detail);
    IF v.on_exceed = 'fail' THEN
        PERFORM podium_fail_run(p_run, p_step, jsonb_build_object(
            'code', 'BUDGET_EXCEEDED', 'message', v_message, 'retryable', false));
        RETURN 'failed';
    END IF;
    INSERT INTO human_approvals
        (organization_id, run_id, step_id, kind, prompt, subject, on_expiry, on_reject)
    SELECT r.organization_id, p_run, p_step, 'budget',
           v_message || '. Approve with a higher budget to continue, or reject to fail the run.',
           v_detail, NULL, 'fail'
      FROM orchestration_runs r WHERE r.id = p_run
    RETURNING id INTO v_approval;
    UPDATE orchestration_runs SET state = 'paused', updated_at = now()
     WHERE id = p_run AND state = 'running';
    IF FOUND THEN
        PERFORM podium_emit_event(p_run, 'run.paused', NULL, NULL, NULL,
                                  jsonb_build_object('budget_approval_id', v_approval));
    END IF;
    RETURN (SELECT state FROM orchestration_runs WHERE id = p_run);
END
$$;

-- Before a claimed step of a run with a budget is dispatched (StepExecutor): 'ok' when
-- the budget has room (two index reads, no lock, no write). Otherwise, under the run row
-- lock and fenced by the claim (attempt, running, task id): the attempt is given back
-- (the step is queued again, step.queued with reason budget), and the run is paused or
-- failed like after a completion ('paused' or 'failed'); 'stale' when fenced.
CREATE OR REPLACE FUNCTION podium_budget_gate(
    p_run uuid, p_step text, p_attempt integer, p_task uuid
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_budget uuid;
    v record;
    v_state text;
BEGIN
    SELECT budget_run_id INTO v_budget FROM orchestration_runs WHERE id = p_run;
    IF v_budget IS NULL OR NOT (podium_budget_state(v_budget)).exceeded THEN
        RETURN 'ok';
    END IF;
    SELECT state INTO v_state FROM orchestration_runs WHERE id = p_run FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM orchestration_steps s
                     JOIN step_attempts a ON a.run_id = s.run_id AND a.step_id = s.step_id
                                         AND a.attempt = s.attempt
                    WHERE s.run_id = p_run AND s.step_id = p_step AND s.attempt = p_attempt
                      AND s.state = 'running' AND a.task_id = p_task) THEN
        RETURN 'stale';
    END IF;
    v := podium_budget_state(v_budget);  -- again, under the lock
    IF NOT v.exceeded THEN
        RETURN 'ok';
    END IF;
    DELETE FROM step_attempts
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt;
    UPDATE orchestration_steps
       SET state = 'queued', attempt = p_attempt - 1, queued_at = clock_timestamp(),
           lease_owner = NULL, lease_expires_at = NULL,
           started_at = CASE WHEN p_attempt = 1 THEN NULL ELSE started_at END
     WHERE run_id = p_run AND step_id = p_step;
    PERFORM podium_emit_event(p_run, 'step.queued', p_step, NULL, 'queued',
                              '{"reason": "budget"}');
    IF v_state = 'running' AND NOT EXISTS (SELECT 1 FROM human_approvals a
                                             WHERE a.run_id = p_run AND a.state = 'pending'
                                               AND a.kind = 'budget') THEN
        RETURN podium_budget_exceeded(p_run, p_step, v_budget, v);
    END IF;
    PERFORM podium_notify_events(p_run);
    RETURN (SELECT state FROM orchestration_runs WHERE id = p_run);
END
$$;

-- Whether approving a budget approval of p_run with the limits given (NULL keeps a
-- limit) leaves the budget it draws on room (podium_decide_approval refuses it
-- otherwise, 'budget_exceeded', before writing anything).
CREATE OR REPLACE FUNCTION podium_budget_room(
    p_run uuid, p_max_tokens bigint, p_max_cost numeric
) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v record;
    v_tokens bigint;
    v_cost numeric;
BEGIN
    v := podium_budget_state((SELECT budget_run_id FROM orchestration_runs WHERE id = p_run));
    v_tokens := coalesce(p_max_tokens, v.max_tokens, 0);
    v_cost := coalesce(p_max_cost, v.max_cost_usd, 0);
    RETURN NOT ((v_tokens > 0 AND v.used_tokens >= v_tokens)
                OR (v_cost > 0 AND v.used_cost_usd >= v_cost));
END
$$;

-- Apply a decision on a budget approval (podium_decide_approval, which holds the run row
-- and has recorded the decision): approve sets the limits given (NULL keeps a limit) on
-- the budget the run draws on (run.budget_raised) and lets the run go on; reject (or an
-- expiry) fails the run with BUDGET_EXCEEDED.
CREATE OR REPLACE FUNCTION podium_decide_budget(
    p_run uuid, p_step text, p_approval uuid, p_decision text, p_max_tokens bigint,
    p_max_cost numeric
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_budget uuid;
    v_tokens bigint;
    v_cost numeric;
BEGIN
    IF p_decision = 'approve' THEN
        SELECT budget_run_id INTO v_budget FROM orchestration_runs WHERE id = p_run;
        UPDATE run_budgets
           SET max_tokens = coalesce(p_max_tokens, max_tokens),
               max_cost_usd = coalesce(p_max_cost, max_cost_usd)
         WHERE run_id = v_budget
        RETURNING max_tokens, max_cost_usd INTO v_tokens, v_cost;
        PERFORM podium_emit_event(
            p_run, 'run.budget_raised', p_step, NULL, NULL,
            jsonb_build_object('budget_run_id', v_budget, 'max_tokens', v_tokens,
                               'max_cost_usd', v_cost, 'approval_id', p_approval));
        PERFORM podium_pause_if_held(p_run);
        PERFORM pg_notify('podium_work', '');
    ELSE
        PERFORM podium_fail_run(p_run, p_step, jsonb_build_object(
            'code', 'BUDGET_EXCEEDED', 'message', 'the budget approval was rejected',
            'retryable', false));
    END IF;
END
$$;
