-- Webhooks and retention: the statements of server/storage/webhooks.py.
-- The outbox (webhook_deliveries) is filled by the trigger podium_enqueue_webhooks
-- (server/storage/functions/20_webhooks.sql) in the transaction of each event.

-- lock_webhook_targets --
-- Serializes the synchronisation of an organization's configured targets (replicas
-- starting at once) until the transaction ends. $1: organization_id
SELECT pg_advisory_xact_lock(2003331955, hashtext($1))

-- insert_webhook_targets --
-- $1: organization_id, $2: urls (text[])
INSERT INTO webhook_targets (organization_id, url, source)
SELECT $1, u.url, 'config'
FROM unnest($2::text[]) AS u(url)
ON CONFLICT (organization_id, url) DO NOTHING
RETURNING url

-- delete_unlisted_webhook_targets --
-- Removes the configured targets of an organization that are no longer configured.
-- $1: organization_id, $2: urls still configured (text[])
DELETE FROM webhook_targets
WHERE organization_id = $1 AND source = 'config' AND NOT (url = ANY ($2::text[]))
RETURNING url

-- list_webhook_targets --
-- $1: organization_id
SELECT url FROM webhook_targets WHERE organization_id = $1 ORDER BY url

-- claim_webhook_deliveries --
-- Takes up to $1 due deliveries (webhook_deliveries_due_idx) that no other replica is
-- taking, counts the try and leases them for $2 seconds: next_attempt_at moves past
-- the try's deadline, so nobody else takes them meanwhile, and a replica that dies
-- mid-try leaves them due again once the lease is over.
-- $1: limit, $2: lease seconds
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1,
    next_attempt_at = now() + make_interval(secs => $2)
FROM (SELECT id
      FROM webhook_deliveries
      WHERE state = 'pending' AND next_attempt_at <= now()
      ORDER BY next_attempt_at
      LIMIT $1
      FOR UPDATE SKIP LOCKED) AS due
WHERE d.id = due.id
RETURNING d.id, d.organization_id, d.url, d.run_id, d.sequence, d.payload, d.attempts

-- finish_webhook_deliveries --
-- Records the outcome of tries, fenced by the try number: a late outcome of a try whose
-- lease expired and that another replica took again changes nothing.
-- $1: ids (uuid[]), $2: try numbers (integer[]), $3: delivered (boolean[]),
-- $4: errors (text[], NULL when delivered), $5: seconds until the next try
-- (double precision[], NULL: no next try, the delivery is dead)
UPDATE webhook_deliveries d
SET state = CASE WHEN o.delivered THEN 'delivered'
                 WHEN o.retry_in IS NULL THEN 'dead'
                 ELSE 'pending' END,
    delivered_at = CASE WHEN o.delivered THEN now() END,
    last_error = coalesce(o.error, d.last_error),
    next_attempt_at = CASE WHEN o.delivered OR o.retry_in IS NULL THEN d.next_attempt_at
                           ELSE now() + make_interval(secs => o.retry_in) END
FROM unnest($1::uuid[], $2::integer[], $3::boolean[], $4::text[], $5::double precision[])
     AS o(id, attempts, delivered, error, retry_in)
WHERE d.id = o.id AND d.attempts = o.attempts AND d.state = 'pending'

-- release_webhook_deliveries --
-- Gives back tries that were interrupted (the replica is stopping): not counted, due
-- at once for any replica. $1: ids (uuid[]), $2: try numbers (integer[])
UPDATE webhook_deliveries d
SET attempts = d.attempts - 1, next_attempt_at = now()
FROM unnest($1::uuid[], $2::integer[]) AS o(id, attempts)
WHERE d.id = o.id AND d.attempts = o.attempts AND d.state = 'pending'

-- list_webhook_deliveries --
-- Newest first, keyset on (created_at, id) (webhook_deliveries_list_idx, or
-- webhook_deliveries_run_idx with a run).
-- $1: organization_id, $2: run_id (NULL = any), $3: states (text[], empty = any),
-- $4: after created_at (NULL = first page), $5: after id, $6: limit
SELECT id, organization_id, url, run_id, sequence, payload, state, attempts, last_error,
       next_attempt_at, created_at, delivered_at
FROM webhook_deliveries
WHERE organization_id = $1
  AND ($2::uuid IS NULL OR run_id = $2::uuid)
  AND (cardinality($3::text[]) = 0 OR state = ANY ($3::text[]))
  AND ($4::timestamptz IS NULL OR (created_at, id) < ($4::timestamptz, $5::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $6

-- try_lock_retention --
-- One replica prunes at a time; the others skip their pass. Held until the
-- transaction ends.
SELECT pg_try_advisory_xact_lock(2003331955, 0)

-- prune_events --
-- One batch of retention over the event log: scans up to $3 events created in
-- [$2, $1) in created_at order (orchestration_events_created_idx) and deletes those
-- whose run ended before $1. Events of runs that have not ended are never deleted.
-- Returns how many were scanned, the created_at of the last one scanned (where the
-- next batch starts) and how many were deleted.
-- $1: cutoff, $2: scan from (created_at), $3: batch size
WITH scanned AS (
    SELECT e.run_id, e.sequence, e.created_at
    FROM orchestration_events e
    WHERE e.created_at >= $2 AND e.created_at < $1
    ORDER BY e.created_at
    LIMIT $3
), deleted AS (
    DELETE FROM orchestration_events d
    USING scanned s, orchestration_runs r
    WHERE d.run_id = s.run_id AND d.sequence = s.sequence
      AND r.id = s.run_id
      AND r.state IN ('succeeded', 'failed', 'cancelled')
      AND r.ended_at < $1
    RETURNING 1
)
SELECT (SELECT count(*) FROM scanned) AS scanned,
       (SELECT max(created_at) FROM scanned) AS last_created_at,
       (SELECT count(*) FROM deleted) AS deleted

-- prune_webhook_deliveries --
-- One batch of retention over the outbox: delivered and dead deliveries created
-- before $1 (webhook_deliveries_finished_idx). Pending ones are never deleted.
-- $1: cutoff, $2: batch size
DELETE FROM webhook_deliveries
WHERE id IN (SELECT id
             FROM webhook_deliveries
             WHERE state <> 'pending' AND created_at < $1
             LIMIT $2)
