-- Human approvals: checkpoints and failure reviews (functions/60_approvals.sql).
-- Lock order: the run row, then the approval (podium_decide_approval takes both).

-- decide_approval --
-- $1 organization_id, $2 approval id, $3 decision, $4 actor, $5 comment, $6 request_id,
-- $7 input (approve: more step input before, replacement output after; NULL = none),
-- $8, $9 a budget approval's new max tokens and max cost USD (NULL: unchanged)
SELECT podium_decide_approval($1, $2, $3, $4, $5, $6, 'decided', $7, $8, $9)

-- expire_approvals --
-- $1 limit
SELECT podium_expire_approvals($1)

-- get_approval --
-- $1 organization_id, $2 approval id
SELECT * FROM human_approvals WHERE organization_id = $1 AND id = $2

-- list_approvals --
-- Oldest first, keyset on (created_at, id). $1 organization_id, $2 states (text[], empty
-- = any), $3 run_id (NULL = any), $4 after created_at (NULL = first page), $5 after id,
-- $6 limit
SELECT * FROM human_approvals
WHERE organization_id = $1
  AND (cardinality($2::text[]) = 0 OR state = ANY ($2::text[]))
  AND ($3::uuid IS NULL OR run_id = $3)
  AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::uuid))
ORDER BY created_at, id
LIMIT $6

-- approval_run_end --
-- The state and times of an approval's run (metrics after a decision ended it).
-- $1 run id
SELECT state, started_at, ended_at FROM orchestration_runs WHERE id = $1
