-- Run retention: the statements of server/storage/retention.py (the retention lock,
-- try_lock_retention, is in webhooks.sql: one lock for every retention batch).

-- prune_runs --
-- One batch of run retention: scans up to $4 top-level runs that ended before $1, in
-- (ended_at, id) order after ($2, $3) (orchestration_runs_ended_idx), and deletes
-- each one that is finished (succeeded, failed, cancelled) and has no descendant run
-- that is not (a tree is deleted whole or not at all). Deleting a top-level run
-- deletes its child runs, and the steps, attempts, events, conversations,
-- deliverables, approvals, webhook deliveries of them all, through ON DELETE CASCADE.
-- Rows another transaction holds locked are skipped: the next pass sees them again.
-- Returns how many were scanned, the (ended_at, id) of the last one scanned (where
-- the next batch starts), the top-level runs deleted and the runs deleted in all.
-- $1: cutoff, $2/$3: scan after (ended_at, id), $4: batch size
WITH RECURSIVE scanned AS (
    SELECT r.id, r.ended_at
    FROM orchestration_runs r
    WHERE r.parent_run_id IS NULL AND r.ended_at IS NOT NULL
      AND r.ended_at < $1
      AND (r.ended_at, r.id) > ($2::timestamptz, $3::uuid)
    ORDER BY r.ended_at, r.id
    LIMIT $4
), candidates AS (
    SELECT r.id
    FROM orchestration_runs r
    WHERE r.id IN (SELECT id FROM scanned)
      AND r.parent_run_id IS NULL
      AND r.state IN ('succeeded', 'failed', 'cancelled')
      AND r.ended_at < $1
    FOR UPDATE SKIP LOCKED
), tree AS (
    SELECT c.id AS root, c.id FROM candidates c
    UNION ALL
    SELECT t.root, r.id FROM orchestration_runs r JOIN tree t ON r.parent_run_id = t.id
), live AS (
    SELECT DISTINCT t.root
    FROM tree t JOIN orchestration_runs r ON r.id = t.id
    WHERE r.state NOT IN ('succeeded', 'failed', 'cancelled')
), deleted AS (
    DELETE FROM orchestration_runs d
    USING candidates c
    WHERE d.id = c.id AND NOT EXISTS (SELECT 1 FROM live l WHERE l.root = c.id)
    RETURNING d.id
), last AS (
    SELECT ended_at, id FROM scanned ORDER BY ended_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM scanned) AS scanned,
       (SELECT ended_at FROM last) AS last_ended_at,
       (SELECT id FROM last) AS last_id,
       (SELECT count(*) FROM deleted) AS deleted_roots,
       (SELECT count(*) FROM tree t WHERE t.root IN (SELECT id FROM deleted)) AS deleted_runs
