-- Runs and steps: creation, reads, and the engine's calls into the SQL functions.
-- Lock order everywhere: the run row, then its steps (see server/storage/functions/30_runs.sql).

-- create_run --
-- A run with its steps, run.created, the copies of a fork, and its start, in one call
-- (podium_create_run, functions/30_runs.sql). One row: created = false when (organization_id,
-- request_id) already exists (nothing written; run_id is that run).
-- $1 org, $2 definition_name, $3 definition_version, $4 plan, $5 input, $6 metadata,
-- $7 labels, $8 request_id, $9 max_parallel, $10 bypass_cache, $11 webhook_url,
-- $12 trace_context, $13 parent_run_id, $14 parent_step_id, $15 depth,
-- $16 forked_from_run_id, $17 steps to copy (text[]), $18 steps as a JSON array of
-- objects, $19 start, $20 return the steps' state, $21 keying (concurrency key value,
-- limits and priority as JSON, or NULL)
SELECT * FROM podium_create_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                $14, $15, $16, $17, $18, $19, $20, $21)

-- create_run_and_claim --
-- create_run, then the run's runnable steps claimed for this replica in the same
-- transaction (podium_create_run_and_claim, functions/40_claim.sql): the claimed rows,
-- then create_run's row. $1-$21 as create_run, $22 owner, $23 claim limit, $24 lease,
-- $25 cap on an organization's running steps (0: none), $26 whether the claim takes turns
-- with other shares (EagerClaim.turns)
SELECT * FROM podium_create_run_and_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                                          $13, $14, $15, $16, $17, $18, $19, $20, $22,
                                          $23, $24, $21, $25, $26)

-- lock_run --
-- $1 run_id, $2 organization_id
SELECT id, state, depth, max_parallel FROM orchestration_runs
WHERE id = $1 AND organization_id = $2 FOR UPDATE

-- continue_run --
-- $1 run_id, $2 organization_id, $3 input merged over the run's (NULL = none)
SELECT podium_continue_run($1, $2, $3)

-- resume_run --
-- $1 run_id, $2 organization_id
SELECT podium_resume_run($1, $2)

-- lock_running_step --
-- The fence of a sub-orchestration start: the parent step still runs this attempt.
-- $1 run_id, $2 step_id, $3 attempt
SELECT 1 FROM orchestration_steps
WHERE run_id = $1 AND step_id = $2 AND attempt = $3 AND state = 'running'
FOR UPDATE

-- count_step_children --
-- How many child runs step $2 of run $1 has started (finished ones too).
-- $1 run_id, $2 step_id
SELECT count(*) FROM orchestration_runs WHERE parent_run_id = $1 AND parent_step_id = $2

-- link_child_run --
-- The parent step waits on its child run: no lease (nothing executes on a replica);
-- the schedulers' sweep completes it when the child finishes.
-- $1 run_id, $2 step_id, $3 child run id
UPDATE orchestration_steps
SET child_run_id = $3, lease_owner = NULL, lease_expires_at = NULL
WHERE run_id = $1 AND step_id = $2

