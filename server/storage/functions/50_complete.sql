-- An attempt's outcome: success promotes dependents (the hot path, incremental counts),
-- failure retries, fails or skips the step (the slow paths re-count from the rows).
-- Lock order: see 30_runs.sql.

-- Record the outcome of one attempt, fenced: nothing happens unless the step is still
-- running that attempt (a late result from a stale attempt or a cancelled run changes
-- nothing; returns NULL). p_outcome: 'succeeded', 'failed' (final), 'retry' (waits
-- until p_next_attempt_at), or 'checkpoint_before', 'checkpoint_after', 'review',
-- 'skipped', 'input_required' (see podium_park_step in 60_approvals.sql). Success
-- promotes dependents whose last dependency this was and completes the run after its
-- last step; failure fails the run. Returns the run's state afterwards ('succeeded' or
-- 'failed' when this outcome ended it), NULL when fenced.
CREATE OR REPLACE FUNCTION podium_complete_step(
    p_run uuid, p_step text, p_attempt integer, p_outcome text, p_output jsonb,
    p_error jsonb, p_input jsonb, p_next_attempt_at timestamptz,
    p_input_tokens bigint, p_output_tokens bigint, p_cost_usd numeric,
    p_model text DEFAULT ''
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_done record;
BEGIN
    v_done := podium_record_outcome(p_run, p_step, p_attempt, p_outcome, p_output, p_error,
                                    p_input, p_next_attempt_at, p_input_tokens,
                                    p_output_tokens, p_cost_usd, p_model);
    IF v_done.queued > 0 OR v_done.retry THEN
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN v_done.run_state;
END
$$;

-- podium_complete_step without waking the claimers: run_state as podium_complete_step
-- returns it, queued = how many steps it made runnable, retry = whether the step now
-- waits for a retry. The caller decides whether to NOTIFY podium_work.
--
-- With p_claim_limit > 0 (a completion's eager claim, podium_complete_steps, no
-- organization cap), a success that made steps of its run runnable also decides that
-- run's claim when the claim would take its simplest path (podium_pick_steps; no
-- budget, its share alone in the queue): picked = the queued steps of the run its free
-- slots allow, at most p_claim_limit, locked, in the claim's order, their step.started
-- events written with this outcome's events (one update of the run row, one insert).
-- The caller leases them (podium_lease_steps). picked is NULL when this outcome did
-- not decide the run's claim. With p_org_cap > 0 (PODIUM_MAX_RUNNING_STEPS_PER_ORG), the
-- picks also stay within the organization's cap, counted under its lock as any claim
-- counts it (podium_claim_steps_of; only tried: refused, or the cap reached, the run's
-- claim is left to the caller's podium_claim_steps_of).
DROP FUNCTION IF EXISTS podium_record_outcome(
    uuid, text, integer, text, jsonb, jsonb, jsonb, timestamptz, bigint, bigint, numeric,
    text);
DROP FUNCTION IF EXISTS podium_record_outcome(
    uuid, text, integer, text, jsonb, jsonb, jsonb, timestamptz, bigint, bigint, numeric,
    text, integer);
CREATE OR REPLACE FUNCTION podium_record_outcome(
    p_run uuid, p_step text, p_attempt integer, p_outcome text, p_output jsonb,
    p_error jsonb, p_input jsonb, p_next_attempt_at timestamptz,
    p_input_tokens bigint, p_output_tokens bigint, p_cost_usd numeric,
    p_model text DEFAULT '', p_claim_limit integer DEFAULT 0, p_org_cap integer DEFAULT 0,
    OUT run_state text, OUT queued integer, OUT retry boolean, OUT picked text[]
)
LANGUAGE plpgsql AS $$
DECLARE
    v_state text := CASE p_outcome WHEN 'retry' THEN 'waiting_retry' ELSE p_outcome END;
    v_queued text[];
    v_count integer;
    v_done boolean;
    v_seq bigint;
    v_org text;
    v_run_state text;
    v_budget uuid;
    v_credential boolean;
    v_decided boolean;
    v_picks text[] := '{}';
    v_pick_attempts integer[] := '{}';
    v_pick_agents text[] := '{}';
    v_limit integer := p_claim_limit;
BEGIN
    queued := 0;
    retry := false;
    SELECT budget_run_id, organization_id INTO v_budget, v_org
      FROM orchestration_runs WHERE id = p_run FOR UPDATE;
    IF p_input_tokens + p_output_tokens > 0 THEN  -- rate limits: 45_rate_limits.sql
        PERFORM podium_rate_record_tokens(p_run, p_step, p_attempt,
                                          p_input_tokens + p_output_tokens);
    END IF;
    IF p_outcome NOT IN ('succeeded', 'failed', 'retry') THEN
        IF p_input_tokens + p_output_tokens > 0 OR p_cost_usd > 0 OR p_model <> '' THEN
            -- The attempt's usage (a parked or skipped step: rare), fenced like the rest.
            UPDATE step_attempts a
               SET input_tokens = a.input_tokens + p_input_tokens,
                   output_tokens = a.output_tokens + p_output_tokens,
                   cost_usd = a.cost_usd + p_cost_usd,
                   model = coalesce(nullif(p_model, ''), a.model)
              FROM orchestration_steps s
             WHERE a.run_id = p_run AND a.step_id = p_step AND a.attempt = p_attempt
               AND s.run_id = p_run AND s.step_id = p_step AND s.attempt = p_attempt
               AND s.state = 'running';
        END IF;
        run_state := podium_park_step(p_run, p_step, p_attempt, p_outcome, p_output, p_error,
                                      p_input, p_input_tokens, p_output_tokens, p_cost_usd);
        IF v_budget IS NOT NULL AND run_state = 'running' THEN  -- 65_budgets.sql
            run_state := podium_budget_check(p_run, p_step, v_budget, run_state);
        END IF;
        RETURN;
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
        RETURN;
    END IF;
    -- Added: a plan step's attempt holds its planner's usage already (add_attempt_usage).
    UPDATE step_attempts
       SET ended_at = now(), error = p_error, input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens, cost_usd = cost_usd + p_cost_usd,
           model = coalesce(nullif(p_model, ''), model)
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt
    RETURNING credential_hash IS NOT NULL INTO v_credential;
    -- Runs its agent started end with the attempt (30_runs.sql).
    IF v_credential AND EXISTS (SELECT 1 FROM orchestration_runs c
                                 WHERE c.parent_run_id = p_run AND c.parent_step_id = p_step
                                   AND c.state IN ('created', 'running', 'paused')) THEN
        PERFORM podium_cancel_step_children(p_run, p_step, 'the step attempt that started it ended');
    END IF;

    IF v_state = 'failed' THEN
        UPDATE orchestration_runs
           SET input_tokens = input_tokens + p_input_tokens,
               output_tokens = output_tokens + p_output_tokens,
               cost_usd = cost_usd + p_cost_usd
         WHERE id = p_run;
        PERFORM podium_emit_event(p_run, 'step.failed', p_step, p_attempt, v_state,
                                  jsonb_build_object('error', p_error));
        PERFORM podium_fail_run(p_run, p_step, p_error);
        run_state := 'failed';
        RETURN;
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
    -- The run's claim, decided here when it takes the claim's simplest path (above).
    IF v_limit > 0 AND v_count > 0 AND v_budget IS NULL
       AND podium_shares_alone(ARRAY[p_run]) THEN
        IF p_org_cap > 0 THEN  -- the organization's cap, counted under its lock
            IF (podium_claim_lock('{}', '1886350961:' || v_org, false)
                    ->> ('1886350961:' || v_org))::boolean THEN
                v_limit := least(v_limit, p_org_cap - podium_org_running(v_org));
            ELSE
                v_limit := 0;
            END IF;
        END IF;
        IF v_limit > 0 THEN
            SELECT k.steps, k.attempts, k.agents, cardinality(k.decided) > 0
              INTO v_picks, v_pick_attempts, v_pick_agents, v_decided
              FROM podium_pick_steps(ARRAY[p_run], v_limit) k;
            IF v_decided THEN
                picked := v_picks;
            END IF;
        END IF;
    END IF;

    -- One update of the run row (usage, progress, the events' sequence numbers, and
    -- completion after its last step, output = the outputs of the sink steps) and the
    -- events of this transition, numbered after the previous last sequence: the
    -- outcome's, step.queued of the steps it made runnable, step.started of the steps
    -- picked, run.completed.
    WITH run AS (
        UPDATE orchestration_runs r
           SET input_tokens = r.input_tokens + p_input_tokens,
               output_tokens = r.output_tokens + p_output_tokens,
               cost_usd = r.cost_usd + p_cost_usd,
               steps_remaining = r.steps_remaining - CASE WHEN v_state = 'succeeded' THEN 1 ELSE 0 END,
               last_event_sequence = r.last_event_sequence + 1 + v_count
                   + cardinality(v_picks)
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
        RETURNING r.last_event_sequence AS seq, r.organization_id AS org, r.state,
                  r.steps_remaining = 0 AND v_state = 'succeeded' AS done
    ), events AS (
        INSERT INTO orchestration_events
            (run_id, sequence, organization_id, type, step_id, attempt, run_state,
             step_state, payload, created_at)
        SELECT p_run,
               run.seq - 1 - v_count - cardinality(v_picks)
                   - CASE WHEN run.done THEN 1 ELSE 0 END + e.ord,
               run.org, e.type, e.step_id, e.attempt,
               CASE WHEN e.type = 'run.completed' THEN run.state ELSE 'running' END,
               e.step_state, e.payload, clock_timestamp()
          FROM run,
               (SELECT 1::bigint AS ord,
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
                SELECT 1 + v_count + p.ord, 'step.started', p.step_id, p.attempt, 'running',
                       CASE WHEN p.agent IS NULL THEN '{}'::jsonb
                            ELSE jsonb_build_object('agent', p.agent) END
                  FROM unnest(v_picks, v_pick_attempts, v_pick_agents)
                       WITH ORDINALITY AS p(step_id, attempt, agent, ord)
                UNION ALL
                SELECT 2 + v_count + cardinality(v_picks), 'run.completed', NULL, NULL, NULL,
                       '{}'::jsonb) e
         WHERE e.type <> 'run.completed' OR run.done
    )
    SELECT run.seq, run.org, run.state, run.done INTO v_seq, v_org, v_run_state, v_done
      FROM run;
    -- Only a run with a pending approval can end up held by humans (a probe of a
    -- small partial index; nothing else on the hot path).
    IF v_state = 'succeeded' AND v_count = 0 AND NOT v_done
       AND EXISTS (SELECT 1 FROM human_approvals
                    WHERE run_id = p_run AND state = 'pending') THEN
        IF podium_pause_if_held(p_run) THEN
            v_run_state := 'paused';
        END IF;
    END IF;
    -- A run with a budget (65_budgets.sql): pause or fail it once the budget is reached;
    -- a run paused by its budget whose steps in flight were its last ones ends: its
    -- budget approval has nothing left to hold.
    IF v_budget IS NOT NULL AND v_run_state = 'running' THEN
        v_run_state := podium_budget_check(p_run, p_step, v_budget, v_run_state);
    ELSIF v_budget IS NOT NULL AND v_done THEN
        UPDATE human_approvals SET state = 'cancelled'
         WHERE run_id = p_run AND state = 'pending' AND kind = 'budget';
    END IF;
    PERFORM podium_notify_events(p_run, v_org);
    run_state := v_run_state;
    queued := v_count;
    retry := v_state = 'waiting_retry';
END
$$;

DROP FUNCTION IF EXISTS podium_complete_steps(
    uuid[], text[], integer[], text[], jsonb[], jsonb[], jsonb[], timestamptz[], bigint[],
    bigint[], numeric[], text, integer, double precision, text[]);
-- A completion batch of one replica in one statement, with its eager claim: records each
-- outcome (podium_record_outcome, in the order given: the caller sorts the batch like
-- the claimers lock runs), then claims up to p_claim_limit runnable steps of the runs
-- still running among them for p_owner, so the steps this batch made runnable go
-- straight to the replica that completed it, without a NOTIFY, a wake and a claim of
-- their own. Where a run's claim takes its simplest path, it is decided where its
-- outcomes are recorded (podium_record_outcome for a single outcome,
-- podium_complete_successes for a batch's successes: podium_pick_steps) and the picks
-- leased here; the other runs go through podium_claim_steps_of. Like every eager claim
-- it only tries the claim's locks (40_claim.sql): this transaction already holds run
-- rows; a step whose agent, key or organization another claim is deciding for stays
-- queued for the claimers. Limits are those of the claim, exact across replicas.
-- p_org_cap: as podium_claim_steps_of. p_turns false (the replica's claim loop last
-- took every step it could with slots to spare, so its slots are not contended): the
-- eager claim keeps the slots this batch freed for its own runs whatever the other
-- shares have queued, instead of becoming the claim over every run
-- (podium_shares_alone), which would visit every run whose queued steps their own
-- limits hold (an agent's max_concurrency, a run's max_parallel, a key) on each batch.
--
-- NOTIFY podium_work (other replicas' claimers) only when this batch leaves work the
-- eager claim could not take: steps made runnable without an eager claim, or with one
-- that reached p_claim_limit (more may be runnable), or a step waiting for a retry.
-- Rows: one per claimed step (states and wake NULL), then one row with run_id NULL:
-- states[i] = the run's state after outcome i as podium_complete_step returns it, and
-- wake = whether this replica's claim loop should look for work (the cases above, or a
-- finished step ran on an agent with a max_concurrency: its freed slot may let a step of
-- another run start, which no completion of that run would claim).
DROP FUNCTION IF EXISTS podium_complete_steps(
    uuid[], text[], integer[], text[], jsonb[], jsonb[], jsonb[], timestamptz[], bigint[],
    bigint[], numeric[], text, integer, double precision, text[]);
DROP FUNCTION IF EXISTS podium_complete_steps(
    uuid[], text[], integer[], text[], jsonb[], jsonb[], jsonb[], timestamptz[], bigint[],
    bigint[], numeric[], text, integer, double precision, text[], integer);
CREATE OR REPLACE FUNCTION podium_complete_steps(
    p_runs uuid[], p_steps text[], p_attempts integer[], p_outcomes text[],
    p_outputs jsonb[], p_errors jsonb[], p_inputs jsonb[], p_next_attempt_at timestamptz[],
    p_input_tokens bigint[], p_output_tokens bigint[], p_costs numeric[],
    p_owner text, p_claim_limit integer, p_lease_seconds double precision,
    p_models text[] DEFAULT NULL, p_org_cap integer DEFAULT 0, p_turns boolean DEFAULT true
)
RETURNS TABLE (
    states text[], wake boolean,
    run_id uuid, step_id text, attempt integer, organization_id text, agent text,
    skill text, endpoint text, agent_timeout_seconds double precision, protocol text,
    task_id uuid, conversation_id uuid, spec jsonb, timeout_seconds double precision,
    max_attempts integer, run_input jsonb, upstream jsonb, labels jsonb,
    definition_name text, definition_version integer, run_created_at timestamptz,
    run_started_at timestamptz, trace_context jsonb, credential text
)
LANGUAGE plpgsql
-- Generic plans for this function and those it calls: PostgreSQL would otherwise plan
-- some of their statements again on every call (their parameters are arrays, whose
-- custom plans look cheaper), at a cost above the statements' own.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_n integer := coalesce(cardinality(p_runs), 0);
    v_done record;
    v_states text[] := array_fill(NULL::text, ARRAY[coalesce(cardinality(p_runs), 0)]);
    v_runs uuid[] := '{}';
    v_fast uuid[];
    v_queued integer := 0;
    v_retry boolean := false;
    v_eager boolean := false;
    v_claimed integer := 0;
    v_wake boolean;
    v_lease_runs uuid[] := '{}';  -- steps picked where the outcomes were recorded
    v_lease_steps text[] := '{}';
    v_decided uuid[] := '{}';  -- runs whose claim was decided there
    v_rows integer;
BEGIN
    -- A batch of several outcomes locks every run of the batch first, in the claimers'
    -- order (the caller sorted the batch that way). Runs whose outcomes here are all
    -- successes and which have no budget take the set-based path
    -- (podium_complete_successes) when they hold two outcomes or more; the others go
    -- through podium_record_outcome, one outcome at a time, in the order given (which
    -- costs fewer statements for a single outcome).
    IF NOT p_turns THEN  -- read by podium_shares_alone; reset when this function returns
        PERFORM set_config('podium.claim_turns', 'off', true);
    END IF;
    v_fast := '{}';
    IF v_n > 1 AND 'succeeded' = ANY (p_outcomes) THEN
        -- Each row found by a primary-key probe, whatever the statistics say (with
        -- r.id = ANY, a plan cached while the table looked small read every run), then
        -- locked by another, in that order (a nested loop over the sorted runs).
        SELECT coalesce(array_agg(l.id), '{}') INTO v_fast
          FROM (SELECT u.id
                  FROM (SELECT DISTINCT u FROM unnest(p_runs) AS u) AS u(id),
                       LATERAL (SELECT x.created_at FROM orchestration_runs x
                                 WHERE x.id = u.id LIMIT 1) t
                 ORDER BY t.created_at, u.id) o,
               LATERAL (SELECT r.id, r.budget_run_id FROM orchestration_runs r
                         WHERE r.id = o.id LIMIT 1 FOR UPDATE) l
         WHERE l.budget_run_id IS NULL
           AND NOT EXISTS (SELECT 1 FROM unnest(p_runs, p_outcomes) o(run_id, outcome)
                            WHERE o.run_id = l.id AND o.outcome <> 'succeeded');
        IF (SELECT count(*) FROM unnest(p_runs) o(run_id) WHERE o.run_id = ANY (v_fast)) < 2
           OR (SELECT count(DISTINCT (o.run_id, o.step_id))
                 FROM unnest(p_runs, p_steps) o(run_id, step_id)) < v_n THEN
            -- One success (nothing to share), or a step twice in one batch (the second
            -- outcome is fenced by the first, one at a time).
            v_fast := '{}';
        END IF;
    END IF;
    FOR i IN 1 .. v_n LOOP
        CONTINUE WHEN p_runs[i] = ANY (v_fast);
        -- A single outcome (a sequential step) may decide its run's claim itself, with
        -- fewer statements and writes than podium_claim_steps_of (podium_record_outcome).
        v_done := podium_record_outcome(p_runs[i], p_steps[i], p_attempts[i], p_outcomes[i],
                                        p_outputs[i], p_errors[i], p_inputs[i],
                                        p_next_attempt_at[i], p_input_tokens[i],
                                        p_output_tokens[i], p_costs[i],
                                        coalesce(p_models[i], ''),
                                        CASE WHEN v_n = 1 THEN p_claim_limit ELSE 0 END,
                                        coalesce(p_org_cap, 0));
        v_states[i] := v_done.run_state;
        IF v_done.picked IS NOT NULL THEN
            v_eager := true;
            v_lease_runs := v_lease_runs
                            || array_fill(p_runs[i], ARRAY[cardinality(v_done.picked)]);
            v_lease_steps := v_lease_steps || v_done.picked;
        ELSIF v_done.run_state = 'running' AND NOT p_runs[i] = ANY (v_runs) THEN
            v_runs := v_runs || p_runs[i];
        END IF;
        v_queued := v_queued + v_done.queued;
        v_retry := v_retry OR v_done.retry;
    END LOOP;
    IF cardinality(v_fast) > 0 THEN
        FOR v_done IN
            SELECT * FROM podium_complete_successes(
                v_fast, p_runs, p_steps, p_attempts, p_outputs, p_errors, p_inputs,
                p_input_tokens, p_output_tokens, p_costs,
                coalesce(p_models, array_fill(''::text, ARRAY[v_n])),
                CASE WHEN coalesce(p_org_cap, 0) <= 0 THEN p_claim_limit ELSE 0 END)
        LOOP
            IF v_done.i IS NULL THEN  -- the eager claim of runs decided there
                v_eager := true;
                IF v_done.picked IS NOT NULL THEN
                    v_lease_runs := v_lease_runs || v_done.run_id;
                    v_lease_steps := v_lease_steps || v_done.picked;
                ELSE
                    v_decided := v_decided || v_done.run_id;
                END IF;
                CONTINUE;
            END IF;
            v_states[v_done.i] := v_done.run_state;
            v_queued := v_queued + v_done.queued;
            IF v_done.run_state = 'running' AND NOT v_done.run_id = ANY (v_runs) THEN
                v_runs := v_runs || v_done.run_id;
            END IF;
        END LOOP;
        v_runs := ARRAY(SELECT u FROM unnest(v_runs) AS u WHERE NOT u = ANY (v_decided));
    END IF;
    IF cardinality(v_lease_steps) > 0 THEN  -- step.started written with the outcomes
        RETURN QUERY
        SELECT NULL::text[], NULL::boolean, c.*
          FROM podium_lease_steps(v_lease_runs, v_lease_steps, NULL, NULL, p_owner,
                                  p_lease_seconds, clock_timestamp()) c;
        GET DIAGNOSTICS v_claimed = ROW_COUNT;
    END IF;
    IF p_claim_limit > 0 AND cardinality(v_runs) > 0 THEN
        v_eager := true;
        RETURN QUERY
        SELECT NULL::text[], NULL::boolean, c.*
          FROM podium_claim_steps_of(p_owner, p_claim_limit - v_claimed, p_lease_seconds,
                                     v_runs, p_org_cap) c;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_claimed := v_claimed + v_rows;
    END IF;
    v_wake := v_retry OR (v_queued > 0 AND (NOT v_eager OR v_claimed >= p_claim_limit));
    IF v_wake THEN
        PERFORM pg_notify('podium_work', '');
    END IF;
    states := v_states;
    -- A finished step of an agent with a max_concurrency frees one of its slots, which a
    -- queued step of another run may be waiting for (no completion of that run would
    -- claim it). Each outcome's step, then its agent, found by primary-key probes,
    -- whatever the statistics say: asking whether any agent at all had a limit read the
    -- whole agents table, and once one agent anywhere had one, it sent the claim loop
    -- after every batch of every run.
    wake := v_wake OR EXISTS (
        SELECT 1
          FROM unnest(p_runs, p_steps) AS o(run_id, step_id),
               LATERAL (SELECT s.organization_id, s.agent FROM orchestration_steps s
                         WHERE s.run_id = o.run_id AND s.step_id = o.step_id LIMIT 1) s,
               LATERAL (SELECT 1 FROM agents a
                         WHERE a.organization_id = s.organization_id AND a.name = s.agent
                           AND a.max_concurrency > 0
                         LIMIT 1) a);
    run_id := NULL;
    RETURN NEXT;
END
$$;

-- The successes of a completion batch, set-based: what podium_record_outcome does for a
-- 'succeeded' outcome, for every outcome of the runs p_fast at once, with one update of
-- each run row and one insert of all their events, so a batch of n successes costs a
-- fixed number of statements instead of about ten per outcome. p_fast: runs of the
-- batch whose outcomes are all successes, with no budget, each (run, step) once, locked
-- by the caller; the other arrays are podium_complete_steps' (outcomes of other runs
-- are ignored). Events per run: step.completed of its outcomes in the order given, then
-- step.queued of the steps they made runnable (by position), then step.started of the
-- steps picked (below), then run.completed when the last step finished.
--
-- With p_claim_limit > 0 (the batch's eager claim, no organization cap) and the runs'
-- shares alone in the queue, the claim of the runs where it takes its simplest path is
-- decided here, before the runs' rows are updated (podium_pick_steps): their
-- step.started events are written with the others, and the caller leases the picks.
--
-- Rows: i = the outcome's index in the arrays (fenced outcomes give none), the run's
-- state afterwards (on its last outcome in the batch; 'running' on the others, so a run
-- ends once), queued = steps it made runnable (on the run's last outcome); then, with i
-- NULL, each step picked (picked, in the claim's order), then each run whose claim was
-- decided here (picked NULL).
DROP FUNCTION IF EXISTS podium_complete_successes(
    uuid[], uuid[], text[], integer[], jsonb[], jsonb[], jsonb[], bigint[], bigint[],
    numeric[], text[]);
CREATE OR REPLACE FUNCTION podium_complete_successes(
    p_fast uuid[], p_runs uuid[], p_steps text[], p_attempts integer[], p_outputs jsonb[],
    p_errors jsonb[], p_inputs jsonb[], p_input_tokens bigint[], p_output_tokens bigint[],
    p_costs numeric[], p_models text[], p_claim_limit integer
)
RETURNS TABLE (i integer, run_id uuid, run_state text, queued integer, picked text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_done integer[];  -- indexes of the outcomes recorded (not fenced), in order
    v_credential boolean;
    v_q_runs uuid[];
    v_q_steps text[];
    v_run record;
    v_ids uuid[] := '{}';
    v_seqs bigint[] := '{}';
    v_orgs text[] := '{}';
    v_run_states text[] := '{}';
    v_totals integer[] := '{}';
    v_ended boolean[] := '{}';
    v_queued integer[] := '{}';
    v_p_runs uuid[] := '{}';  -- the steps picked for the eager claim, in its order
    v_p_steps text[] := '{}';
    v_p_attempts integer[] := '{}';
    v_p_agents text[] := '{}';
    v_decided uuid[] := '{}';  -- the runs whose claim was decided here
BEGIN
    FOR k IN 1 .. cardinality(p_runs) LOOP  -- rate limits: 45_rate_limits.sql
        IF p_runs[k] = ANY (p_fast) AND p_input_tokens[k] + p_output_tokens[k] > 0 THEN
            PERFORM podium_rate_record_tokens(p_runs[k], p_steps[k], p_attempts[k],
                                              p_input_tokens[k] + p_output_tokens[k]);
        END IF;
    END LOOP;
    -- Each step found and locked by a primary-key probe, whatever the statistics say
    -- (a join made a hash join over every running step), fenced on its attempt and
    -- state once locked, and updated by ctid.
    WITH o AS (
        SELECT o.k, t.tid
          FROM generate_subscripts(p_runs, 1) AS o(k),
               LATERAL (SELECT v.ctid AS tid, v.attempt, v.state FROM orchestration_steps v
                         WHERE v.run_id = p_runs[o.k] AND v.step_id = p_steps[o.k]
                         LIMIT 1 FOR UPDATE) t
         WHERE p_runs[o.k] = ANY (p_fast) AND t.attempt = p_attempts[o.k]
           AND t.state = 'running'
    ), done AS (
        UPDATE orchestration_steps s
           SET state = 'succeeded', output = p_outputs[o.k], error = p_errors[o.k],
               input = coalesce(p_inputs[o.k], s.input), ended_at = now(),
               next_attempt_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
               input_tokens = s.input_tokens + p_input_tokens[o.k],
               output_tokens = s.output_tokens + p_output_tokens[o.k],
               cost_usd = s.cost_usd + p_costs[o.k]
          FROM o
         WHERE s.ctid = o.tid
        RETURNING o.k
    )
    SELECT coalesce(array_agg(done.k ORDER BY done.k), '{}') INTO v_done FROM done;
    IF cardinality(v_done) = 0 THEN
        RETURN;
    END IF;
    -- Each attempt found by a primary-key probe and updated by ctid, whatever the
    -- statistics say (a join of the table with the array made a hash join over a seq
    -- scan of a table that looked small when the plan was cached).
    WITH d AS (
        SELECT d.k, t.tid
          FROM unnest(v_done) AS d(k),
               LATERAL (SELECT x.ctid AS tid FROM step_attempts x
                         WHERE x.run_id = p_runs[d.k] AND x.step_id = p_steps[d.k]
                           AND x.attempt = p_attempts[d.k]
                         LIMIT 1) t
    ), attempts AS (
        UPDATE step_attempts a
           SET ended_at = now(), error = p_errors[d.k],
               input_tokens = a.input_tokens + p_input_tokens[d.k],
               output_tokens = a.output_tokens + p_output_tokens[d.k],
               cost_usd = a.cost_usd + p_costs[d.k],
               model = coalesce(nullif(p_models[d.k], ''), a.model)
          FROM d
         WHERE a.ctid = d.tid
        RETURNING a.credential_hash IS NOT NULL AS credential
    )
    SELECT coalesce(bool_or(credential), false) INTO v_credential FROM attempts;
    IF v_credential THEN  -- runs their agents started end with the attempt (30_runs.sql)
        FOR v_run IN
            -- One probe of orchestration_runs_parent_idx per outcome, whatever the
            -- statistics say (a join read every active run).
            SELECT DISTINCT c.run, c.step
              FROM unnest(v_done) AS d(k),
                   LATERAL (SELECT c.parent_run_id AS run, c.parent_step_id AS step
                              FROM orchestration_runs c
                             WHERE c.parent_run_id = p_runs[d.k]
                               AND c.parent_step_id = p_steps[d.k]
                               AND c.state IN ('created', 'running', 'paused')
                            OFFSET 0) c
        LOOP
            PERFORM podium_cancel_step_children(v_run.run, v_run.step,
                                                'the step attempt that started it ended');
        END LOOP;
    END IF;
    -- Dependents whose last dependencies these were become runnable.
    WITH d AS (
        SELECT p_runs[d.k] AS run_id, p_steps[d.k] AS step_id FROM unnest(v_done) AS d(k)
    ), c AS (  -- each outcome's run probed for its pending steps, whatever the statistics
        -- say (a join made a hash join over every pending step of every run); the rows
        -- updated by ctid, as podium_lease_steps does
        SELECT s.run_id, s.step_id, s.tid, count(*)::integer AS n
          FROM d, LATERAL (SELECT s.run_id, s.step_id, s.ctid AS tid
                             FROM orchestration_steps s
                            WHERE s.run_id = d.run_id AND s.state = 'pending'
                              AND d.step_id = ANY (s.depends_on)
                           OFFSET 0) s
         GROUP BY 1, 2, 3
    ), promoted AS (
        UPDATE orchestration_steps s
           SET pending_dependencies = s.pending_dependencies - c.n,
               state = CASE WHEN s.pending_dependencies = c.n THEN 'queued' ELSE s.state END,
               queued_at = CASE WHEN s.pending_dependencies = c.n THEN clock_timestamp()
                                ELSE s.queued_at END
          FROM c
         WHERE s.ctid = c.tid
        RETURNING s.run_id, s.step_id, s.state, s.position
    )
    SELECT coalesce(array_agg(p.run_id ORDER BY p.run_id, p.position)
                        FILTER (WHERE p.state = 'queued'), '{}'),
           coalesce(array_agg(p.step_id ORDER BY p.run_id, p.position)
                        FILTER (WHERE p.state = 'queued'), '{}')
      INTO v_q_runs, v_q_steps FROM promoted p;
    -- The eager claim of these runs, where it takes its simplest path (above).
    IF p_claim_limit > 0 AND podium_shares_alone(p_fast) THEN
        SELECT * INTO v_p_runs, v_p_steps, v_p_attempts, v_p_agents, v_decided
          FROM podium_pick_steps(
                   ARRAY(SELECT DISTINCT p_runs[d.k] FROM unnest(v_done) AS d(k)),
                   p_claim_limit) k;
    END IF;
    -- One update per run: usage, progress, the events' sequence numbers, and completion
    -- after its last step (output = the outputs of the sink steps).
    FOR v_run IN
        WITH k AS (
            SELECT p_runs[d.k] AS run_id, count(*)::integer AS n,
                   sum(p_input_tokens[d.k]) AS input_tokens,
                   sum(p_output_tokens[d.k]) AS output_tokens, sum(p_costs[d.k]) AS cost_usd
              FROM unnest(v_done) AS d(k) GROUP BY 1
        ), q AS (
            SELECT q.run_id, count(*)::integer AS n FROM unnest(v_q_runs) AS q(run_id)
             GROUP BY 1
        ), p AS (
            SELECT p.run_id, count(*)::integer AS n FROM unnest(v_p_runs) AS p(run_id)
             GROUP BY 1
        ), m AS (  -- each run's row found by a primary-key probe (the runs are locked)
            SELECT k.*, coalesce(q.n, 0) AS queued, coalesce(p.n, 0) AS started, t.tid
              FROM k LEFT JOIN q ON q.run_id = k.run_id LEFT JOIN p ON p.run_id = k.run_id,
                   LATERAL (SELECT x.ctid AS tid FROM orchestration_runs x
                             WHERE x.id = k.run_id LIMIT 1) t
        )
        UPDATE orchestration_runs r
           SET input_tokens = r.input_tokens + m.input_tokens,
               output_tokens = r.output_tokens + m.output_tokens,
               cost_usd = r.cost_usd + m.cost_usd,
               steps_remaining = r.steps_remaining - m.n,
               last_event_sequence = r.last_event_sequence + m.n + m.queued + m.started
                   + CASE WHEN r.steps_remaining = m.n THEN 1 ELSE 0 END,
               state = CASE WHEN r.steps_remaining = m.n THEN 'succeeded' ELSE r.state END,
               ended_at = CASE WHEN r.steps_remaining = m.n THEN now() ELSE r.ended_at END,
               output = CASE WHEN r.steps_remaining = m.n THEN
                            (SELECT coalesce(jsonb_object_agg(s.step_id, s.output), '{}'::jsonb)
                               FROM orchestration_steps s WHERE s.run_id = r.id AND s.is_sink)
                        ELSE r.output END,
               updated_at = now()
          FROM m
         WHERE r.ctid = m.tid
        RETURNING r.id, r.last_event_sequence, r.organization_id, r.state,
                  r.steps_remaining = 0 AS ended, m.n + m.queued + m.started AS total,
                  m.queued
    LOOP
        v_ids := v_ids || v_run.id;
        v_seqs := v_seqs || v_run.last_event_sequence;
        v_orgs := v_orgs || v_run.organization_id;
        v_run_states := v_run_states || v_run.state;
        v_ended := v_ended || v_run.ended;
        v_totals := v_totals || (v_run.total + CASE WHEN v_run.ended THEN 1 ELSE 0 END);
        v_queued := v_queued || v_run.queued;
    END LOOP;
    -- The events of these transitions, numbered after each run's previous last sequence.
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         payload, created_at)
    SELECT e.run_id, r.seq - r.total + row_number() OVER (PARTITION BY e.run_id
                                                          ORDER BY e.part, e.ord),
           r.org, e.type, e.step_id, e.attempt,
           CASE WHEN e.type = 'run.completed' THEN r.state ELSE 'running' END,
           e.step_state, e.payload, clock_timestamp()
      FROM (SELECT p_runs[d.k] AS run_id, 1 AS part, d.k::bigint AS ord,
                   'step.completed' AS type, p_steps[d.k] AS step_id,
                   p_attempts[d.k] AS attempt, 'succeeded' AS step_state,
                   jsonb_build_object('output', p_outputs[d.k]) AS payload
              FROM unnest(v_done) AS d(k)
            UNION ALL
            SELECT q.run_id, 2, q.ord, 'step.queued', q.step_id, 0, 'queued', '{}'::jsonb
              FROM unnest(v_q_runs, v_q_steps) WITH ORDINALITY AS q(run_id, step_id, ord)
            UNION ALL
            SELECT p.run_id, 3, p.ord, 'step.started', p.step_id, p.attempt, 'running',
                   CASE WHEN p.agent IS NULL THEN '{}'::jsonb
                        ELSE jsonb_build_object('agent', p.agent) END
              FROM unnest(v_p_runs, v_p_steps, v_p_attempts, v_p_agents)
                   WITH ORDINALITY AS p(run_id, step_id, attempt, agent, ord)
            UNION ALL
            SELECT x.id, 4, 0, 'run.completed', NULL, NULL, NULL, '{}'::jsonb
              FROM unnest(v_ids, v_ended) AS x(id, ended) WHERE x.ended) e
      JOIN unnest(v_ids, v_seqs, v_orgs, v_run_states, v_totals)
           AS r(id, seq, org, state, total) ON r.id = e.run_id;
    FOR n IN 1 .. cardinality(v_ids) LOOP
        -- Only a run with a pending approval can end up held by humans (a probe of a
        -- small partial index), when these outcomes queued none of its steps.
        IF v_queued[n] = 0 AND NOT v_ended[n] AND v_run_states[n] = 'running'
           AND EXISTS (SELECT 1 FROM human_approvals a
                        WHERE a.run_id = v_ids[n] AND a.state = 'pending') THEN
            IF podium_pause_if_held(v_ids[n]) THEN
                v_run_states[n] := 'paused';
            END IF;
        END IF;
    END LOOP;
    PERFORM podium_notify_runs(v_ids, v_orgs);
    RETURN QUERY
    SELECT d.k, r.id,
           CASE WHEN d.k = max(d.k) OVER (PARTITION BY r.id) THEN r.state
                ELSE 'running' END,
           CASE WHEN d.k = max(d.k) OVER (PARTITION BY r.id) THEN r.queued ELSE 0 END,
           NULL::text
      FROM unnest(v_done) AS d(k)
      JOIN unnest(v_ids, v_run_states, v_queued) AS r(id, state, queued)
        ON r.id = p_runs[d.k];
    RETURN QUERY
    SELECT NULL::integer, p.run_id, NULL::text, NULL::integer, p.step_id
      FROM unnest(v_p_runs, v_p_steps) WITH ORDINALITY AS p(run_id, step_id, ord)
     ORDER BY p.ord;
    RETURN QUERY
    SELECT NULL::integer, u.run_id, NULL::text, NULL::integer, NULL::text
      FROM unnest(v_decided) AS u(run_id);
END
$$;

-- Fail one step for good and, with it, the run. The caller holds the run row lock.
CREATE OR REPLACE FUNCTION podium_fail_step(p_run uuid, p_step text, p_error jsonb) RETURNS text
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

-- Skip one step (its error kept for operators), then its dependents when its policy
-- says so, then refresh the run. The caller holds the run row lock and has already
-- moved the step out of its previous state. Returns the run's state.
CREATE OR REPLACE FUNCTION podium_skip_step(p_run uuid, p_step text, p_error jsonb) RETURNS text
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
    -- A step skipped by its condition (CONDITION_FALSE) never skips its dependents.
    IF v_skip_deps AND coalesce(p_error ->> 'code', '') <> 'CONDITION_FALSE' THEN
        PERFORM podium_skip_dependents(p_run, p_step);
    END IF;
    RETURN podium_refresh_run(p_run);
END
$$;

-- Skip every (transitive) dependent of a skipped step whose failure policy says
-- skip_dependents; they are all still pending. The caller holds the run row lock.
CREATE OR REPLACE FUNCTION podium_skip_dependents(p_run uuid, p_step text) RETURNS integer
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

-- Re-count the unfinished dependencies of every pending step of a run from the rows (a
-- skipped dependency counts as finished). The caller holds the run row lock.
CREATE OR REPLACE FUNCTION podium_recount_dependencies(p_run uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- One primary-key probe per dependency, whatever the statistics say (step_id = ANY
    -- (depends_on), or an EXISTS the planner made a hash join of, read every step of the
    -- run for each pending step: quadratic in a large fan-out).
    UPDATE orchestration_steps s
       SET pending_dependencies = (
               SELECT count(*) FROM unnest(s.depends_on) AS d(step_id),
                      LATERAL (SELECT 1 FROM orchestration_steps u
                                WHERE u.run_id = p_run AND u.step_id = d.step_id
                                  AND u.state NOT IN ('succeeded', 'skipped')
                                LIMIT 1) unfinished)
     WHERE s.run_id = p_run AND s.state = 'pending';
END
$$;

-- Re-count every pending step's unfinished dependencies (a skipped dependency counts as
-- finished: its dependents see a null output), queue those with none left, and complete
-- the run when no step is left unfinished. The slow path after a skip, an approval or a
-- resume; the hot path (a plain success) keeps the incremental counts of
-- podium_complete_step. The caller holds the run row lock. Returns the run's state.
CREATE OR REPLACE FUNCTION podium_refresh_run(p_run uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_queued integer;
    v_remaining integer;
    v_state text;
BEGIN
    PERFORM podium_recount_dependencies(p_run);
    v_queued := podium_queue_root_steps(p_run);
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
    RETURN v_state;
END
$$;
