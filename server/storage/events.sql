-- Event watching (WatchRun / WatchRuns): the reads of server/engine/watch.py and of the
-- fan-out hub (server/events/hub.py). A run's page of events is `list_events` (runs.sql).

-- watch_run_head --
-- What a WatchRun needs before reading the log: existence in the organization, the
-- definition name (for the events), the state and the last sequence written.
-- $1 run_id, $2 organization_id
SELECT id, definition_name, state, last_event_sequence
FROM orchestration_runs
WHERE id = $1 AND organization_id = $2

-- listen_events --
-- The event hub: this replica watches these organizations for a while
-- (podium_listen_events, functions/10_events.sql). $1 replica, $2 organization ids,
-- $3 seconds, $4 whether $2 is every organization it watches
SELECT podium_listen_events($1, $2, $3, $4)

-- watch_last_sequences --
-- The hub's fallback poll: the last sequence of every watched run, in one round trip.
-- A run missing from the answer was deleted. Each run is a primary-key probe, whatever
-- the statistics say (with id = ANY, the plan a connection kept from empty tables read
-- every run on each poll).
-- $1 run ids (uuid[])
SELECT u.id::text AS run_id, r.last_event_sequence
FROM unnest($1::uuid[]) AS u(id)
CROSS JOIN LATERAL (SELECT r.last_event_sequence FROM orchestration_runs r
                     WHERE r.id = u.id LIMIT 1) AS r

-- watch_org_events --
-- One page of an organization's events for WatchRuns, in (created_at, run_id, sequence)
-- order, from the lower bound $2 (NULL: this statement's start), without the events
-- already delivered: per run, those up to the delivered sequence ($3/$4, parallel
-- arrays). Always returns at least one row: `now` is the statement's start time (the
-- snapshot is taken right after it); the event columns are NULL when no event matched.
-- $1 org, $2 lower bound on created_at, $3 run ids (uuid[]), $4 delivered sequences
-- (bigint[]), $5 definition_name (NULL = any), $6 run states after the event (text[],
-- empty = any), $7 labels the run must contain (jsonb), $8 limit. Each event's run is
-- found by a primary-key probe, whatever the statistics say (a join, planned while the
-- tables were empty, read every run for each event).
SELECT n.now, page.*
FROM (SELECT statement_timestamp() AS now) AS n
LEFT JOIN LATERAL (
    SELECT e.run_id, e.sequence, e.organization_id, e.type, e.step_id, e.attempt,
           e.run_state, e.step_state, e.payload, e.created_at, r.definition_name
    FROM orchestration_events e
    CROSS JOIN LATERAL (SELECT r.definition_name, r.labels FROM orchestration_runs r
                         WHERE r.id = e.run_id LIMIT 1) AS r
    LEFT JOIN unnest($3::uuid[], $4::bigint[]) AS d(run_id, sequence) ON d.run_id = e.run_id
    WHERE e.organization_id = $1
      AND e.created_at >= coalesce($2::timestamptz, n.now)
      AND e.sequence > coalesce(d.sequence, 0)
      AND ($5::text IS NULL OR r.definition_name = $5::text)
      AND (cardinality($6::text[]) = 0 OR e.run_state = ANY ($6::text[]))
      AND r.labels @> $7::jsonb
    ORDER BY e.created_at, e.run_id, e.sequence
    LIMIT $8
) AS page ON true