-- add_attempt_usage --
-- Usage of an attempt that stays open (a plan step's planner, whose child run started):
-- added to the attempt, its step and its run (the completion adds what follows).
-- $1 run_id, $2 step_id, $3 attempt, $4 input tokens, $5 output tokens, $6 cost, $7 model
WITH attempt AS (
    UPDATE step_attempts
       SET input_tokens = input_tokens + $4, output_tokens = output_tokens + $5,
           cost_usd = cost_usd + $6, model = $7
     WHERE run_id = $1 AND step_id = $2 AND attempt = $3
), step AS (
    UPDATE orchestration_steps
       SET input_tokens = input_tokens + $4, output_tokens = output_tokens + $5,
           cost_usd = cost_usd + $6
     WHERE run_id = $1 AND step_id = $2
)
UPDATE orchestration_runs
   SET input_tokens = input_tokens + $4, output_tokens = output_tokens + $5,
       cost_usd = cost_usd + $6
 WHERE id = $1

-- finished_children --
-- Steps waiting on a child run that has finished, for the sweep to complete (each
-- completion is fenced on the attempt, so two replicas sweeping at once do no harm).
-- $1 limit
SELECT s.run_id, s.step_id, s.attempt, s.organization_id, s.conversation_id, s.spec,
       s.max_attempts, s.input, r.created_at AS run_created_at, c.id AS child_run_id,
       c.state AS child_state, c.output AS child_output, c.error AS child_error
FROM orchestration_steps s
JOIN orchestration_runs c ON c.id = s.child_run_id
JOIN orchestration_runs r ON r.id = s.run_id
WHERE s.state = 'running' AND s.child_run_id IS NOT NULL AND s.lease_owner IS NULL
  AND c.state IN ('succeeded', 'failed', 'cancelled')
LIMIT $1

-- get_run --
-- $1 run_id, $2 organization_id
SELECT * FROM orchestration_runs WHERE id = $1 AND organization_id = $2

-- list_steps --
SELECT run_id, step_id, position, state, agent, skill, depends_on, spec, input, output,
       error, attempt, max_attempts, conversation_id, queued_at, started_at, ended_at,
       next_attempt_at, cached, cache_source_run_id, child_run_id, approval_id,
       input_tokens, output_tokens, cost_usd
FROM orchestration_steps
WHERE run_id = $1
ORDER BY position

-- list_attempts --
SELECT step_id, attempt, agent, task_id, started_at, ended_at, error
FROM step_attempts
WHERE run_id = $1
ORDER BY step_id, attempt

-- list_runs --
-- Newest first, keyset on (created_at, id). Empty filters match everything.
-- $1 org, $2 states (text[], empty = any), $3 definition_name (NULL = any),
-- $4 labels (jsonb containment), $5 parent_run_id (NULL = any),
-- $6 after created_at (NULL = first page), $7 after id, $8 limit,
-- $9 parent_step_id (NULL = any)
SELECT *
FROM orchestration_runs
WHERE organization_id = $1
  AND (cardinality($2::text[]) = 0 OR state = ANY ($2::text[]))
  AND ($3::text IS NULL OR definition_name = $3)
  AND labels @> $4::jsonb
  AND ($5::uuid IS NULL OR parent_run_id = $5)
  AND ($9::text IS NULL OR parent_step_id = $9)
  AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $8

-- list_runs_basic --
-- list_runs for RUN_VIEW_BASIC: the same rows without their large payloads (input,
-- output, metadata and plan are never read from their TOAST storage). Every other
-- column is listed: a new column of orchestration_runs belongs here too
-- (test_response_sizes.py checks it).
-- $1 org, $2 states, $3 definition_name, $4 labels, $5 parent_run_id,
-- $6 after created_at, $7 after id, $8 limit, $9 parent_step_id
SELECT id, organization_id, definition_name, definition_version, '{}'::jsonb AS plan,
       state, '{}'::jsonb AS input, NULL::jsonb AS output, '{}'::jsonb AS metadata,
       labels, request_id, max_parallel, run_attempt, parent_run_id, parent_step_id,
       forked_from_run_id, error, rollback_hints, input_tokens, output_tokens, cost_usd,
       bypass_cache, webhook_url, last_event_sequence, created_at, started_at, ended_at,
       trace_context, updated_at, steps_remaining, depth, saved_input_tokens,
       saved_output_tokens, saved_cost_usd, budget_run_id, concurrency_key, priority,
       max_runs_per_key, max_steps_per_key, key_admitted
FROM orchestration_runs
WHERE organization_id = $1
  AND (cardinality($2::text[]) = 0 OR state = ANY ($2::text[]))
  AND ($3::text IS NULL OR definition_name = $3)
  AND labels @> $4::jsonb
  AND ($5::uuid IS NULL OR parent_run_id = $5)
  AND ($9::text IS NULL OR parent_step_id = $9)
  AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $8

-- run_payload --
-- One payload of a run for GetRunPayload; no row when the run does not exist.
-- $1 org, $2 run id, $3 field: input | output | metadata | plan
SELECT CASE $3::text WHEN 'input' THEN input WHEN 'output' THEN output
                     WHEN 'metadata' THEN metadata WHEN 'plan' THEN plan END AS value
FROM orchestration_runs
WHERE organization_id = $1 AND id = $2

-- step_payload --
-- One payload of a step for GetRunPayload; no row when the step does not exist.
-- $1 org, $2 run id, $3 step id, $4 field: input | output
SELECT CASE $4::text WHEN 'input' THEN input WHEN 'output' THEN output END AS value
FROM orchestration_steps
WHERE organization_id = $1 AND run_id = $2 AND step_id = $3

-- cancel_run --
-- $1 run_id, $2 organization_id, $3 reason
SELECT podium_cancel_run($1, $2, $3)

-- claim_steps --
-- $1 owner, $2 limit, $3 lease seconds, $4 cap on an organization's running steps (0: none)
SELECT * FROM podium_claim_steps($1, $2, $3, $4)

-- complete_step --
-- $1 run_id, $2 step_id, $3 attempt, $4 outcome, $5 output, $6 error, $7 input,
-- $8 next_attempt_at, $9 input_tokens, $10 output_tokens, $11 cost_usd, $12 model
SELECT podium_complete_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)

