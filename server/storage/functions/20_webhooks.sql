-- The webhook outbox is filled in the transaction of each event.
--
-- Every INSERT into orchestration_events (one statement per transition) fires one
-- statement-level trigger that writes one webhook_deliveries row per (event, target):
-- the run's own webhook_url and the organization's configured targets
-- (webhook_targets). The outbox therefore commits, or rolls back, with the events it
-- carries. Each replica's dispatcher (server/events/webhooks.py) sends the pending
-- rows, signed per Standard Webhooks.
--
-- The trigger is defined here, next to its function (CREATE OR REPLACE TRIGGER, so the
-- file stays re-runnable): its REFERENCING clause is part of the function's contract,
-- and function files are applied after the migrations that create the tables.

-- One delivery per (new event, target), after each INSERT statement on the event log.
-- The common case, no target for the new events, costs one query: for each of their
-- (organization, run) pairs (usually one), a probe of webhook_targets' primary key for
-- the organization's targets and a primary-key probe of the run for its webhook_url,
-- whatever the planner's estimates; a target configured for another organization costs
-- these events nothing. Where there are targets, each event's run is a primary-key
-- probe too (a join made while the runs table was small, and kept by the connection,
-- read every run for each insert). A delivery takes its event's created_at, so
-- listings (newest first) follow the log.
CREATE OR REPLACE FUNCTION podium_enqueue_webhooks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1
                     FROM (SELECT DISTINCT organization_id, run_id FROM new_events) e
                    WHERE EXISTS (SELECT 1 FROM webhook_targets w
                                   WHERE w.organization_id = e.organization_id)
                       OR (SELECT r.webhook_url FROM orchestration_runs r
                            WHERE r.id = e.run_id LIMIT 1) IS NOT NULL) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (organization_id, url, run_id, sequence, created_at, payload)
    SELECT e.organization_id, t.url, e.run_id, e.sequence, e.created_at,
           -- The body, per Standard Webhooks: {type, timestamp, data}; the time is
           -- RFC 3339 in UTC whatever the session's TimeZone.
           jsonb_build_object(
               'type', e.type,
               'timestamp', to_char(e.created_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'data', jsonb_build_object(
                   'organization_id', e.organization_id,
                   'run_id', e.run_id,
                   'definition_name', r.definition_name,
                   'sequence', e.sequence,
                   'step_id', e.step_id,
                   'attempt', e.attempt,
                   'run_state', e.run_state,
                   'step_state', e.step_state,
                   'payload', e.payload))
      FROM new_events e
     CROSS JOIN LATERAL (SELECT r.definition_name, r.webhook_url FROM orchestration_runs r
                          WHERE r.id = e.run_id LIMIT 1) r
     CROSS JOIN LATERAL (
           SELECT r.webhook_url AS url WHERE r.webhook_url IS NOT NULL
           UNION
           SELECT w.url FROM webhook_targets w WHERE w.organization_id = e.organization_id
     ) t;
    IF FOUND THEN
        PERFORM pg_notify('podium_webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER orchestration_events_webhooks
    AFTER INSERT ON orchestration_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION podium_enqueue_webhooks();