-- complete_steps --
-- A completion batch with its eager claim (podium_complete_steps, functions/50_complete.sql):
-- parallel arrays, one element per outcome, in lock order. JSON values are sent as
-- encoded text (a list value would otherwise be read as an array dimension).
-- $1 run_ids, $2 step_ids, $3 attempts, $4 outcomes, $5 outputs, $6 errors, $7 inputs,
-- $8 next_attempt_at, $9 input_tokens, $10 output_tokens, $11 costs, $12 owner,
-- $13 how many steps to claim at most, $14 lease seconds, $15 models ('' none),
-- $16 cap on an organization's running steps (0: none), $17 whether the eager claim
-- takes turns with other shares (EagerClaim.turns)
SELECT * FROM podium_complete_steps($1, $2, $3, $4, $5::text[]::jsonb[], $6::text[]::jsonb[],
                                    $7::text[]::jsonb[], $8, $9, $10, $11, $12, $13, $14, $15,
                                    $16, $17)

-- lock_batch_runs --
-- Before a completion batch that may fail a run: lock the batch's runs and every
-- unfinished descendant of those that may fail, all at once in (created_at, id) order.
-- Failing a run cancels its descendants (younger runs), so without this a batch going
-- on to a run created between a parent and its child would lock runs out of order.
-- $1 the batch's run ids, $2 those whose outcome may fail them
SELECT 1 FROM orchestration_runs r
WHERE r.id = ANY ($1::uuid[])
   OR r.id IN (WITH RECURSIVE below (id) AS (
                   SELECT c.id FROM orchestration_runs c
                   WHERE c.parent_run_id = ANY ($2::uuid[])
                     AND c.state IN ('created', 'running', 'paused')
                   UNION
                   SELECT c.id FROM orchestration_runs c
                   JOIN below b ON c.parent_run_id = b.id
                   WHERE c.state IN ('created', 'running', 'paused'))
               SELECT below.id FROM below)
ORDER BY r.created_at, r.id
FOR UPDATE OF r

-- renew_leases --
-- Extends the leases of the owner's running steps and returns them; an attempt of the
-- owner that is missing lost its lease (cancelled, failed, or re-queued). Rows locked by
-- a completion or a cancellation are skipped: they are leaving the running state anyway.
-- $1 owner, $2 lease seconds
UPDATE orchestration_steps s
SET lease_expires_at = now() + make_interval(secs => $2)
WHERE (s.run_id, s.step_id) IN (
    SELECT r.run_id, r.step_id FROM orchestration_steps r
    WHERE r.state = 'running' AND r.lease_owner = $1
    FOR UPDATE SKIP LOCKED)
RETURNING s.run_id, s.step_id, s.attempt

-- renew_held_leases --
-- renew_leases for the attempts the owner is executing only: a lease whose claim the
-- owner never saw (an ambiguous commit: the statement committed, its answer was lost)
-- is not renewed, so it expires and the step runs again. Returns the attempts still
-- held: renewed, or skipped because another transaction holds the step's row (a
-- sub-orchestration's start, a run its agent starts, a completion), which the next
-- renewal extends; an attempt missing from the answer lost its lease (cancelled,
-- failed, re-queued). Each step found by a primary-key probe; the check reads the rows
-- as they were when the statement began (the renewal's own writes are not seen).
-- $1 owner, $2 lease seconds, $3 run ids, $4 step ids, $5 attempts (parallel arrays)
WITH k AS (
    SELECT k.run_id, k.step_id, k.attempt
    FROM unnest($3::uuid[], $4::text[], $5::integer[]) AS k(run_id, step_id, attempt),
         LATERAL (SELECT 1 FROM orchestration_steps r
                  WHERE r.run_id = k.run_id AND r.step_id = k.step_id
                    AND r.attempt = k.attempt AND r.state = 'running'
                    AND r.lease_owner = $1
                  LIMIT 1) r
), locked AS (
    SELECT r.tid
    FROM k, LATERAL (SELECT r.ctid AS tid FROM orchestration_steps r
                     WHERE r.run_id = k.run_id AND r.step_id = k.step_id
                       AND r.attempt = k.attempt AND r.state = 'running'
                       AND r.lease_owner = $1
                     LIMIT 1 FOR UPDATE SKIP LOCKED) r
), renewed AS (
    UPDATE orchestration_steps s
    SET lease_expires_at = now() + make_interval(secs => $2)
    FROM locked l
    WHERE s.ctid = l.tid
)
SELECT k.run_id, k.step_id, k.attempt FROM k

-- release_leases --
-- On shutdown: let the owner's running steps expire now, so another replica takes
-- them at its next lease check instead of after a full lease.
-- $1 owner
UPDATE orchestration_steps
SET lease_expires_at = now()
WHERE state = 'running' AND lease_owner = $1

-- requeue_expired --
SELECT podium_requeue_expired($1)

-- insert_deliverables --
-- $1 run_id, $2 organization_id, $3 JSON array of {step_id, attempt, conversation_id,
-- name, media_type, size_bytes, uri, data_base64}
INSERT INTO deliverables
    (organization_id, run_id, step_id, attempt, conversation_id, name, media_type,
     size_bytes, uri, data)
SELECT $2, $1, d.step_id, d.attempt, d.conversation_id, d.name, d.media_type,
       d.size_bytes, d.uri, decode(d.data_base64, 'base64')
FROM jsonb_to_recordset($3::jsonb) AS d(
    step_id text, attempt integer, conversation_id uuid, name text, media_type text,
    size_bytes bigint, uri text, data_base64 text)

-- list_deliverables --
-- $1 run_id, $2 organization_id, $3 step_id (NULL = any), $4 include data,
-- $5 after created_at, $6 after id, $7 limit
SELECT id, run_id, step_id, attempt, conversation_id, name, media_type, size_bytes, uri,
       CASE WHEN $4::boolean THEN data END AS data, created_at
FROM deliverables
WHERE run_id = $1 AND organization_id = $2
  AND ($3::text IS NULL OR step_id = $3)
  AND ($5::timestamptz IS NULL OR (created_at, id) > ($5, $6::uuid))
ORDER BY created_at, id
LIMIT $7

-- list_events --
-- $1 run_id, $2 organization_id, $3 after sequence, $4 limit
SELECT run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
       payload, created_at
FROM orchestration_events
WHERE run_id = $1 AND organization_id = $2 AND sequence > $3
ORDER BY sequence
LIMIT $4

-- append_step_events --
-- $1 run_id, $2 step_id, $3 attempt, $4 types text[], $5 payloads jsonb[]
SELECT podium_append_step_events($1, $2, $3, $4, $5)

-- count_runs_waiting_for_key --
-- Started runs waiting for their concurrency key, counted up to $1 (the metrics gauge; a
-- probe of the partial index orchestration_runs_key_waiting_idx).
SELECT count(*) FROM (
    SELECT 1 FROM orchestration_runs WHERE NOT key_admitted AND state = 'running' LIMIT $1
) waiting

-- count_queued_steps --
-- Queued steps of every organization, counted up to $1 (the metrics gauge; a probe of
-- the partial index orchestration_steps_queued_idx, bounded by the limit).
SELECT count(*) FROM (
    SELECT 1 FROM orchestration_steps WHERE state = 'queued' LIMIT $1
) queued

-- budget_gate --
-- Before dispatching a step of a run with a budget (functions/65_budgets.sql).
-- $1 run_id, $2 step_id, $3 attempt, $4 the claim's task_id
SELECT podium_budget_gate($1, $2, $3, $4)

-- org_running --
-- The running steps that count against PODIUM_MAX_RUNNING_STEPS_PER_ORG (GetRun's
-- waiting reason; the claim counts them with the same function). $1 organization_id
SELECT podium_org_running($1)

-- key_running --
-- The admitted unfinished runs of a concurrency key value (GetRun's waiting reason).
-- $1 organization_id, $2 key
SELECT count(*) FROM orchestration_runs
WHERE organization_id = $1 AND concurrency_key = $2 AND key_admitted
  AND state IN ('running', 'paused')
